"""Confidence you can trust: calibration error, temperature scaling and the low-confidence
threshold (`bionas calibrate`; `bionas evaluate` reports the error).

Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks",
Eq. 3, after Naeini et al. 2015): each sample's top-1 confidence p̂ (its largest class
probability) goes into one of M equal-width bins B_m = {i : p̂_i in ((m-1)/M, m/M]}, and

    ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|

with conf the bin's mean p̂ and acc the share of its samples whose top-1 class is the label.
M = 15 by default, as in Guo et al. The per-bin counts, confidences and accuracies are the
reliability diagram.

Temperature scaling (Guo et al. 2017, Sec. 4.2): one scalar T > 0, probabilities
softmax(z / T), fitted by minimising the negative log-likelihood on a validation split. T
keeps every argmax, so accuracy does not change. Evaluate hands over probabilities p, not
logits: log p = z - logsumexp(z) differs from the logits z by one constant per sample,
which softmax ignores, so softmax(log p / T) = softmax(z / T). NLL is convex in 1/T
(a log-sum-exp of linear functions), hence unimodal in log T: a bounded 1-D search on
log T over TEMPERATURE_RANGE finds its minimum, deterministically.

Low-confidence threshold t: a prediction is flagged when its calibrated top-1 probability
p < t. A lab triaging a season's photos accepts the model's answer when p >= t and sends
the rest to a taxonomist, so t is the *smallest* threshold whose accepted predictions
reach a target accuracy on the calibration split (default 0.95): sort samples by calibrated
p, descending; the accepted set of a threshold is every sample with p >= t (ties go in
together); t is the p of the largest such set whose accuracy is >= target. That sends the
fewest photos to a person while the accepted ones err at most 1 - target of the time on
validation. When no threshold reaches the target, t = 1.0: every prediction is flagged, and
the result says the best accuracy any threshold reached.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar  # scipy comes with scikit-learn
from scipy.special import logsumexp

from bionas.errors import BionasError
from bionas.shards.atomic import write_atomic
from bionas.trainer.predictor import (
    CALIBRATION_NAME,
    CALIBRATION_SCHEMA,
    Calibration,
    model_sha256,
)
from bionas.trainer.recalibrate import DEFAULT_BATCHES

log = logging.getLogger(__name__)

DEFAULT_BINS = 15
DEFAULT_TARGET_ACCURACY = 0.95
TEMPERATURE_RANGE = (0.05, 20.0)
UNREACHABLE_THRESHOLD = 1.0  # flags every prediction
FEW_SAMPLES = 200  # below this, T and t are rough: said in the output
# a float32 probability that rounded to 0 was below float32's smallest subnormal
_PROB_FLOOR = float(np.finfo(np.float32).smallest_subnormal)


# --- pure functions on arrays: probs [N, C] (rows sum to 1), labels [N] ----------------


def top1(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's top-1 confidence and whether its top-1 class is the label."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs.max(axis=1), probs.argmax(axis=1) == np.asarray(labels)


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS
) -> list[dict[str, Any]]:
    """Per equal-width confidence bin ((m-1)/M, m/M]: count, mean confidence, accuracy
    (both None for an empty bin)."""
    confidence, correct = top1(probs, labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges, right=True) - 1, 0, bins - 1)
    rows = []
    for m in range(bins):
        inside = index == m
        count = int(inside.sum())
        rows.append(
            {
                "lower": float(edges[m]),
                "upper": float(edges[m + 1]),
                "count": count,
                "confidence": float(confidence[inside].mean()) if count else None,
                "accuracy": float(correct[inside].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS
) -> float:
    """ECE of the top-1 confidence over `bins` equal-width bins (Guo et al. 2017, Eq. 3)."""
    return ece_of_bins(reliability_bins(probs, labels, bins))


def ece_of_bins(rows: list[dict[str, Any]]) -> float:
    n = sum(r["count"] for r in rows)
    if n == 0:
        raise ValueError("ECE of no samples")
    return float(
        sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"])
    )


def log_probabilities(probs: np.ndarray) -> np.ndarray:
    """log p in float64: the logits up to one constant per sample (see the docstring)."""
    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), _PROB_FLOOR))


def with_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) = softmax(logits / T): the calibrated probabilities."""
    z = log_probabilities(probs) / temperature
    return np.exp(z - logsumexp(z, axis=1, keepdims=True))


def negative_log_likelihood(
    probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0
) -> float:
    """Mean -log softmax(log p / T)[label]."""
    return _nll(log_probabilities(probs), np.asarray(labels), temperature)


def _nll(log_probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = log_probs / temperature
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(labels)), labels]))


def fit_temperature(
    probs: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_RANGE
) -> float:
    """The T in `bounds` minimising the NLL of softmax(log p / T) (bounded Brent on log T)."""
    if len(labels) == 0:
        raise ValueError("cannot fit a temperature on no samples")
    log_probs, labels = log_probabilities(probs), np.asarray(labels)
    result = minimize_scalar(
        lambda log_t: _nll(log_probs, labels, float(np.exp(log_t))),
        bounds=(float(np.log(bounds[0])), float(np.log(bounds[1]))),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


@dataclass(frozen=True)
class Threshold:
    """The low-confidence threshold chosen on a split, and what it did there."""

    value: float  # flag a prediction whose calibrated top-1 probability is below it
    target_accuracy: float
    reached: bool
    accepted: int  # samples with p >= value
    coverage: float  # accepted / samples
    accepted_accuracy: float | None
    best_accuracy: float  # the highest accuracy any threshold's accepted set reached
    rule: str


def low_confidence_threshold(
    probs: np.ndarray, labels: np.ndarray, target_accuracy: float = DEFAULT_TARGET_ACCURACY
) -> Threshold:
    """The smallest t whose accepted predictions (p >= t) reach `target_accuracy`; t = 1.0
    (flag all) when none does. `probs` are the calibrated probabilities."""
    if not 0 < target_accuracy <= 1:
        raise ValueError(f"target accuracy must be in (0, 1], got {target_accuracy}")
    confidence, correct = top1(probs, labels)
    n = len(confidence)
    if n == 0:
        raise ValueError("cannot choose a threshold on no samples")
    order = np.argsort(-confidence, kind="stable")
    confidence, correct = confidence[order], correct[order]
    accepted_accuracy = np.cumsum(correct) / np.arange(1, n + 1)
    # a threshold accepts all samples tied at its value: cut only after the last of a tie
    cut = np.append(confidence[1:] < confidence[:-1], True)
    best = float(accepted_accuracy[cut].max())
    meets = np.flatnonzero(cut & (accepted_accuracy >= target_accuracy))
    rule = (
        f"flag a prediction when its calibrated top-1 probability is below the smallest "
        f"threshold whose accepted predictions (p >= threshold) were at least "
        f"{target_accuracy:.2%} correct on the calibration split"
    )
    if not len(meets):
        return Threshold(
            UNREACHABLE_THRESHOLD, target_accuracy, False, 0, 0.0, None, best,
            rule + f"; no threshold reached it (best {best:.2%}), so every prediction is "
            "flagged (threshold 1.0): lower --target-accuracy to accept some",
        )  # fmt: skip
    k = int(meets[-1])
    # midway to the next lower confidence, not on a sample's own value: predict computes
    # probabilities in float32 (or another runtime), and a sample on the line would flip
    below = confidence[k + 1] if k + 1 < n else 0.0
    return Threshold(
        float((confidence[k] + below) / 2), target_accuracy, True, k + 1, (k + 1) / n,
        float(accepted_accuracy[k]), best, rule,
    )  # fmt: skip


def calibration_summary(
    probs: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """ECE, NLL and the reliability bins of `probs` (None-valued without samples)."""
    rows = reliability_bins(probs, labels, bins)
    if len(labels) == 0:
        return {"ece": None, "nll": None, "reliability": rows}
    return {
        "ece": ece_of_bins(rows),
        "nll": negative_log_likelihood(probs, labels),
        "reliability": rows,
    }


def evaluation_calibration(
    probs: np.ndarray,
    labels: np.ndarray,
    calibration: Calibration,
    *,
    split: str,
    dataset_dir: Path,
    bins: int = DEFAULT_BINS,
) -> dict[str, Any]:
    """What `bionas evaluate` reports on a split: the model's own ECE and NLL, and the same
    with calibration.json's temperature when the run has one (`calibrated` None without)."""
    fitted = calibration.body.get("temperature") is not None
    report = {
        "bins": bins,
        "binning": "top-1 confidence in equal-width bins ((m-1)/M, m/M]; ECE as Guo et al. 2017",
        "uncalibrated": calibration_summary(probs, labels, bins),
        "temperature": calibration.temperature if fitted else None,
        "calibrated": None,
    }
    if fitted:
        scaled = with_temperature(probs, calibration.temperature) if len(labels) else probs
        report["calibrated"] = calibration_summary(scaled, labels, bins)
        fitted_on = {
            k: calibration.body.get(k) for k in ("dataset_dir", "split", "network", "fitted_at")
        }
        same = fitted_on["dataset_dir"] is not None and (
            Path(fitted_on["dataset_dir"]).resolve() == Path(dataset_dir).resolve()
        )
        # T fitted on the very samples it is judged on: the calibrated ECE is optimistic
        fitted_on["this_split"] = same and fitted_on["split"] == split
        report["fitted_on"] = fitted_on
        if calibration.low_confidence is not None:
            report["low_confidence"] = threshold_on_split(
                scaled, labels, calibration.low_confidence
            )
    return report


def threshold_on_split(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """What a threshold chosen elsewhere does here: accepted (p >= t) and their accuracy."""
    confidence, correct = top1(probs, labels)
    accepted = confidence >= threshold
    n = len(confidence)
    return {
        "threshold": threshold,
        "accepted": int(accepted.sum()),
        "flagged": int(n - accepted.sum()),
        "coverage": float(accepted.mean()) if n else None,
        "accepted_accuracy": float(correct[accepted].mean()) if accepted.any() else None,
    }


# --- `bionas calibrate`: the run's predictions on a split -> calibration.json ----------


@dataclass(frozen=True)
class CalibrateConfig:
    run_dir: Path
    split: str = "val"
    bins: int = DEFAULT_BINS
    target_accuracy: float = DEFAULT_TARGET_ACCURACY
    batch_size: int = 64
    workers: int = 0
    device: str = "auto"
    bn_batches: int = DEFAULT_BATCHES  # as evaluate: a search run's derived network
    progress: bool = True

    def __post_init__(self) -> None:
        if self.bins < 1:
            raise BionasError(f"--bins must be >= 1, got {self.bins}")
        if not 0 < self.target_accuracy <= 1:
            raise BionasError(f"--target-accuracy must be in (0, 1], got {self.target_accuracy}")
        if self.batch_size < 1 or self.workers < 0 or self.bn_batches < 0:
            raise BionasError("--batch-size must be >= 1, --workers and --bn-batches >= 0")


def calibrate_run(cfg: CalibrateConfig) -> dict[str, Any]:
    """Fit T and the threshold on a split of the run's own dataset with the network
    `bionas evaluate` reports as headline; writes RUN_DIR/calibration.json atomically."""
    from bionas.trainer.evaluate import open_manifest, run_on_split
    from bionas.trainer.run import load_trained

    run = load_trained(cfg.run_dir, map_location="cpu")
    manifest = open_manifest(Path(run.dataset_dir))
    if cfg.split not in manifest.splits:
        raise BionasError(
            f"{manifest.root} has no {cfg.split!r} split to calibrate on "
            f"(splits: {', '.join(manifest.splits)}); choose one with --split"
        )
    if manifest.num_samples(cfg.split) == 0:
        raise BionasError(f"split {cfg.split!r} of {manifest.root} is empty: nothing to fit on")
    done = run_on_split(
        run, manifest, cfg.split, batch_size=cfg.batch_size, workers=cfg.workers,
        device=cfg.device, bn_batches=cfg.bn_batches, progress=cfg.progress, headline_only=True,
    )  # fmt: skip
    preds = done.predictions[done.networks.headline]
    if len(preds.labels) == 0:
        raise BionasError(
            f"no sample of split {cfg.split!r} of {manifest.root} could be used "
            f"(classes the model does not know: {preds.unknown_classes}, skipped: "
            f"{preds.skipped}): nothing to fit on"
        )
    body = fit_calibration(preds.probs, preds.labels, cfg.bins, cfg.target_accuracy)
    body.update(
        run_dir=str(cfg.run_dir),
        dataset_dir=str(manifest.root),
        split=cfg.split,
        network=done.networks.headline,
        model_sha256=model_sha256(cfg.run_dir),  # a later model.pt makes it stale
        samples={
            "in_split": manifest.num_samples(cfg.split),
            "fitted": int(len(preds.labels)),
            "unknown_class_samples": sum(preds.unknown_classes.values()),
            "skipped": preds.skipped,
        },
        notes=_notes(run, cfg, len(preds.labels), body),
        fitted_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    text = json.dumps(body, indent=1, allow_nan=False) + "\n"
    write_atomic(Path(cfg.run_dir) / CALIBRATION_NAME, text.encode("utf-8"))
    return body


def fit_calibration(
    probs: np.ndarray, labels: np.ndarray, bins: int, target_accuracy: float
) -> dict[str, Any]:
    """calibration.json's measured part: T, the threshold, ECE/NLL before and after.

    A T at the edge of its search range, or fitted on a split with no error (or no right
    answer), is no estimate: it would drive every probability to 1 (or to uniform). Then
    T = 1 is kept and the fitted value recorded beside the reason."""
    if not np.isfinite(probs).all():
        raise BionasError(
            "the model gave non-finite probabilities (NaN or inf) on this split: it diverged "
            "or its weights are damaged; no temperature can be fitted"
        )
    fitted = fit_temperature(probs, labels)
    correct = top1(probs, labels)[1]
    low, high = TEMPERATURE_RANGE
    kept_at_one = None
    if correct.all() or not correct.any():
        kept_at_one = "every prediction of the split is right (or wrong): nothing to fit on"
    elif not low * 1.01 < fitted < high / 1.01:
        kept_at_one = f"the fit ran to the edge of its range {list(TEMPERATURE_RANGE)}"
    temperature = 1.0 if kept_at_one else fitted
    before = calibration_summary(probs, labels, bins)
    after = calibration_summary(with_temperature(probs, temperature), labels, bins)
    threshold = low_confidence_threshold(
        with_temperature(probs, temperature), labels, target_accuracy
    )
    return {
        "schema": CALIBRATION_SCHEMA,
        "temperature": temperature,
        "fitted_temperature": fitted,
        "kept_at_one": kept_at_one,  # why T = 1 was kept instead of the fit, or None
        "low_confidence_threshold": threshold.value,
        "method": "temperature scaling (Guo et al. 2017): T minimising the NLL of "
        f"softmax(logits / T) on the split, bounded search on log T in {list(TEMPERATURE_RANGE)}",
        "threshold": asdict(threshold),
        "accuracy": float(top1(probs, labels)[1].mean()),
        "bins": bins,
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "nll_before": before["nll"],
        "nll_after": after["nll"],
        "reliability": {"before": before["reliability"], "after": after["reliability"]},
    }


def _notes(run: Any, cfg: CalibrateConfig, samples: int, body: dict[str, Any]) -> list[str]:
    """What a reader of the numbers should know about how they were fitted."""
    notes = []
    if run.train_config.get("arch_data") == cfg.split:
        notes.append(
            f"the run's architecture was trained on the {cfg.split!r} split (--arch-data "
            f"{cfg.split}): it is not independent of the model; calibrate on another split"
        )
    if cfg.split == "test":
        notes.append("fitted on the test split: test metrics with T are optimistic")
    if samples < FEW_SAMPLES:
        notes.append(f"only {samples} samples: T and the threshold are rough estimates")
    if body.get("kept_at_one"):
        notes.append(
            f"T = 1 kept, not the fitted {body['fitted_temperature']:.3g}: "
            f"{body['kept_at_one']} (the split is too small or too easy to fit on)"
        )
    if getattr(run.model, "theta", None) is not None:
        notes.append(
            "a search run: T is fitted on the derived network (evaluate's headline); "
            "`bionas predict` on this folder answers with the supernet. Calibrate the final "
            "model (RUN_DIR/final) for deployment"
        )
    return notes
