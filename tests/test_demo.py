"""`bionas demo` end to end: a search that decides, a final model trained from scratch on its
genotype, and test accuracy clearly above the majority-class rate."""

from __future__ import annotations

import json

from click.testing import CliRunner

from bionas.cli import main


def test_demo_runs_every_stage_and_beats_the_majority_class(tmp_path, torch_single_thread):
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        main, ["demo", "--out", str(out), "--n", "800", "--epochs", "8", "--retrain-epochs", "4", "--quiet"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    final = json.loads((out / "run" / "final" / "eval" / "test" / "metrics.json").read_text())
    counts = json.loads((out / "dataset" / "manifest.json").read_text())["class_counts"]["test"]
    majority = max(counts.values()) / sum(counts.values())
    accuracy = final["metrics"]["all"]["accuracy"]
    assert accuracy > majority + 0.15, (accuracy, majority)
    assert final["network"]["name"] == "fixed"
    genotype = json.loads((out / "run" / "genotype.json").read_text())
    assert final["network"]["genotype"] == {
        f"cell{c['index']}.{edge}": e["op"]
        for c in genotype["cells"]
        for edge, e in c["edges"].items()
    }
    # the search decided most edges: the kept op's α at least 10% above the runner-up's
    decided = 0
    for cell in genotype["cells"]:
        for edge in cell["edges"].values():
            first, second = sorted(edge["alphas"].values(), reverse=True)[:2]
            decided += first >= 1.1 * second
    assert decided > len(genotype["cells"]) * 3 / 2, decided
    for plot in ("confusion_matrix.png", "roc.png", "training_curves.png"):
        assert (out / "run" / "final" / "eval" / "test" / plot).stat().st_size > 1000
    assert (out / "run" / "eval" / "test" / "alphas.png").stat().st_size > 1000
    assert "final model" in result.output and "majority class" in result.output
