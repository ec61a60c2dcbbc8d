"""Checkpoints: contents, safe loading, and exact resume (at epoch ends and mid-epoch)."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.errors import BionasError
from bionas.manifests.manifest import load_manifest, write_manifest
from bionas.manifests.vocab import build_vocab, write_vocab
from bionas.trainer.checkpoint import capture_rng, load_checkpoint, restore_rng
from bionas.trainer.config import TrainConfig
from bionas.trainer.logs import read_jsonl
from bionas.trainer.loop import train

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TIMING = ("seconds", "img_per_s")


class Crash(Exception):
    """Stands in for a kill at a given step."""


def crash_at(step):
    def on_step(record):
        if record["step"] == step:
            raise Crash

    return on_step


@pytest.fixture
def config(tmp_path):
    dataset = make_tiny_dataset(tmp_path / "ds", n=64, shards_per_split=4)
    return TrainConfig(dataset_dir=dataset, run_dir=tmp_path / "a", epochs=2, batch_size=8,
                       image_size=32, cells=3, channels=4, embed_dim=16, meta_embed_dim=4,
                       workers=0, shuffle_buffer=16, meta_dropout=0.2, quiet=True)  # fmt: skip


def without_timing(history):
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


def step_losses(run_dir):
    return [
        (r["step"], r["kind"], r["loss"], r["grad_norm"])
        for r in read_jsonl(run_dir / "steps.jsonl")
    ]


def test_two_epochs_equal_one_epoch_then_resume(config, tmp_path):
    whole = train(config)
    split = replace(config, run_dir=tmp_path / "b")
    assert len(train(replace(split, epochs=1))) == 1
    resumed = train(replace(split, resume=True))
    assert without_timing(resumed) == without_timing(whole)
    assert step_losses(split.run_dir) == step_losses(config.run_dir)
    assert read_jsonl(split.run_dir / "alphas.jsonl") == read_jsonl(config.run_dir / "alphas.jsonl")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_killed_mid_epoch_resumes_from_its_step_checkpoint_exactly(config, tmp_path, workers):
    # 8 steps per epoch: the checkpoint of step 5 is epoch 1, batch 5 (a θ step comes
    # next, and with 2 workers the next batch is worker 1's)
    # --log-every 1: the hook sees step 7 when it is taken (not at the next read)
    config = replace(config, workers=workers, checkpoint_every=5, log_every=1)
    whole = train(config)
    killed = replace(config, run_dir=tmp_path / "b")
    with pytest.raises(Crash):
        train(killed, on_step=crash_at(7))
    assert len(read_jsonl(killed.run_dir / "steps.jsonl")) == 7
    assert torch.load(killed.run_dir / "checkpoints" / "last.pt")["state"]["batch"] == 5
    resumed = train(replace(killed, resume=True))
    assert without_timing(resumed) == without_timing(whole)
    assert step_losses(killed.run_dir) == step_losses(config.run_dir)


def test_a_heldout_run_killed_mid_epoch_resumes_exactly_after_several_theta_passes(
    config, tmp_path
):
    # 1 held-out shard of 16 samples, 48 w samples: 12 steps an epoch, 3 θ passes. The
    # checkpoint of step 15 is epoch 2, batch 3: the θ stream is in its 4th pass.
    config = replace(config, arch_data="heldout", heldout_fraction=0.25, checkpoint_every=15)
    whole = train(config)
    killed = replace(config, run_dir=tmp_path / "b")
    with pytest.raises(Crash):
        train(killed, on_step=crash_at(17))
    state = torch.load(killed.run_dir / "checkpoints" / "last.pt")["state"]
    assert (state["epoch"], state["batch"]) == (1, 3)
    assert state["arch"]["workers"]["0"]["pass_index"] == 3
    resumed = train(replace(killed, resume=True))
    assert without_timing(resumed) == without_timing(whole)
    assert step_losses(killed.run_dir) == step_losses(config.run_dir)


def test_checkpoint_holds_everything_and_loads_with_weights_only(config):
    train(replace(config, epochs=1))
    path = config.run_dir / "checkpoints" / "last.pt"
    payload = torch.load(path, weights_only=True)
    for key in ("model", "w_optimizer", "theta_optimizer", "w_scaler", "theta_scaler",
                "state", "rng", "config", "batch_size", "vocab_sha256"):  # fmt: skip
        assert key in payload
    assert "theta" in payload["model"]
    assert payload["state"]["epoch"] == 1 and payload["state"]["step"] == 8
    assert len(payload["state"]["history"]) == 1
    assert payload["theta_optimizer"]["param_groups"][0]["lr"] == 3e-4
    assert not list(path.parent.glob("*.tmp"))


def test_rng_states_round_trip():
    state = capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.random(), np.random.rand(), torch.rand(1)
    restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_resume_refuses_changed_options(config):
    train(replace(config, epochs=1))
    with pytest.raises(BionasError, match=r"seed=5 \(was 0\)"):
        train(replace(config, resume=True, seed=5))


def test_a_fresh_run_does_not_overwrite_a_resumable_one(config):
    train(replace(config, max_steps=2))
    with pytest.raises(BionasError, match="--resume"):
        train(config)


def test_resume_without_a_checkpoint_is_a_clear_error(config):
    with pytest.raises(BionasError, match="does not exist"):
        train(replace(config, resume=True))


def test_resume_refuses_changed_vocabularies(config):
    train(replace(config, max_steps=2))
    dataset = config.dataset_dir
    path = write_vocab(build_vocab("dna_bin", {"BOLD:Z": 9}), dataset / "manifests")
    body = dict(load_manifest(dataset).body)
    body["vocabs"] = {**body["vocabs"], "dna_bin": {"file": f"manifests/{path.name}",
                      "sha256": build_vocab("dna_bin", {"BOLD:Z": 9}).sha256}}  # fmt: skip
    body.pop("schema")
    write_manifest(dataset, body)
    with pytest.raises(BionasError, match="vocabularies changed"):
        train(replace(config, resume=True))


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BionasError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_a_mid_epoch_position_of_an_older_bionas_still_resumes(config, caplog):
    train(replace(config, max_steps=3))
    path = config.run_dir / "checkpoints" / "last.pt"
    payload = torch.load(path, weights_only=True)
    payload["state"]["main"].pop("version")  # one cursor per worker, as before passes
    for worker in payload["state"]["main"]["workers"].values():
        worker.pop("pass_index")
    torch.save(payload, path)
    with caplog.at_level("WARNING"):
        history = train(replace(config, resume=True, max_steps=None))
    assert [h["steps"] for h in history] == [8, 8]
    assert "older bionas" in caplog.text


def test_a_run_started_before_the_vocabulary_cut_resumes_with_its_own_vocabularies(
    config, monkeypatch
):
    import json

    import bionas.trainer.session as session
    from bionas.manifests.vocab import load_vocab

    # a dna_bin vocabulary with a value no train sample has (as `bionas vocab` may write)
    dataset = config.dataset_dir
    vocab = load_vocab(dataset / "manifests/vocab_dna_bin.json")
    counts = {**dict(zip(vocab.values[1:], vocab.counts[1:], strict=True)), "BOLD:VALONLY": 3}
    path = write_vocab(build_vocab("dna_bin", counts), dataset / "manifests")
    body = dict(load_manifest(dataset).body)
    body["vocabs"] = {**body["vocabs"], "dna_bin": {"file": f"manifests/{path.name}",
                      "sha256": build_vocab("dna_bin", counts).sha256}}  # fmt: skip
    body.pop("schema")
    write_manifest(dataset, body)
    # bionas 0.1 used the dataset's feature vocabularies as they were (no cut to train values)
    with monkeypatch.context() as old:
        old.setattr(session, "restrict_to_train", lambda encoding, manifest, cache: encoding)
        train(replace(config, max_steps=2))
    path = config.run_dir / "config.json"
    body = json.loads(path.read_text())
    body.pop("dataset_vocab_sha256")  # 0.1's config.json did not record it
    path.write_text(json.dumps(body))
    sizes = {k: v.shape for k, v in torch.load(config.run_dir / "model.pt")["state_dict"].items()
             if "embeddings" in k}  # fmt: skip
    train(replace(config, resume=True, max_steps=4))
    resumed = torch.load(config.run_dir / "model.pt")["state_dict"]
    assert {k: resumed[k].shape for k in sizes} == sizes
    assert [r["step"] for r in read_jsonl(config.run_dir / "steps.jsonl")][-1] == 4
