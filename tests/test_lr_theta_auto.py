"""`--lr-theta auto`: DARTS' total θ travel spread over the θ steps a search plans."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.cli import main
from bionas.trainer.config import auto_lr_theta
from bionas.trainer.logs import read_jsonl

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TINY = ["--device", "cpu", "--image-size", "32", "--cells", "2", "--channels", "4",
        "--batch-size", "8", "--workers", "0", "--shuffle-buffer", "16", "--quiet"]  # fmt: skip


def test_auto_is_the_papers_rate_at_darts_length_and_above_and_scaled_below():
    darts_steps = 50 * 391  # DARTS' CIFAR-10 search: 50 epochs of 391 θ steps at 3e-4
    assert auto_lr_theta(darts_steps) == pytest.approx(3e-4)
    assert auto_lr_theta(10 * darts_steps) == 3e-4  # the paper's full-data search
    assert auto_lr_theta(darts_steps // 100) == pytest.approx(3e-2, rel=0.01)
    assert auto_lr_theta(0) > 0


def test_a_run_with_auto_steps_theta_at_the_rate_of_its_planned_theta_steps(tmp_path):
    dataset = make_tiny_dataset(tmp_path / "ds", n=48, shards_per_split=3)
    run = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        ["train", str(dataset), "--out", str(run), "--epochs", "3", "--warmup-epochs", "1",
         "--lr-theta", "auto", *TINY],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    steps = read_jsonl(run / "steps.jsonl")
    per_epoch = 48 // 8  # one pass over train, every odd batch a θ step after the warm-up
    theta_steps = (per_epoch // 2) * (3 - 1)
    expected = 3e-4 * 50 * 391 / theta_steps
    assert [s["lr"] for s in steps if s["kind"] == "theta"] == [pytest.approx(expected)] * 6
    assert sum(s["kind"] == "theta" for s in steps) == theta_steps
    assert {s["lr"] for s in steps if s["kind"] == "w"} == {1e-3}
    config = json.loads((run / "config.json").read_text())
    assert config["lr_theta"] == pytest.approx(expected)
    assert config["train_config"]["lr_theta"] is None  # stays "auto" for --resume


def test_a_resumed_auto_run_keeps_and_reports_the_rate_it_ran_at(tmp_path):
    dataset = make_tiny_dataset(tmp_path / "ds", n=48, shards_per_split=3)
    run = tmp_path / "run"

    def bionas(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    first = bionas("train", dataset, "--out", run, "--epochs", "1", "--lr-theta", "auto", *TINY)
    assert first.exit_code == 0, first.output
    rate = json.loads((run / "config.json").read_text())["lr_theta"]
    result = bionas("train", dataset, "--out", run, "--resume", "--epochs", "3")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["lr_theta"] == pytest.approx(rate)
    theta = [s["lr"] for s in read_jsonl(run / "steps.jsonl") if s["kind"] == "theta"]
    assert theta == [pytest.approx(rate)] * len(theta) and len(theta) == 9


def test_an_all_warmup_run_plans_no_theta_step_and_gets_the_papers_rate(tmp_path):
    dataset = make_tiny_dataset(tmp_path / "ds", n=48, shards_per_split=3)
    run = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        ["train", str(dataset), "--out", str(run), "--epochs", "1", "--warmup-epochs", "1",
         "--lr-theta", "auto", *TINY],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["lr_theta"] == 3e-4
