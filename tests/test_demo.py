"""`bionas demo` end to end: its test accuracy is clearly above the majority-class rate."""

from __future__ import annotations

import json

from click.testing import CliRunner

from bionas.cli import main


def test_demo_runs_every_stage_and_beats_the_majority_class(tmp_path, torch_single_thread):
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        main, ["demo", "--out", str(out), "--n", "800", "--epochs", "8", "--quiet"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "run" / "eval" / "test" / "metrics.json").read_text())
    counts = json.loads((out / "dataset" / "manifest.json").read_text())["class_counts"]["test"]
    majority = max(counts.values()) / sum(counts.values())
    accuracy = metrics["metrics"]["all"]["accuracy"]
    assert accuracy > majority + 0.15, (accuracy, majority)
    assert (out / "run" / "genotype.json").exists()
    for plot in ("confusion_matrix.png", "roc.png", "alphas.png", "training_curves.png"):
        assert (out / "run" / "eval" / "test" / plot).stat().st_size > 1000
    assert "majority-class rate" in result.output
