"""Classification metrics on arrays (SPEC §6 Evaluation): pure functions, scikit-learn inside.

Inputs everywhere: `y_true` int array [N] of class indices 0..C-1, `y_prob` float array
[N, C] of class probabilities, `class_names` of length C. The result is a JSON-ready
dict; undefined values (a class never predicted, a class with no samples) are `None`,
never NaN, and never a warning.

Conventions, also written into the result:
- macro / weighted precision, recall and F1 average over the classes that have samples
  in `y_true` (classes absent from the evaluated split would otherwise count as 0);
  inside that average a class that is never predicted has precision 0 (sklearn's
  `zero_division=0`);
- the per-class report covers every class; precision is `None` when the class is never
  predicted, recall and F1 are `None` when it has no samples;
- ROC AUC is one-vs-rest per class, defined only for classes with both positive and
  negative samples; the others are listed under `skipped` with the reason; the macro
  AUC is the unweighted mean over the classes where it is defined.
"""

from __future__ import annotations

import warnings
from collections.abc import Container, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

CONVENTIONS = {
    "averages": "macro/weighted over classes with support > 0 in y_true; "
    "precision of a never-predicted class counts as 0",
    "per_class": "precision null when the class is never predicted; recall and f1 null "
    "when the class has no samples",
    "roc_auc": "one-vs-rest per class; classes without positive or without negative "
    "samples are skipped; macro = unweighted mean over the classes where it is defined",
    "confusion_matrix": "rows = true class, columns = predicted class, in class_names order",
}


def classification_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str], *, top_k: int = 5
) -> dict[str, Any]:
    """Accuracy, top-k, averaged P/R/F1, per-class report, ROC AUC and confusion matrix."""
    y_true, y_prob = _check(y_true, y_prob, class_names)
    n, num_classes = len(y_true), len(class_names)
    labels = np.arange(num_classes)
    result: dict[str, Any] = {"n_samples": int(n)}
    if n == 0:
        return result | {"accuracy": None, "note": "no samples"}
    y_pred = y_prob.argmax(axis=1)
    support = np.bincount(y_true, minlength=num_classes)
    present = labels[support > 0]
    result["accuracy"] = float(accuracy_score(y_true, y_pred))
    result[f"top{top_k}_accuracy"] = top_k_accuracy(y_true, y_prob, top_k)
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=present, average=average, zero_division=0
        )
        result[f"precision_{average}"] = float(p)
        result[f"recall_{average}"] = float(r)
        result[f"f1_{average}"] = float(f)
    result["classes_with_samples"] = int(len(present))
    result["classes_without_samples"] = [class_names[i] for i in labels[support == 0]]
    result["per_class"] = per_class_report(y_true, y_pred, class_names)
    result["roc_auc"] = roc_auc_one_vs_rest(y_true, y_prob, class_names)
    result["confusion_matrix"] = _confusion_matrix(y_true, y_pred, labels).tolist()
    return result


def _confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        # sklearn warns on a single label even when `labels` fixes the shape, as here
        warnings.filterwarnings("ignore", message="A single label was found")
        return confusion_matrix(y_true, y_pred, labels=labels)


def top_k_accuracy(y_true: np.ndarray, y_prob: np.ndarray, k: int = 5) -> float:
    """Share of samples whose true class is among the k most probable (k >= C gives 1.0)."""
    num_classes = y_prob.shape[1]
    if k >= num_classes:
        return 1.0  # every class is in the top k; sklearn would warn and say the same
    return float(top_k_accuracy_score(y_true, y_prob, k=k, labels=np.arange(num_classes)))


def per_class_report(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """{class_name: {precision, recall, f1, support}} for every class, in class order."""
    labels = np.arange(len(class_names))
    p, r, f, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=np.nan
    )
    predicted = np.bincount(y_pred, minlength=len(class_names)) > 0
    report = {}
    for i, name in enumerate(class_names):
        has_samples = support[i] > 0
        report[name] = {
            "precision": _finite(p[i]) if predicted[i] else None,
            "recall": _finite(r[i]) if has_samples else None,
            "f1": _finite(f[i]) if has_samples else None,
            "support": int(support[i]),
        }
    return report


def roc_auc_one_vs_rest(
    y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Per-class one-vs-rest ROC AUC, its macro mean, and the classes where it is undefined."""
    per_class: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for i, name in enumerate(class_names):
        positives = int((y_true == i).sum())
        if positives == 0:
            skipped[name] = "no positive samples"
        elif positives == len(y_true):
            skipped[name] = "no negative samples"
        else:
            per_class[name] = float(roc_auc_score(y_true == i, y_prob[:, i]))
    macro = float(np.mean(list(per_class.values()))) if per_class else None
    return {"macro": macro, "per_class": per_class, "skipped": skipped}


def evaluation_metrics(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    class_names: Sequence[str],
    *,
    subsets: Mapping[str, np.ndarray | None] | None = None,
    top_k: int = 5,
) -> dict[str, Any]:
    """The metric bundle on all samples, and on each named subset (a boolean mask [N]
    from the caller, e.g. the `dna_bin_groups`; None: not computed), side by side."""
    result = {
        "conventions": CONVENTIONS,
        "all": classification_metrics(y_true, y_prob, class_names, top_k=top_k),
    }
    for name, subset in (subsets or {}).items():
        if subset is None:
            continue
        mask = np.asarray(subset, dtype=bool)
        if mask.shape != (len(y_true),):
            raise ValueError(f"{name} mask has shape {mask.shape}, expected ({len(y_true)},)")
        result[name] = classification_metrics(
            np.asarray(y_true)[mask], np.asarray(y_prob)[mask], class_names, top_k=top_k
        )
    return result


# The dna_bin groups of SPEC §6: a sample's BIN occurs in the training split, never does,
# or the sample has none (an empty BIN is missing information, not a novel BIN).
BIN_GROUPS = ("seen_bin", "unseen_bin", "no_bin")


def dna_bin_groups(dna_bins: Sequence[str], training_bins: Container[str]) -> dict[str, np.ndarray]:
    """One boolean mask per `BIN_GROUPS` entry; every sample is in exactly one group."""
    no_bin = no_bin_mask(dna_bins)
    seen = np.fromiter((bool(b) and b in training_bins for b in dna_bins), dtype=bool,
                       count=len(dna_bins))  # fmt: skip
    return {"seen_bin": seen, "unseen_bin": ~seen & ~no_bin, "no_bin": no_bin}


def no_bin_mask(dna_bins: Sequence[str]) -> np.ndarray:
    """True where the dna_bin is empty."""
    return np.fromiter((not b for b in dna_bins), dtype=bool, count=len(dna_bins))


def _check(
    y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    num_classes = len(class_names)
    if y_prob.ndim != 2 or y_prob.shape != (len(y_true), num_classes):
        raise ValueError(
            f"y_prob has shape {y_prob.shape}, expected ({len(y_true)}, {num_classes})"
        )
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= num_classes):
        raise ValueError(f"y_true holds class indices outside 0..{num_classes - 1}")
    return y_true, y_prob


def _finite(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
