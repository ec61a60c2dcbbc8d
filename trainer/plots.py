"""PNG plots of an evaluation and of a training run (SPEC §6), with matplotlib's Agg canvas.

Each function draws one figure and writes it to `path`. Figures are built with
`matplotlib.figure.Figure` (no pyplot global state), so plotting is safe in a library,
in threads and on machines without a display.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc, roc_curve

DPI = 110
MAX_LABELLED_CLASSES = 100  # beyond this, tick labels would overlap into a grey bar
MAX_ANNOTATED_CLASSES = 15  # beyond this, per-cell numbers are unreadable
_EDGE = re.compile(r"^cell(\d+)\.(\w+)$")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, skipping blank lines."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, *, title: str = ""
) -> Path:
    """Row-normalised confusion matrix (each true class sums to 1; empty rows stay 0)."""
    counts = np.asarray(matrix, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = len(class_names)
    side = min(max(6.0, 0.32 * n + 3.0), 40.0)
    fig = _figure(side, side * 0.9)
    ax = fig.add_subplot()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "Confusion matrix (row-normalised)")
    if n <= MAX_LABELLED_CLASSES:
        fontsize = 9 if n <= 30 else 6
        ax.set_xticks(range(n), labels=list(class_names), rotation=90, fontsize=fontsize)
        ax.set_yticks(range(n), labels=list(class_names), fontsize=fontsize)
    if n <= MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    colour = "white" if normalised[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center",
                            fontsize=7, color=colour)  # fmt: skip
    return _save(fig, path)


def plot_roc_curves(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    *,
    max_classes: int = 10,
) -> Path:
    """One-vs-rest ROC curves of the `max_classes` classes with the most samples."""
    y_true = np.asarray(y_true)
    support = np.bincount(y_true, minlength=len(class_names)) if len(y_true) else None
    fig = _figure(7.0, 6.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    defined = [] if support is None else [
        i for i in np.argsort(-support, kind="stable") if 0 < support[i] < len(y_true)
    ]  # fmt: skip
    for i in defined[:max_classes]:
        fpr, tpr, _ = roc_curve(y_true == i, y_prob[:, i])
        label = f"{class_names[i]} (AUC {auc(fpr, tpr):.3f}, n={support[i]})"
        ax.plot(fpr, tpr, linewidth=1.5, label=label)
    if not defined:
        ax.text(0.5, 0.5, "ROC undefined: no class has both positive and negative samples",
                ha="center", va="center", wrap=True)  # fmt: skip
    shown = min(len(defined), max_classes)
    ax.set_title(f"ROC one-vs-rest ({shown} of {len(class_names)} classes, by support)")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def plot_reliability_diagram(
    series: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, *, title: str = ""
) -> Path:
    """Accuracy against mean top-1 confidence per confidence bin, one line per series
    (legend label -> bins), with the samples per bin above.

    Bins are `trainer.calibration.reliability_bins` rows: lower, upper, count, confidence,
    accuracy (None in an empty bin, which is not drawn).
    """
    fig = _figure(6.5, 7.0)
    top, main = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 3]})
    main.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")  # fmt: skip
    colours = _op_colours(len(series))
    for k, (label, rows) in enumerate(series.items()):
        width = (rows[0]["upper"] - rows[0]["lower"]) / len(series) if rows else 0.0
        offset = (k - (len(series) - 1) / 2) * width
        centres = [(r["lower"] + r["upper"]) / 2 + offset for r in rows]
        top.bar(centres, [r["count"] for r in rows], width=width, color=colours[k], alpha=0.7)
        filled = [r for r in rows if r["count"]]
        main.plot([r["confidence"] for r in filled], [r["accuracy"] for r in filled],
                  marker="o", color=colours[k], label=label)  # fmt: skip
    top.set_ylabel("samples")
    top.set_title(title or "Reliability diagram")
    main.set_xlabel("mean top-1 confidence in the bin")
    main.set_ylabel("accuracy in the bin")
    main.set_xlim(0, 1)
    main.set_ylim(0, 1.02)
    main.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_alphas(
    history: Sequence[Mapping[str, Any]], path: Path, op_names: Sequence[str] = ()
) -> Path:
    """α per edge over training: one panel per edge (rows = cells), one line per op.

    `history` is the content of alphas.jsonl, one record per snapshot:
    {"epoch": e, "step": s, "alphas": {edge: {op: α}}} (or {edge: [α in `op_names` order]}).
    The x axis is the epoch, or the step when several snapshots share an epoch.
    """
    history = sorted(history, key=lambda r: (r.get("epoch", 0), r.get("step", 0)))
    edges = list(history[0]["alphas"]) if history else []
    first = history[0]["alphas"][edges[0]] if edges else []
    ops = list(op_names)
    if isinstance(first, Mapping) and not set(first) <= set(ops):
        ops = list(first)  # logs may sort the ops by name; the registry order reads better
    x_key = "epoch" if len({r.get("epoch") for r in history}) == len(history) else "step"
    x = [r.get(x_key, i) for i, r in enumerate(history)]
    grid = _edge_grid(edges)
    rows = max(1, max((r for r, _ in grid.values()), default=0) + 1)
    cols = max(1, max((c for _, c in grid.values()), default=0) + 1)
    fig = _figure(4.0 * cols, 2.6 * rows + 1.0)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    colours = _op_colours(len(ops))
    for edge, (r, c) in grid.items():
        ax = axes[r][c]
        values = np.asarray([_alpha_row(rec["alphas"][edge], ops) for rec in history])
        for k, op in enumerate(ops):
            ax.plot(x, values[:, k], marker="o", markersize=3, color=colours[k], label=op)
        ax.set_title(edge, fontsize=9)
        _integer_ticks(ax, x)
        ax.set_ylim(0.0, 1.15 * float(np.nanmax(values)) if values.size else 1.0)
        ax.tick_params(labelsize=7)
    for r in range(rows):
        for c in range(cols):
            if (r, c) not in grid.values():
                axes[r][c].set_axis_off()
    if not edges:
        axes[0][0].text(0.5, 0.5, "no α recorded", ha="center", va="center")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 5), fontsize=8)
    fig.supxlabel(x_key)
    fig.supylabel("α = softmax(θ)")
    return _save(fig, path, rect_top=1.0 - 0.6 / (2.6 * rows + 1.0) if handles else 1.0)


def _alpha_row(row: Mapping[str, float] | Sequence[float], ops: Sequence[str]) -> list[float]:
    if isinstance(row, Mapping):
        return [float(row.get(op, np.nan)) for op in ops]
    return [float(a) for a in row]


def plot_training_curves(epochs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Loss and accuracy per epoch: every numeric column whose name has `loss` / `acc`."""
    epochs = sorted(epochs, key=lambda r: r.get("epoch", 0))
    fig = _figure(11.0, 4.2)
    panels = fig.subplots(1, 2, squeeze=False)[0]
    x = [r.get("epoch", i) for i, r in enumerate(epochs)]
    for ax, word, title in ((panels[0], "loss", "loss"), (panels[1], "acc", "accuracy")):
        keys = sorted({k for r in epochs for k, v in r.items() if word in k and _number(v)})
        for key in keys:
            pairs = [(xi, r[key]) for xi, r in zip(x, epochs, strict=True) if _number(r.get(key))]
            ax.plot(*zip(*pairs, strict=True), marker="o", markersize=3, label=key)
        if keys:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {title} recorded", ha="center", va="center")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        _integer_ticks(ax, x)
    return _save(fig, path)


def _integer_ticks(ax: Any, x: Sequence[int]) -> None:
    """A tick at every epoch when there are few, else integer ticks only."""
    if 0 < len(set(x)) <= 12:
        ax.set_xticks(sorted(set(x)))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _edge_grid(edges: Sequence[str]) -> dict[str, tuple[int, int]]:
    """`cellI.EDGE` names on a cells x edges grid; other names fill a square grid."""
    parsed = [_EDGE.match(e) for e in edges]
    if edges and all(parsed):
        kinds = list(dict.fromkeys(m.group(2) for m in parsed))
        return {e: (int(m.group(1)), kinds.index(m.group(2))) for e, m in zip(edges, parsed, strict=True)}  # fmt: skip
    cols = max(1, int(np.ceil(np.sqrt(len(edges)))))
    return {e: divmod(i, cols) for i, e in enumerate(edges)}


def _op_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"] if n <= 10 else colormaps["tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path, *, rect_top: float = 1.0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0, 1, rect_top))
    fig.savefig(path, format="png")
    return path
