"""`--log-every N`: step results stay on the device and are read N steps at a time; a θ
step puts BatchNorm's buffers back with a few foreach copies (CPU)."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from datasets import make_tiny_dataset  # tests/datasets.py
from torch.utils._python_dispatch import TorchDispatchMode

import bionas
import bionas.shards
import bionas.trainer
from bionas.cli import main
from bionas.trainer import loop, step_guard
from bionas.trainer.config import DEFAULT_LOG_EVERY, Amp, TrainConfig
from bionas.trainer.logs import read_jsonl
from bionas.trainer.model import ModelConfig, build_model
from bionas.trainer.optimizers import build_optimizers
from bionas.trainer.step import restore_buffers, save_buffers, train_step

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TIMING = ("seconds", "img_per_s")
SOURCES = tuple(  # bionas's own code (its packages sit in several folders), not torch's
    Path(m.__file__).resolve().parent for m in (bionas, bionas.trainer, bionas.shards)
)
READS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("ds"), n=96, shards_per_split=3)


def config(dataset, run_dir, **changes):
    """12 steps (96 samples, batch 8), w and θ alternating."""
    base = TrainConfig(dataset_dir=dataset, run_dir=run_dir, epochs=1, batch_size=8,
                       image_size=32, cells=3, channels=4, embed_dim=16, meta_embed_dim=4,
                       workers=0, shuffle_buffer=16, quiet=True)  # fmt: skip
    return replace(base, **changes)


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_log_every_5_writes_12_step_lines_5_at_a_time_and_the_epoch_record_of_log_every_1(
    dataset, tmp_path
):
    lines_at_hook = []
    every5 = config(dataset, tmp_path / "every5", log_every=5)
    (epoch5,) = loop.train(
        every5,
        on_step=lambda r: lines_at_hook.append(len(read_jsonl(every5.run_dir / "steps.jsonl"))),
    )
    every1 = config(dataset, tmp_path / "every1", log_every=1)
    (epoch1,) = loop.train(every1)
    steps5, steps1 = (read_jsonl(c.run_dir / "steps.jsonl") for c in (every5, every1))
    assert [s["step"] for s in steps5] == list(range(1, 13))
    assert lines_at_hook == [5] * 5 + [10] * 5 + [12] * 2  # read at steps 5, 10, 12 (end)
    assert without_timing(steps5) == without_timing(steps1)
    assert without_timing([epoch5]) == without_timing([epoch1])
    # the epoch's loss and accuracy are over every sample, not over the lines of the reads
    samples = sum(s["samples"] for s in steps5)
    assert samples == 96
    assert epoch5["train_loss"] == pytest.approx(
        sum(s["loss"] * s["samples"] for s in steps5) / samples, rel=1e-12
    )
    assert epoch5["train_acc"] == pytest.approx(
        sum(round(s["acc"] * s["samples"]) for s in steps5) / samples, rel=1e-12
    )
    # a step's wall time is its window's mean; the epoch's is the sum of the windows
    assert len({s["img_per_s"] for s in steps5[:5]}) == 1
    assert epoch5["seconds"] == pytest.approx(sum(s["samples"] / s["img_per_s"] for s in steps5))


class HostReads:
    """Every read of a tensor's value on the host made by bionas's own code (torch's
    internals, such as Adam's CPU step counter, are not bionas's reads), by step."""

    def __init__(self, monkeypatch):
        self.step = 0
        self.by_step: dict[int, Counter] = {}
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))
        real_step = step_guard.train_step

        def counted_step(*args, **kwargs):  # reads after step k's start belong to step k
            self.step += 1
            return real_step(*args, **kwargs)

        monkeypatch.setattr(step_guard, "train_step", counted_step)

    def _counting(self, read):
        def wrapper(tensor, *args, **kwargs):
            caller = sys._getframe(1).f_code
            if self.step and Path(caller.co_filename).resolve().parent in SOURCES:
                where = f"{Path(caller.co_filename).name}:{caller.co_name}"
                self.by_step.setdefault(self.step, Counter())[where] += 1
            return read(tensor, *args, **kwargs)

        return wrapper


def test_steps_between_reads_read_nothing_on_the_host_but_the_first_forwards_prune_mask(
    dataset, tmp_path, monkeypatch
):
    reads = HostReads(monkeypatch)
    loop.train(config(dataset, tmp_path / "run", log_every=5))
    monkeypatch.undo()
    assert {5, 10, 12} <= set(reads.by_step)  # the reads of the windows (12: epoch end)
    for step in set(range(1, 13)) - {5, 10, 12}:
        found = reads.by_step.get(step, Counter())
        # the host's copy of the prune mask is made in the first forward, then at the
        # reads only: a θ step zeroes pruned ops' α on the device (trainer/model.py)
        expected = {"model.py:sync_prune_mask"} if step == 1 else set()
        assert set(found) <= expected, (step, found)


def supernet():
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=3, meta_cardinalities=(("dna_bin", 6), ("class", 3)),
                      channels=4, cells=3, embed_dim=16, meta_embed_dim=4)  # fmt: skip
    return build_model(cfg)


def batch(size=8):
    generator = torch.Generator().manual_seed(1)
    return (
        torch.randn(size, 3, 32, 32, generator=generator),
        torch.randint(0, 3, (size, 2), generator=generator),
        torch.randint(0, 3, (size,), generator=generator),
    )


class AtenCalls(TorchDispatchMode):
    """The aten ops called from Python (the kernels a foreach op runs inside are not)."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_a_theta_step_puts_back_every_buffer_with_one_foreach_copy_per_dtype():
    fp32 = Amp(False, torch.float32, "cpu")
    model = supernet()
    opts = build_optimizers(model, TrainConfig(dataset_dir=".", run_dir="."), fp32)
    train_step(model, *batch(), "w", opts, fp32)  # running statistics away from their init
    before = [b.clone() for b in model.buffers()]
    dtypes = {b.dtype for b in model.buffers()}
    assert len(before) > 100 and dtypes == {torch.float32, torch.int64}
    with AtenCalls() as aten:
        train_step(model, *batch(), "theta", opts, fp32)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))
    assert aten.calls["_foreach_clone"] == aten.calls["_foreach_copy_"] == len(dtypes)
    assert aten.calls["clone"] + aten.calls["copy_"] < len(before) // 4  # not one per buffer
    with AtenCalls() as aten:
        restore_buffers(*save_buffers(model))
    assert sum(aten.calls.values()) == 2 * len(dtypes)


def test_log_every_is_an_option_and_an_old_run_resumes_with_the_default(tmp_path):
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "r"),
                                       "--log-every", "0"])  # fmt: skip
    assert result.exit_code == 2 and "--log-every" in result.output
    with pytest.raises(ValueError, match="--log-every must be >= 1"):
        TrainConfig(dataset_dir=".", run_dir=".", log_every=0)
    stored = TrainConfig(dataset_dir=".", run_dir=".").to_dict()
    del stored["log_every"]  # a config.json from before the option
    old = TrainConfig.from_stored(stored)
    assert old.log_every == DEFAULT_LOG_EVERY
    assert old.differences(replace(old, log_every=7)) == {}  # a resume may change it
