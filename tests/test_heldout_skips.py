"""`--arch-data heldout`: what the θ steps' own stream skips is in each epoch's record
(`theta_skipped`), counted in the epoch that read it, the same after a resume."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from datasets import make_tiny_dataset, tiny_jpeg  # tests/datasets.py
from test_stream_checks import flip_header_bit

from bionas.commands.train import epoch_line
from bionas.manifests.manifest import load_manifest
from bionas.trainer.config import TrainConfig
from bionas.trainer.logs import read_jsonl
from bionas.trainer.loop import train

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TIMING = ("seconds", "img_per_s")


@pytest.fixture
def heldout_jpeg_corrupt(monkeypatch):
    """make_tiny_dataset writes TR00045 (its 46th image) cut in half: the last sample of
    train-000001, one of the two shards heldout_fraction 0.5 holds out of four."""
    import datasets

    made = []

    def corrupt_46th(*args):
        made.append(tiny_jpeg(*args))
        return made[-1][: len(made[-1]) // 2] if len(made) == 46 else made[-1]

    monkeypatch.setattr(datasets, "tiny_jpeg", corrupt_46th)


def heldout_config(tmp_path, **changes) -> TrainConfig:
    """4 train shards of 12; θ reads 2 of them (24 samples, 23 readable), in shard order
    (no shuffle buffer); w reads 24 samples: 3 w steps, each followed by a θ step of 8, so
    the θ stream reads one pass and one sample of the next in epoch 1, and in epoch 2 the
    rest of that pass (its corrupt sample last but one) and 2 samples of the third."""
    dataset = make_tiny_dataset(tmp_path / "ds", n=48, shards_per_split=4)
    config = TrainConfig(dataset_dir=dataset, run_dir=tmp_path / "run", epochs=2, batch_size=8,
                         image_size=32, cells=2, channels=4, arch_data="heldout",
                         heldout_fraction=0.5, workers=0, shuffle_buffer=0, quiet=True)  # fmt: skip
    return replace(config, **changes)


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.mark.usefixtures("heldout_jpeg_corrupt")
def test_the_theta_streams_corrupt_sample_counts_in_each_epoch_that_read_it(tmp_path, caplog):
    config = heldout_config(tmp_path)
    with caplog.at_level(logging.WARNING, logger="bionas.trainer.loop"):
        train(config)
    epochs = read_jsonl(config.run_dir / "epochs.jsonl")
    assert [e["theta_skipped"]["corrupt"] for e in epochs] == [1, 1]  # one pass each
    assert all(n == 0 for e in epochs for k, n in e["theta_skipped"].items() if k != "corrupt")
    assert [e["skipped"].get("corrupt", 0) for e in epochs] == [0, 0]  # w's stream is intact
    assert "θ: broken shards 0, skipped 1 corrupt" in epoch_line(epochs[0], 2)
    assert "epoch 2 θ stream skipped samples: {'corrupt': 1}" in caplog.text


@pytest.mark.usefixtures("heldout_jpeg_corrupt")
def test_a_run_resumed_mid_epoch_records_what_theta_skipped_as_the_uninterrupted_run(tmp_path):
    whole = heldout_config(tmp_path)
    train(whole)
    stopped = replace(whole, run_dir=tmp_path / "stopped", max_steps=9)  # epoch 2, step 3
    train(stopped)
    train(replace(stopped, resume=True, max_steps=None))
    resumed = read_jsonl(stopped.run_dir / "epochs.jsonl")
    assert without_timing(resumed) == without_timing(read_jsonl(whole.run_dir / "epochs.jsonl"))
    assert [e["theta_skipped"]["corrupt"] for e in resumed] == [1, 1]


def test_a_broken_heldout_shard_counts_in_every_pass_and_a_resume_loses_none(tmp_path):
    """The resume is in the θ stream's second pass: the reader finds the broken shard of
    that pass again, and what the first pass found must still be counted."""
    whole = heldout_config(tmp_path)
    flip_header_bit(load_manifest(whole.dataset_dir).shard_paths("train")[1], member=16)
    train(whole)
    stopped = replace(whole, run_dir=tmp_path / "stopped", max_steps=9)
    train(stopped)
    train(replace(stopped, resume=True, max_steps=None))
    resumed = read_jsonl(stopped.run_dir / "epochs.jsonl")
    # the shard gives 8 of its 12 samples; each epoch reads through it once
    broken = [(e["theta_skipped"]["broken_shards"], e["theta_skipped"]["lost_samples"])
              for e in resumed]  # fmt: skip
    assert broken == [(1, 4), (1, 4)]
    assert without_timing(resumed) == without_timing(read_jsonl(whole.run_dir / "epochs.jsonl"))
