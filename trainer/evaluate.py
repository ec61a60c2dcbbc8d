"""`bionas evaluate`: run a trained model over a split and write metrics.json + plots (SPEC §6).

The split is streamed from the dataset's shards (`split_predictions`). Each record's raw strings are mapped
through the *run's* vocabularies, never the evaluated dataset's: so the same code
evaluates on another dataset (cross-dataset validation). There, target names the model
does not know are counted (`unknown_class_samples`) and left out of the metrics, names
the run folded into `Other` count as `Other`, and metadata fields the dataset lacks are
fed as unknown (index 0).

The headline is the network the run produces (`networks`): for a search run the derived
network (argmax op per edge, inheriting the supernet's weights, BatchNorm recalibrated),
with the supernet's metrics apart under `supernet`; for a fixed genotype, itself.

Calibration: the headline's expected calibration error (ECE, `calibration`) and a
reliability diagram, and the same with the temperature of RUN_DIR/calibration.json when
`bionas calibrate` fitted one.

Metrics are reported on all samples and apart on three `dna_bin` groups, judged against
the training split of the run's own dataset (`unseen_bins`): the BIN occurs in training
(`seen_bin`), never does (`unseen_bin`), or the sample has none (`no_bin`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bionas.errors import BionasError
from bionas.manifests.manifest import Manifest, load_manifest
from bionas.trainer import calibration, efficiency, metrics, plots
from bionas.trainer.data import check_shards_exist
from bionas.trainer.encoding import Encoding
from bionas.trainer.networks import Networks, networks_to_evaluate
from bionas.trainer.ops import OP_NAMES
from bionas.trainer.predictor import load_calibration
from bionas.trainer.recalibrate import DEFAULT_BATCHES
from bionas.trainer.split_predictions import Predictions, predict_split
from bionas.trainer.train_values import TRAIN_VALUES_NAME
from bionas.trainer.unseen_bins import dna_bin_groups

log = logging.getLogger(__name__)

SCHEMA = "bionas.eval/2"  # 2: the headline is the derived network; the supernet apart


@dataclass(frozen=True)
class EvaluateConfig:
    run_dir: Path
    dataset_dir: Path | None = None  # None: the dataset the run was trained on
    split: str = "test"
    batch_size: int = 64
    workers: int = 0
    out_dir: Path | None = None  # None: RUN_DIR/eval/<split>
    device: str = "auto"
    latency_runs: int = 20
    bn_batches: int = DEFAULT_BATCHES  # train batches to recalibrate a derived network's BN
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise BionasError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise BionasError(f"--workers must be >= 0, got {self.workers}")
        if self.bn_batches < 0:
            raise BionasError(f"--bn-batches must be >= 0, got {self.bn_batches}")
        if self.latency_runs < 1:
            raise BionasError(f"--latency-runs must be >= 1, got {self.latency_runs}")


def evaluate_run(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a run on a split; writes metrics.json and the PNGs, returns the report."""
    from bionas.trainer.run import load_trained

    return evaluate_trained(load_trained(cfg.run_dir, map_location="cpu"), cfg)


def evaluate_trained(run: Any, cfg: EvaluateConfig) -> dict[str, Any]:
    """`evaluate_run` for an already loaded run (`trainer.run.TrainedRun`)."""
    dataset_dir = Path(cfg.dataset_dir or run.dataset_dir)
    manifest = open_manifest(dataset_dir)
    out_dir = Path(cfg.out_dir or Path(cfg.run_dir) / "eval" / cfg.split)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_fields = tuple(run.meta_fields)
    done = run_on_split(
        run, manifest, cfg.split, batch_size=cfg.batch_size, workers=cfg.workers,
        device=cfg.device, bn_batches=cfg.bn_batches, progress=cfg.progress,
    )  # fmt: skip
    nets, all_preds = done.networks, done.predictions
    preds = all_preds[nets.headline]
    bin_groups, bin_definitions = dna_bin_groups(
        Path(run.dataset_dir), preds.dna_bins, Path(cfg.run_dir) / TRAIN_VALUES_NAME
    )
    class_names = list(run.class_names)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "run_dir": str(cfg.run_dir),
        "dataset_dir": str(dataset_dir),
        "cross_dataset": not _same_dir(dataset_dir, run.dataset_dir),
        "split": cfg.split,
        "target": run.target,
        "class_names": class_names,
        "meta_fields": {
            "used": list(meta_fields),
            "absent_from_dataset_fed_as_unknown": [
                f for f in meta_fields if f not in manifest.categorical_fields
            ],
        },
        "network": {"name": nets.headline, **nets.about[nets.headline]},
        "samples": _sample_counts(manifest.num_samples(cfg.split), preds, bin_groups),
        "dna_bin_groups": bin_definitions,
    }
    for name, model in nets.models.items():
        measured = {
            "metrics": metrics.evaluation_metrics(
                all_preds[name].labels, all_preds[name].probs, class_names, subsets=bin_groups
            ),
            "efficiency": efficiency.efficiency_report(
                model.cpu().eval(), run.image_size, latency_runs=cfg.latency_runs
            ),
        }
        if name == nets.headline:
            report.update(measured)
        else:
            report[name] = {**nets.about[name], **measured}
    # ECE of the headline, and with RUN_DIR/calibration.json's T when `bionas calibrate` ran
    report["calibration"] = calibration.evaluation_calibration(
        preds.probs, preds.labels, load_calibration(Path(cfg.run_dir)),
        split=cfg.split, dataset_dir=dataset_dir,
    )  # fmt: skip
    report["plots"] = _write_plots(cfg.run_dir, out_dir, preds, class_names, report, OP_NAMES)
    _write_json(out_dir / "metrics.json", report)
    report["out_dir"] = str(out_dir)
    return report


@dataclass(frozen=True)
class SplitRun:
    """What running a trained run's networks over one split produced."""

    networks: Networks
    predictions: dict[str, Predictions]  # network name -> its predictions


def run_on_split(
    run: Any,
    manifest: Manifest,
    split: str,
    *,
    batch_size: int,
    workers: int,
    device: str,
    bn_batches: int,
    progress: bool,
    headline_only: bool = False,
) -> SplitRun:
    """The networks evaluate measures (`networks`) over a split, read once; with
    `headline_only`, only the headline network (`bionas calibrate`)."""
    # the run's vocabularies, not the dataset's: indices must mean what they meant in training
    encoding = Encoding(run.vocabs[run.target], tuple(run.vocabs[f] for f in run.meta_fields))
    on = _device(device)
    nets = networks_to_evaluate(
        run, encoding, bn_batches=bn_batches, batch_size=batch_size, device=on
    )
    models = {nets.headline: nets.models[nets.headline]} if headline_only else nets.models
    predictions = predict_split(
        models,
        check_shards_exist(manifest, split),
        encoding,
        run.image_size,
        batch_size=batch_size,
        workers=workers,
        device=on,
        total=manifest.num_samples(split),
        progress=progress,
    )
    return SplitRun(nets, predictions)


def _sample_counts(
    in_split: int, preds: Predictions, bin_groups: Mapping[str, np.ndarray | None]
) -> dict[str, Any]:
    """Where every sample of the split went, and how many evaluated samples each dna_bin
    group holds; `not_read` are samples the manifest lists but the shards did not yield (a
    shard cut at a member boundary reads as a shorter tar)."""
    seen = len(preds.labels) + sum(preds.unknown_classes.values())
    seen += sum(n for reason, n in preds.skipped.items() if reason != "broken shards")
    not_read = max(in_split - seen, 0)
    if not_read:
        log.warning("%d sample(s) listed in manifest.json were not read from the shards", not_read)
    return {
        "in_split": in_split,
        "evaluated": int(len(preds.labels)),
        "unknown_class_samples": sum(preds.unknown_classes.values()),
        "unknown_classes": preds.unknown_classes,
        "skipped": preds.skipped,
        "not_read": not_read,
        **{name: None if m is None else int(m.sum()) for name, m in bin_groups.items()},
    }


def _write_plots(
    run_dir: Path,
    out_dir: Path,
    preds: Predictions,
    class_names: list[str],
    report: dict[str, Any],
    op_names: tuple[str, ...],
) -> dict[str, str | None]:
    """Draw every plot whose data exists: plot name -> file name, or None without data."""
    written: dict[str, str | None] = {}
    matrix = report["metrics"]["all"].get("confusion_matrix")
    title = f"Confusion matrix, {report['split']} (row-normalised, n={len(preds.labels)})"
    if matrix is not None:
        plots.plot_confusion_matrix(matrix, class_names, out_dir / "confusion_matrix.png", title=title)  # fmt: skip
    written["confusion_matrix"] = "confusion_matrix.png" if matrix is not None else None
    plots.plot_roc_curves(preds.labels, preds.probs, class_names, out_dir / "roc.png")
    written["roc"] = "roc.png"
    _plot_reliability(report["calibration"], report["split"], len(preds.labels), out_dir)
    written["reliability"] = "reliability.png"
    for name, source, draw in (
        ("alphas", "alphas.jsonl", lambda h, p: plots.plot_alphas(h, p, op_names)),
        ("training_curves", "epochs.jsonl", plots.plot_training_curves),
    ):
        path = Path(run_dir) / source
        history = plots.read_jsonl(path) if path.exists() else []
        if name == "alphas":  # a fixed network has no α: nothing to draw
            history = [r for r in history if r.get("alphas")]
        if history:
            draw(history, out_dir / f"{name}.png")
        written[name] = f"{name}.png" if history else None
    return written


def _plot_reliability(cal: dict[str, Any], split: str, n: int, out_dir: Path) -> None:
    """reliability.png: as trained, and with calibration.json's T when there is one."""
    series = {}
    for key in ("uncalibrated", "calibrated"):
        if cal[key] is not None:
            label = "as trained" if key == "uncalibrated" else f"T = {cal['temperature']:.3g}"
            ece = cal[key]["ece"]
            series[label + ("" if ece is None else f" (ECE {ece:.3f})")] = cal[key]["reliability"]
    title = f"Reliability, {split} (n={n}, {cal['bins']} bins)"
    plots.plot_reliability_diagram(series, out_dir / "reliability.png", title=title)


def open_manifest(dataset_dir: Path) -> Manifest:
    """The dataset's manifest, or a BionasError saying why it cannot be read."""
    try:
        return load_manifest(dataset_dir)
    except (FileNotFoundError, ValueError) as err:
        raise BionasError(str(err)) from err


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BionasError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def _same_dir(a: Path, b: Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _write_json(path: Path, body: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
