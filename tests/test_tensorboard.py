"""TensorBoard event files: written by every run when `tensorboard` is installed, read back
with TensorBoard's own reader; never a reason for a run to fail."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from click.testing import CliRunner
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.cli import main
from bionas.trainer.tensorboard_log import TENSORBOARD_DIR, TensorBoardLog

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TINY = ["--device", "cpu", "--image-size", "32", "--cells", "3", "--channels", "4",
        "--batch-size", "8", "--workers", "0", "--shuffle-buffer", "16", "--quiet"]  # fmt: skip


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a folder of event files, by TensorBoard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_a_search_run_writes_the_logs_numbers_as_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard not installed: no event files")
    dataset = make_tiny_dataset(tmp_path / "ds", n=32, n_val=8)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(dataset), "--out", str(run), "--epochs", "2", *TINY])  # fmt: skip
    assert result.exit_code == 0, result.output
    series = scalars(run / TENSORBOARD_DIR)
    epochs = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
    alphas = [json.loads(line) for line in (run / "alphas.jsonl").read_text().splitlines()]
    for tag, key in (("loss/train", "train_loss"), ("accuracy/val", "val_acc"),
                     ("speed/img_per_s", "img_per_s"), ("alpha_entropy/mean", "alpha_entropy_mean")):  # fmt: skip
        assert series[tag] == [(e["step"], pytest.approx(e[key], rel=1e-6)) for e in epochs], tag
    last = alphas[-1]
    for edge, by_op in last["alphas"].items():
        for op, alpha in by_op.items():
            assert series[f"alpha/{edge}/{op}"][-1] == (
                last["step"],
                pytest.approx(alpha, rel=1e-6),
            )
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    w_steps = [(s["step"], pytest.approx(s["loss"], rel=1e-6)) for s in steps if s["kind"] == "w"]
    assert series["step/w_loss"] == w_steps and "step/theta_loss" in series


def test_without_tensorboard_installed_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    board = TensorBoardLog.open(tmp_path, step=0)
    assert not board.enabled
    board.epoch({"step": 1, "train_loss": 1.0}, {})
    board.close()
    assert not (tmp_path / TENSORBOARD_DIR).exists()


class _BrokenInstall:
    """A module whose import raises what a protobuf mismatch raises."""

    def __getattr__(self, name):
        raise TypeError("Descriptors cannot be created directly")


def test_a_broken_tensorboard_install_is_a_warning_not_a_failed_run(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", _BrokenInstall())
    with caplog.at_level("WARNING"):
        board = TensorBoardLog.open(tmp_path, step=0)
    assert not board.enabled and "cannot be imported" in caplog.text


class BrokenWriter:
    def add_scalar(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    def flush(self):
        raise AssertionError("not reached: the log stopped at the first failure")

    def close(self):
        raise AssertionError("not reached")


def test_a_failing_writer_is_reported_once_and_never_fails_the_run(caplog):
    board = TensorBoardLog(BrokenWriter())
    hook_calls = []
    hook = board.step_hook(hook_calls.append)
    record = {"kind": "w", "step": 1, "loss": 1.0, "acc": 0.5, "img_per_s": 10.0}
    hook(record)  # the failure is caught; the caller's hook still runs
    hook(record)
    board.epoch({"step": 1, "train_loss": 1.0}, {"cell0.e1": torch.full((10,), 0.1)})
    board.close()
    assert hook_calls == [record, record]
    assert not board.enabled
    warnings = [r for r in caplog.records if "TensorBoard" in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in warnings[0].getMessage()
