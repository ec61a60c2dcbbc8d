"""The comparison's files: a markdown table (as printed), a CSV and one PNG.

The CSV holds the values as read (metrics as fractions, full precision, empty cells for
missing values); the markdown rounds them and gives metrics in percent, as the paper's
tables do. The PNG draws accuracy against GFLOPs and against latency at batch 1 (GPU when
every plotted row was timed on one, else CPU), one labelled point per evaluated row.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bionas.compare import COLUMNS, PERCENT, Row

MARKDOWN, CSV, PNG = "comparison.md", "comparison.csv", "comparison.png"
COUNTS = frozenset(("samples", "unseen_bin_samples", "params", "images_seen"))


def markdown_table(rows: Sequence[Row]) -> str:
    """A GitHub markdown table of every column, one line per row."""
    lines = [
        "| " + " | ".join(header for _, header in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in rows:
        cells = (_cell(key, row.get(key)) for key, _ in COLUMNS)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return "—"
    if key in PERCENT:
        return f"{100 * value:.2f}"
    if key in COUNTS:
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.2f}" if value >= 1 else f"{value:.3g}"
    return str(value).replace("|", "\\|")


def write_csv(rows: Sequence[Row], path: Path) -> Path:
    """One line per row, the column keys as header; missing values are empty cells."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([key for key, _ in COLUMNS])
        for row in rows:
            writer.writerow(["" if row.get(k) is None else row.get(k) for k, _ in COLUMNS])
    return path


def write_plot(rows: Sequence[Row], path: Path) -> Path | None:
    """Accuracy vs GFLOPs and vs latency; None (no file) when no row has both."""
    points = [r for r in rows if r.get("accuracy") is not None and r.get("gflops") is not None]
    if not points:
        return None
    on_gpu = all(r.get("latency_gpu_ms") is not None for r in points)
    latency_key = "latency_gpu_ms" if on_gpu else "latency_cpu_ms"
    fig = Figure(figsize=(12, 5), dpi=110)
    FigureCanvasAgg(fig)
    for index, (key, label) in enumerate(
        (("gflops", "GFLOPs (batch 1)"),
         (latency_key, f"latency at batch 1, {'GPU' if on_gpu else 'CPU'} (ms)"))
    ):  # fmt: skip
        ax = fig.add_subplot(1, 2, index + 1)
        xs = [r.get(key) for r in points]
        ys = [100 * r["accuracy"] for r in points]
        drawn = [(x, y, r) for x, y, r in zip(xs, ys, points, strict=True) if x is not None]
        ax.scatter([x for x, _, _ in drawn], [y for _, y, _ in drawn], color="tab:blue")
        for x, y, row in drawn:
            ax.annotate(_label(row), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if _wide([x for x, _, _ in drawn]):
            ax.set_xscale("log")
        else:  # a few readable ticks, also for the tiny FLOPs of test-sized models
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        ax.margins(0.15)  # room for the labels of the outermost points
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.3)
    fig.suptitle("Accuracy against cost, one point per evaluation")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _label(row: Row) -> str:
    label = str(row.get("run", ""))
    if "(cross)" in str(row.get("dataset", "")):
        label += f" @ {row['dataset'].removesuffix(' (cross)')}"
    return label


def _wide(values: Sequence[float]) -> bool:
    """Log scale when the values are positive and span more than 20x."""
    positive = [v for v in values if v and v > 0 and math.isfinite(v)]
    return len(positive) > 1 and max(positive) / min(positive) > 20


def write_comparison(rows: Sequence[Row], out_dir: Path) -> dict[str, Path | None]:
    """comparison.md, comparison.csv and comparison.png in OUT_DIR."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKDOWN).write_text(markdown_table(rows), encoding="utf-8")
    (out_dir / PNG).unlink(missing_ok=True)  # no stale plot when no row can be drawn now
    return {
        "markdown": out_dir / MARKDOWN,
        "csv": write_csv(rows, out_dir / CSV),
        "png": write_plot(rows, out_dir / PNG),
    }
