"""`bionas compare` end to end: tiny runs trained and evaluated through the CLI, then the
comparison's CSV and markdown read back against each run's own metrics.json and logs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.cli import main

pytestmark = pytest.mark.usefixtures("torch_single_thread_module")
TINY = ["--device", "cpu", "--image-size", "32", "--cells", "3", "--channels", "4",
        "--batch-size", "8", "--workers", "0", "--shuffle-buffer", "16", "--quiet",
        "--epochs", "1"]  # fmt: skip
EVAL = ["--split", "val", "--latency-runs", "1", "--bn-batches", "1", "--device", "cpu"]


def bionas(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory, torch_single_thread_module) -> dict[str, Path]:
    """search (+ final, both evaluated), manual (evaluated here and on another dataset),
    pending (trained, not evaluated)."""
    root = tmp_path_factory.mktemp("compare")
    ds = make_tiny_dataset(root / "ds", n=32, n_val=8)
    other = make_tiny_dataset(root / "ds-other", n=8, n_val=8, seed=5)
    search, manual, pending = root / "search", root / "manual", root / "pending"
    bionas("train", ds, "--out", search, "--retrain-epochs", "1", *TINY)
    bionas("evaluate", search / "final", *EVAL)
    bionas("evaluate", search, *EVAL)  # the search's derived network: a row of its own
    bionas("train", ds, "--out", manual, "--genotype", "manual", *TINY)
    bionas("evaluate", manual, *EVAL)
    bionas("evaluate", manual, "--dataset", other, "--out", manual / "eval" / "other", *EVAL)
    bionas("train", ds, "--out", pending, "--max-steps", "2", *TINY)
    return {"root": root, "search": search, "manual": manual, "pending": pending}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def metrics(path: Path) -> dict:
    return json.loads(path.read_text())


def images_in_steps(run_dir: Path) -> int:
    lines = (run_dir / "steps.jsonl").read_text().splitlines()
    return sum(json.loads(line)["samples"] for line in lines if line.strip())


@pytest.fixture(scope="module")
def compared(runs) -> dict:
    out = runs["root"] / "cmp"
    result = bionas("compare", runs["search"], runs["manual"], runs["pending"], "--out", out)
    return {"rows": read_csv(out / "comparison.csv"), "out": out, "output": result.output}


def test_one_row_per_evaluation_with_the_final_model_first(compared):
    keys = [(r["run"], r["network"], r["dataset"], r["split"]) for r in compared["rows"]]
    assert keys == [
        ("search", "final", "ds", "val"),
        ("search (search)", "derived", "ds", "val"),
        ("manual", "fixed", "ds", "val"),
        ("manual", "fixed", "ds-other (cross)", "val"),
        ("pending", "", "", ""),
    ]


def test_csv_values_are_those_of_each_runs_metrics_json(compared, runs):
    sources = [  # in the order of the rows (within a run, evaluations sorted by path)
        runs["search"] / "final/eval/val/metrics.json",
        runs["search"] / "eval/val/metrics.json",
        runs["manual"] / "eval/val/metrics.json",
        runs["manual"] / "eval/other/metrics.json",
    ]
    for row, path in zip(compared["rows"], sources, strict=False):
        report = metrics(path)
        every, model = report["metrics"]["all"], report["efficiency"]["model"]
        for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro",
                    "precision_weighted", "recall_weighted", "f1_weighted"):  # fmt: skip
            assert float(row[key]) == every[key], (path, key)
        assert int(row["samples"]) == every["n_samples"] == 8
        assert int(row["params"]) == model["parameters"]["total"]
        assert float(row["size_mb"]) == model["size_mb"]
        assert float(row["gflops"]) == pytest.approx(model["flops"] / 1e9, rel=1e-12)
        assert float(row["gmacs"]) == pytest.approx(model["macs"] / 1e9, rel=1e-12)
        assert (
            float(row["latency_cpu_ms"]) == report["efficiency"]["latency_ms"]["cpu"]["median_ms"]
        )
        assert row["latency_gpu_ms"] == ""  # timed on CPU only
        unseen = report["metrics"]["unseen_bin"]
        assert row["unseen_bin_samples"] == str(unseen["n_samples"])


def test_configuration_columns_come_from_config_json(compared):
    rows = {(r["run"], r["dataset"]): r for r in compared["rows"]}
    final, manual = rows[("search", "ds")], rows[("manual", "ds")]
    assert (final["search"], final["ops"], final["fusion"], final["backbone"]) == (
        "darts", "full", "concat", "-")  # fmt: skip
    assert (manual["search"], manual["ops"]) == ("manual", "-")


def test_a_final_models_cost_includes_the_search_that_chose_it(compared, runs):
    rows = {r["run"]: r for r in compared["rows"] if r["dataset"] != "ds-other (cross)"}
    search_images = images_in_steps(runs["search"])
    final_images = images_in_steps(runs["search"] / "final")
    assert int(rows["search (search)"]["images_seen"]) == search_images == 32
    assert int(rows["search"]["images_seen"]) == search_images + final_images
    assert float(rows["search"]["train_hours"]) > float(rows["search (search)"]["train_hours"]) > 0


def test_a_run_not_evaluated_is_listed_with_what_to_run(compared, runs):
    (pending,) = [r for r in compared["rows"] if r["run"] == "pending"]
    assert pending["accuracy"] == ""
    assert f"bionas evaluate {runs['pending']}" in pending["note"]
    assert int(pending["images_seen"]) == images_in_steps(runs["pending"]) == 16


def test_markdown_is_printed_and_written_with_metrics_in_percent(compared):
    table = (compared["out"] / "comparison.md").read_text()
    assert table in compared["output"]
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")][1:]
    assert len(lines) == len(compared["rows"])
    for line, row in zip(lines, compared["rows"], strict=True):
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert cells[0] == row["run"]
        if row["accuracy"]:
            assert f"{100 * float(row['accuracy']):.2f}" in cells
            assert f"{int(row['params']):,}" in cells


def test_the_plot_is_a_png_with_both_panels(compared):
    from PIL import Image

    with Image.open(compared["out"] / "comparison.png") as image:
        assert image.format == "PNG" and image.width > 2 * image.height > 0


def test_a_folder_of_runs_expands_to_its_runs_sorted(runs):
    result = bionas("compare", runs["root"])
    names = [ln.split(" | ")[0].removeprefix("| ") for ln in result.output.splitlines()[2:]]
    assert names == ["manual", "manual", "pending", "search", "search (search)"]


def test_evaluate_option_evaluates_runs_that_have_no_evaluation(runs, tmp_path):
    import shutil

    pending = tmp_path / "pending"
    shutil.copytree(runs["pending"], pending)
    result = bionas("compare", pending, "--evaluate", "--split", "val", "--latency-runs", "1")
    report = metrics(pending / "eval/val/metrics.json")
    assert f"{100 * report['metrics']['all']['accuracy']:.2f}" in result.output
    assert "not evaluated" not in result.output


def test_a_folder_without_runs_is_refused_with_what_to_give(tmp_path):
    result = CliRunner().invoke(main, ["compare", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not a bionas run (config.json is missing)" in result.output
