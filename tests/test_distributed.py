"""`bionas train` on two processes: real `torchrun` runs (gloo on CPU) of the real CLI,
checked through RUN_DIR, and the single-process side of `bionas.trainer.distributed`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.errors import BionasError
from bionas.trainer.config import TrainConfig
from bionas.trainer.data import epoch_length
from bionas.trainer.distributed import SINGLE, fingerprint, process_group
from bionas.trainer.logs import read_jsonl
from bionas.trainer.loop import train
from bionas.trainer.run import load_trained

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TINY = ["--device", "cpu", "--image-size", "32", "--cells", "3", "--channels", "4",
        "--batch-size", "8", "--workers", "0", "--shuffle-buffer", "16", "--quiet"]  # fmt: skip
# 60 train samples in 3 shards of 20: one rank reads two shards, the other one (and wraps
# around into the next shard permutation); each takes (60 // 2) // 8 = 3 batches an epoch
SAMPLES, SHARDS, STEPS_PER_EPOCH, EPOCHS = 60, 3, 3, 2
TIMING = ("seconds", "img_per_s")


def torchrun(*args, cwd) -> str:
    """`torchrun --standalone --nproc-per-node 2 -m bionas ARGS`; its stdout. An error fails
    the test, and so does a hang (a collective one rank never joins): the launcher and
    both ranks, in their own session, are killed after 5 minutes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "bionas", *map(str, args)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as run:  # fmt: skip
        try:
            out, err = run.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            out, err = run.communicate()
            pytest.fail(f"torchrun {' '.join(map(str, args))} hung:\n{err[-4000:]}")
    assert run.returncode == 0, out + err[-4000:]
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp") / "ds"
    return make_tiny_dataset(root, n=SAMPLES, shards_per_split=SHARDS)


@pytest.fixture(scope="module")
def whole(dataset):
    """An uninterrupted 2-rank run of two epochs."""
    run = dataset.parent / "whole"
    stdout = torchrun("train", dataset, "--out", run, "--epochs", EPOCHS, *TINY, cwd=dataset.parent)
    return run, stdout


def checkpoint(run):
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def parameters_sha256(run):
    """The ranks' fingerprint, of the w and θ that derive / evaluate load from model.pt."""
    return fingerprint(load_trained(run).model.named_parameters())


def test_a_two_rank_run_finishes_and_only_rank_0_writes_the_run_dir(whole, dataset):
    run, stdout = whole
    assert stdout.count("trained 2 epoch(s)") == 1
    for name in ("config.json", "model.pt", "checkpoints/last.pt", "steps.jsonl",
                 "epochs.jsonl", "alphas.jsonl", "vocabs/vocab_order.json"):  # fmt: skip
        assert (run / name).is_file(), name
    assert not list(run.rglob("*.tmp"))
    steps = read_jsonl(run / "steps.jsonl")  # one line per step, not one per rank
    assert [s["step"] for s in steps] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert [s["kind"] for s in steps] == ["w", "theta", "w"] * EPOCHS
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["batch_size"] == 8
    epochs = read_jsonl(run / "epochs.jsonl")
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["val_samples"] == SAMPLES // 4 for e in epochs)  # each val sample once


def test_step_metrics_are_over_both_ranks(whole):
    run, _ = whole
    for step in read_jsonl(run / "steps.jsonl"):
        assert step["samples"] == 2 * 8
        assert step["acc"] * 16 == pytest.approx(round(step["acc"] * 16), abs=1e-9)


def test_w_and_theta_are_identical_on_both_ranks(whole):
    run, _ = whole
    ranks = checkpoint(run)["ranks"]
    assert len(ranks) == 2
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"] == parameters_sha256(run)
    # the end of an epoch also averages the BatchNorm running statistics
    for name, value in ranks[0]["buffers"].items():
        assert torch.equal(value, ranks[1]["buffers"][name]), name


def test_both_ranks_take_the_same_steps_with_an_uneven_shard_count(whole, dataset):
    run, _ = whole
    assert len(list((dataset / "shards" / "train").iterdir())) == SHARDS
    assert [r["step"] for r in checkpoint(run)["ranks"]] == [EPOCHS * STEPS_PER_EPOCH] * 2
    assert [e["steps"] for e in read_jsonl(run / "epochs.jsonl")] == [STEPS_PER_EPOCH] * EPOCHS


def test_a_run_stopped_mid_epoch_resumes_under_ddp_exactly(whole, dataset):
    # DataLoader workers here (1 per rank; the same stream as 0 workers)
    run = dataset.parent / "stopped"
    args = ["train", dataset, "--out", run, "--epochs", EPOCHS, *TINY, "--workers", "1"]
    torchrun(*args, "--max-steps", 4, cwd=dataset.parent)
    stopped = checkpoint(run)
    assert stopped["state"]["epoch"] == 1 and stopped["state"]["batch"] == 1
    positions = [r["main"] for r in stopped["ranks"]]  # each rank's own stream
    assert [p["batches"] for p in positions] == [1, 1]
    assert stopped["ranks"][0]["params_sha256"] == stopped["ranks"][1]["params_sha256"]

    torchrun("train", dataset, "--out", run, "--resume", cwd=dataset.parent)
    whole_run, _ = whole

    def steps(r):
        keys = ("step", "kind", "loss", "acc", "grad_norm")
        return [[s[k] for k in keys] for s in read_jsonl(r / "steps.jsonl")]

    def epochs(r):
        return [{k: v for k, v in e.items() if k not in TIMING}
                for e in read_jsonl(r / "epochs.jsonl")]  # fmt: skip

    assert steps(run) == steps(whole_run)
    assert epochs(run) == epochs(whole_run)  # validation too: same running statistics
    resumed = load_trained(run).model.state_dict()
    for name, value in load_trained(whole_run).model.state_dict().items():
        assert torch.equal(resumed[name], value), name


# --- one process: no process group, and what a distributed checkpoint refuses ---------


def test_without_torchrun_there_is_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with process_group("cpu") as dist:
        assert dist is SINGLE and dist.is_main and not dist.enabled
        assert dist.sum([1.5, 2]) == [1.5, 2] and dist.min(7) == 7
        assert dist.all_gather({"a": 1}) == [{"a": 1}]


def test_every_rank_gets_the_same_number_of_batches_from_the_manifest_count():
    assert epoch_length(SAMPLES, 8, False, True, world_size=2) == (3, 3)
    assert epoch_length(SAMPLES, 8, False, True, world_size=1) == (7, 7)
    assert epoch_length(40, 8, True, True, world_size=2) == (4, 2)  # 40 w samples
    with pytest.raises(BionasError, match="fewer than one batch of 8 per rank"):
        epoch_length(SAMPLES, 8, False, True, world_size=8)


def test_a_mid_epoch_checkpoint_of_two_ranks_does_not_resume_on_one(dataset, tmp_path):
    config = TrainConfig(dataset_dir=dataset, run_dir=tmp_path / "run", epochs=1, batch_size=8,
                         image_size=32, cells=3, channels=4, workers=0, max_steps=2,
                         quiet=True)  # fmt: skip
    train(config)
    path = config.run_dir / "checkpoints" / "last.pt"
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "world_size": 2}, path)  # as if two ranks had written it
    with pytest.raises(BionasError, match="written by 2 process.* cannot continue on 1"):
        train(replace(config, resume=True, max_steps=None))
