"""`--arch-data heldout`: θ steps read whole held-out train shards, w steps the others;
the endless θ stream resumes by reading at most its current pass."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
import torch
from datasets import make_tiny_dataset  # tests/datasets.py
from test_distributed import TINY, torchrun

import bionas.shards.reader as reader
from bionas.errors import BionasError
from bionas.manifests.manifest import load_manifest
from bionas.shards.reader import read_samples
from bionas.trainer.config import TrainConfig
from bionas.trainer.data import BatchStream, StreamPosition, StreamSpec, make_loader
from bionas.trainer.encoding import load_encoding
from bionas.trainer.heldout import heldout_indices, split_heldout
from bionas.trainer.logs import read_jsonl
from bionas.trainer.loop import train

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def opened(monkeypatch):
    """The shard files the reader opens, in order (a seam at `open_shard`)."""
    paths = []

    def recording(path):
        paths.append(path)
        return reader_open(path)

    reader_open = reader.open_shard
    monkeypatch.setattr(reader, "open_shard", recording)
    return paths


def split_of(dataset, fraction=0.25):
    manifest = load_manifest(dataset)
    return split_heldout(manifest, manifest.shard_paths("train"), fraction)


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [(10, 0.1, [5]), (100, 0.1, [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]), (3, 0.1, [1]),
     (2, 0.9, [1]), (4, 0.25, [2])],
)  # fmt: skip
def test_heldout_shards_are_round_fraction_of_n_spread_at_least_one_never_all(
    n, fraction, expected
):
    assert heldout_indices(n, fraction) == expected


def test_a_train_split_of_one_shard_cannot_be_held_out(tmp_path):
    dataset = make_tiny_dataset(tmp_path / "ds", n=16, shards_per_split=1)
    with pytest.raises(BionasError, match=r"1 train shard.*--shard-size.*interleaved"):
        split_of(dataset)


def test_w_and_theta_shards_are_disjoint_cover_train_and_count_from_the_manifest(tmp_path):
    dataset = make_tiny_dataset(tmp_path / "ds", n=50, shards_per_split=4)  # 13+13+12+12
    split = split_of(dataset)
    assert [p.name for p in split.arch] == ["train-000002.tar"]
    assert (split.arch_samples, split.w_samples) == (12, 38)
    keys = {
        name: [s.key for s in read_samples(shards, passes=1)]
        for name, shards in (("arch", split.arch), ("w", split.w))
    }
    train_keys = {s.key for s in read_samples(load_manifest(dataset).shard_paths("train"))}
    assert set(keys["arch"]).isdisjoint(keys["w"])
    assert set(keys["arch"]) | set(keys["w"]) == train_keys
    assert (len(keys["arch"]), len(keys["w"])) == (12, 38)


def test_theta_steps_read_only_the_heldout_shards_and_w_steps_only_the_others(tmp_path, opened):
    dataset = make_tiny_dataset(tmp_path / "ds", n=48, shards_per_split=4)  # 12 a shard
    config = TrainConfig(dataset_dir=dataset, run_dir=tmp_path / "run", epochs=1, batch_size=8,
                         image_size=32, cells=3, channels=4, arch_data="heldout",
                         heldout_fraction=0.25, workers=0, shuffle_buffer=16, quiet=True,
                         log_every=1)  # fmt: skip
    by_kind = {"w": [], "theta": []}  # --log-every 1: the hook runs as each step is taken

    def on_step(record):  # the shards opened since the last step were opened for this one
        by_kind[record["kind"]].extend(p.name for p in opened if "/train/" in str(p))
        opened.clear()

    train(config, on_step=on_step)
    held = json.loads((config.run_dir / "config.json").read_text())["heldout"]
    assert held["arch_shards"] == ["train-000002.tar"]
    assert (held["arch_samples"], held["w_samples"], held["fraction"]) == (12, 36, 0.25)
    # 36 w samples: 4 w steps, each followed by a θ step; 4 x 8 θ samples: 3 passes of 12
    assert by_kind["theta"] == ["train-000002.tar"] * 3
    assert sorted(by_kind["w"]) == ["train-000000.tar", "train-000001.tar", "train-000003.tar"]


def arch_stream(dataset):
    """An endless θ stream over 2 shards of 8 samples, 4 per batch: 4 batches a pass."""
    shards = tuple(load_manifest(dataset).shard_paths("train")[:2])
    return StreamSpec(shards, batch_size=4, image_size=32, seed=2, passes=None,
                      shuffle_buffer=6, meta_dropout=0.2)  # fmt: skip


def take(dataset, spec, count, start=None, workers=0):
    encoding = load_encoding(load_manifest(dataset), "order", ["dna_bin", "class"])
    loader = make_loader(BatchStream(spec, encoding, start), workers)
    return list(itertools.islice(loader, count))


@pytest.mark.parametrize("workers", [0, 2])
def test_an_endless_stream_resumed_after_several_passes_continues_exactly(tmp_path, workers):
    dataset = make_tiny_dataset(tmp_path / "ds", n=40, shards_per_split=5)
    spec = arch_stream(dataset)
    whole = take(dataset, spec, 30, workers=workers)  # 7.5 passes
    position = StreamPosition()
    for batch in whole[:21]:
        position.advance(batch)
    resumed = take(dataset, spec, 9, StreamPosition.from_dict(position.to_dict()), workers)
    assert [b.keys for b in resumed] == [b.keys for b in whole[21:]]
    assert all((a.meta == b.meta).all() for a, b in zip(resumed, whole[21:], strict=True))


def test_resuming_an_endless_stream_reads_at_most_its_current_pass(tmp_path, opened):
    dataset = make_tiny_dataset(tmp_path / "ds", n=40, shards_per_split=5)
    spec = arch_stream(dataset)
    position = StreamPosition()
    for batch in take(dataset, spec, 22):  # 5 passes and 2 batches of the 6th
        position.advance(batch)
    assert (position.workers[0].pass_index, position.workers[0].cursor) == (5, 8)
    opened.clear()
    take(dataset, spec, 1, position)
    assert len(opened) <= len(spec.shards)  # the old cursor replayed 5 passes: 12 opens


def test_a_heldout_run_resumed_from_an_old_style_position_is_refused(tmp_path):
    dataset = make_tiny_dataset(tmp_path / "ds", n=48, shards_per_split=4)
    config = TrainConfig(dataset_dir=dataset, run_dir=tmp_path / "run", epochs=1, batch_size=8,
                         image_size=32, cells=3, channels=4, arch_data="heldout",
                         workers=0, max_steps=3, quiet=True)  # fmt: skip
    train(config)
    path = config.run_dir / "checkpoints" / "last.pt"
    payload = torch.load(path, weights_only=True)
    payload["state"]["arch"].pop("version")  # as bionas wrote it before passes
    torch.save(payload, path)
    with pytest.raises(BionasError, match="older bionas.*whole train shards"):
        train(replace(config, resume=True, max_steps=None))


def test_two_ranks_share_the_heldout_shards_and_take_the_same_steps(tmp_path):
    # 4 shards of 16, and the default fraction 0.1 holds out 1; 48 w samples, 24 a rank:
    # 3 w steps, each followed by a θ step whose batch each rank takes from its half of
    # the held-out shard (8 samples a pass)
    dataset = make_tiny_dataset(tmp_path / "ds", n=64, shards_per_split=4)
    run = tmp_path / "run"
    torchrun("train", dataset, "--out", run, "--epochs", 1, "--arch-data", "heldout", *TINY,
             cwd=tmp_path)  # fmt: skip
    assert [s["kind"] for s in read_jsonl(run / "steps.jsonl")] == ["w", "theta"] * 3
    ranks = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["ranks"]
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]
    assert [r["arch"]["workers"]["0"]["pass_index"] for r in ranks] == [2, 2]
