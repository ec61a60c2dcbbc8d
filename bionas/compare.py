"""`bionas compare`: one row per evaluation of each run, as the paper's Tables I and II.

Reads only what `bionas train` and `bionas evaluate` wrote, never recomputes:

    RUN_DIR/config.json                 search, ops, fusion, backbone (train options)
    RUN_DIR/steps.jsonl                 images seen and step time (epochs.jsonl if absent)
    RUN_DIR/eval/**/metrics.json        one row each (schema bionas.eval/2): metrics and costs
    RUN_DIR/experiment.json             name and wall time, when `bionas ablate` ran it

Which rows a run gives: a search run with RUN_DIR/final (`--retrain-epochs`) is headed by
the final model's evaluations; the search's own evaluations (its derived network with
inherited weights) follow as rows of their own, labelled `search`. An evaluation on
another dataset (`bionas evaluate --dataset`) is a row of its own, its dataset marked
`(cross)`. A run without any evaluation is a row with a note saying what to run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bionas.errors import BionasError
from bionas.trainer.evaluate import SCHEMA as EVAL_SCHEMA
from bionas.trainer.final import FINAL_DIR
from bionas.trainer.genotype import BUILTIN_CELLS
from bionas.trainer.logs import EPOCHS_LOG, STEPS_LOG
from bionas.trainer.run import CONFIG_NAME, MODEL_NAME
from bionas.trainer.search.shared import SEARCH_JSON

log = logging.getLogger(__name__)

EVAL_DIR = "eval"  # `bionas evaluate`'s default: MODEL_DIR/eval/<split>/metrics.json
EXPERIMENT_NAME = "experiment.json"  # written by `bionas ablate` (bionas.ablate)
EVAL_SCHEMA_PREFIX = EVAL_SCHEMA.split("/")[0] + "/"  # any version of the eval schema

# (key, markdown header); the CSV uses the keys. Metrics are fractions in the CSV and
# percentages in the markdown, as in the paper's tables.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("run", "run"),
    ("network", "network"),
    ("search", "search"),
    ("ops", "ops"),
    ("fusion", "fusion"),
    ("backbone", "backbone"),
    ("dataset", "evaluated on"),
    ("split", "split"),
    ("samples", "n"),
    ("accuracy", "acc %"),
    ("precision_macro", "P macro %"),
    ("recall_macro", "R macro %"),
    ("f1_macro", "F1 macro %"),
    ("precision_weighted", "P weighted %"),
    ("recall_weighted", "R weighted %"),
    ("f1_weighted", "F1 weighted %"),
    ("unseen_bin_accuracy", "unseen-BIN acc %"),
    ("unseen_bin_samples", "unseen-BIN n"),
    ("params", "params"),
    ("size_mb", "MB"),
    ("gflops", "GFLOPs"),
    ("gmacs", "GMACs"),
    ("latency_gpu_ms", "GPU ms"),
    ("latency_cpu_ms", "CPU ms"),
    ("train_hours", "train h"),
    ("wall_hours", "wall h"),
    ("images_seen", "images seen"),
    ("note", "note"),
)
PERCENT = frozenset(
    ("accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_weighted",
     "recall_weighted", "f1_weighted", "unseen_bin_accuracy")
)  # fmt: skip
METRIC_KEYS = tuple(k for k in PERCENT if k != "unseen_bin_accuracy")

Row = dict[str, Any]


@dataclass(frozen=True)
class CompareConfig:
    run_dirs: tuple[Path, ...]  # runs, or folders of runs (e.g. an ablation's RUNS_DIR)
    evaluate: bool = False  # evaluate runs that have no evaluation yet (in-process)
    split: str = "test"  # the split --evaluate evaluates
    latency_runs: int = 20


def expand_runs(paths: Sequence[Path]) -> list[Path]:
    """Each path that is a run (it holds config.json), or the runs directly inside it
    (sorted by name; a search's final/ is part of its run, not a run of its own)."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if (path / CONFIG_NAME).is_file():
            runs.append(path)
            continue
        inside = sorted(p for p in path.iterdir() if (p / CONFIG_NAME).is_file())
        if not inside:
            raise BionasError(
                f"{path} is not a bionas run ({CONFIG_NAME} is missing) and holds none: "
                "give run folders written by `bionas train`, or a folder of them"
            )
        runs.extend(inside)
    return runs


def model_dirs(run: Path) -> list[tuple[Path, str]]:
    """(folder, stage) of each trained model of a run, the headline first: `final` then
    `search` for a search with a final model, else the run itself as `run`."""
    if (run / FINAL_DIR / CONFIG_NAME).is_file():
        return [(run / FINAL_DIR, "final"), (run, "search")]
    return [(run, "run")]


def evaluations(model_dir: Path) -> list[Path]:
    """Every metrics.json `bionas evaluate` wrote under MODEL_DIR/eval/: those on the run's
    own dataset first, then those on other datasets, each sorted by path (a search run's
    eval/ never holds its final model's: that one is final/eval/)."""
    found = []
    for path in sorted((model_dir / EVAL_DIR).rglob("metrics.json")):
        report = _read_json(path)
        schema = str(report.get("schema", ""))
        if schema.startswith(EVAL_SCHEMA_PREFIX):
            found.append((bool(report.get("cross_dataset")), str(path), path))
        else:
            log.warning("%s is not a bionas evaluation (schema %r): left out", path, schema)
    return [path for _, _, path in sorted(found)]


def needs_evaluation(run: Path) -> Path | None:
    """The headline model folder of a run that has no evaluation, or None."""
    headline, _ = model_dirs(run)[0]
    if evaluations(headline) or not (headline / MODEL_NAME).is_file():
        return None
    return headline


def run_rows(run: Path) -> list[Row]:
    """The rows of one run (see the module docstring)."""
    rows: list[Row] = []
    name = run_name(run)
    for model_dir, stage in model_dirs(run):
        about = describe_model(model_dir, stage, run)
        reports = evaluations(model_dir)
        for path in reports:
            rows.append({**about, **evaluation_columns(_read_json(path))})
        if not reports and stage != "search":
            rows.append({**about, "note": not_evaluated_note(model_dir)})
    for row in rows:
        row["run"] = name if row["stage"] != "search" else f"{name} (search)"
        if row["stage"] == "final":  # the headline: the derived genotype trained anew
            row["network"] = "final"
    return rows


def run_name(run: Path) -> str:
    """The experiment's name when `bionas ablate` ran it, else the folder's name."""
    return str(read_experiment(run).get("name") or run.resolve().name)


def read_experiment(run: Path) -> dict[str, Any]:
    """RUN_DIR/experiment.json (`bionas ablate`'s record), or {} for a run it did not run."""
    return _read_json(run / EXPERIMENT_NAME) if (run / EXPERIMENT_NAME).is_file() else {}


def not_evaluated_note(model_dir: Path) -> str:
    if not (model_dir / MODEL_NAME).is_file():
        return f"training has not finished an epoch (no {MODEL_NAME}): resume it with --resume"
    return f"not evaluated: run `bionas evaluate {model_dir}` (or compare --evaluate)"


def describe_model(model_dir: Path, stage: str, run: Path) -> Row:
    """What was trained and what it cost: from config.json and the training logs."""
    config = _read_json(model_dir / CONFIG_NAME)
    train = config.get("train_config", {})
    model = config.get("model_config", {})
    backbone = train.get("backbone") or model.get("backbone")
    genotype = train.get("genotype")
    search, ops = train.get("search") or "darts", train.get("ops") or "full"
    if backbone:
        search, ops = "none (backbone)", "-"
    elif genotype and stage != "final":  # a final model's genotype is its search's result
        search = "manual" if genotype in BUILTIN_CELLS else f"fixed ({Path(genotype).name})"
        ops = "-"
    # the cost of a final model includes the search that chose its architecture
    spent = [model_dir] if stage != "final" else [run, model_dir]
    images, seconds = 0, 0.0
    for folder in spent:
        n, s = training_spent(folder)
        images, seconds = images + n, seconds + s
    wall = read_experiment(run).get("wall_seconds", {}).get("train") if stage != "search" else None
    return {
        "stage": stage,
        "network": "",
        "search": search,
        "ops": ops,
        "fusion": train.get("fusion") or model.get("fusion") or "concat",
        "backbone": backbone or "-",
        "train_hours": seconds / 3600,
        "wall_hours": None if wall is None else wall / 3600,
        "images_seen": images,
        "model_dir": str(model_dir),
    }


def training_spent(run_dir: Path) -> tuple[int, float]:
    """(images, seconds) of every training step in the run's logs: steps.jsonl, else the
    finished epochs of epochs.jsonl. Seconds are step time (data loading included,
    validation and checkpoints not), plus the scoring and policy time a shared-weight
    search records in search.json."""
    steps = run_dir / STEPS_LOG
    images, seconds = 0, 0.0
    if steps.is_file():
        for record in _jsonl(steps):
            n = int(record.get("samples") or 0)
            images += n
            if n and record.get("img_per_s"):
                seconds += n / record["img_per_s"]
    elif (run_dir / EPOCHS_LOG).is_file():
        for epoch in _jsonl(run_dir / EPOCHS_LOG):
            seconds += float(epoch.get("seconds") or 0.0)
            images += round((epoch.get("img_per_s") or 0.0) * (epoch.get("seconds") or 0.0))
    if (run_dir / SEARCH_JSON).is_file():
        spent = _read_json(run_dir / SEARCH_JSON).get("spent", {})
        seconds += float(spent.get("search_seconds") or 0.0) + float(
            spent.get("policy_seconds") or 0.0
        )
    return images, seconds


def evaluation_columns(report: dict[str, Any]) -> Row:
    """The table's columns from one metrics.json (`bionas.eval/2`)."""
    every = report["metrics"]["all"]
    unseen = report["metrics"].get("unseen_bin") or {}
    model = report["efficiency"]["model"]
    latency = report["efficiency"]["latency_ms"]
    cross = bool(report.get("cross_dataset"))
    samples = report.get("samples", {})
    note = ""
    if cross:
        note = (
            f"cross-dataset: {samples.get('unknown_class_samples', 0)} samples of classes "
            "the model does not know left out"
        )
    network = report.get("network", {}).get("name", "")
    return {
        "network": network,
        "dataset": Path(report["dataset_dir"]).name + (" (cross)" if cross else ""),
        "split": report["split"],
        "samples": every.get("n_samples"),
        **{key: every.get(key) for key in METRIC_KEYS},
        "unseen_bin_accuracy": unseen.get("accuracy"),
        "unseen_bin_samples": unseen.get("n_samples"),
        "params": model["parameters"]["total"],
        "size_mb": model["size_mb"],
        "gflops": model["flops"] / 1e9,
        "gmacs": model["macs"] / 1e9,
        "latency_gpu_ms": (latency.get("cuda") or {}).get("median_ms"),
        "latency_cpu_ms": (latency.get("cpu") or {}).get("median_ms"),
        "note": note,
    }


def comparison_rows(runs: Sequence[Path]) -> list[Row]:
    """Every run's rows, in the order the runs were given."""
    return [row for run in runs for row in run_rows(run)]


def compare_runs(
    cfg: CompareConfig, on_evaluate: Callable[[Path], None] | None = None
) -> list[Row]:
    """The rows of every run `cfg` names; with `cfg.evaluate`, first evaluates (in this
    process, on `cfg.split`) each run whose headline model has no evaluation yet."""
    runs = expand_runs(cfg.run_dirs)
    if cfg.evaluate:
        from bionas.trainer.evaluate import EvaluateConfig, evaluate_run

        for run in runs:
            target = needs_evaluation(run)
            if target is None:
                continue
            if on_evaluate is not None:
                on_evaluate(target)
            evaluate_run(
                EvaluateConfig(run_dir=target, split=cfg.split, latency_runs=cfg.latency_runs,
                               progress=False)
            )  # fmt: skip
    return comparison_rows(runs)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BionasError(f"cannot read {path}: {err}") from None


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)
