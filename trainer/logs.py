"""Training logs in RUN_DIR (JSONL, one object per line) and the search's collapse monitors.

`steps.jsonl` one line per step, `epochs.jsonl` one per finished epoch, `alphas.jsonl` the
α of every edge at the start and after every epoch (for plots of α over time),
`events.jsonl` what changed how the run trains (the batch size halved after running out of
memory, or changed on resume: `bionas.trainer.rebatch`). Step lines
are written `--log-every` at a time, when the loop reads the window of steps' results from
the device (`bionas.trainer.step.StepWindow`), and always before a checkpoint.

Collapse monitors (DARTS-family failure: parameter-free ops win because they train fastest):
α entropy per edge (log K = uniform, 0 = decided), α mass on the parameter-free ops
(pools, skip, zero; skip is a factorized reduce with weights on reduction edges, but it
is still the shortcut collapse favours), the number of edges whose argmax is skip, edges
cut (zero wins), and the number of pruned ops.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bionas.trainer.ops import OP_NAMES

STEPS_LOG, EPOCHS_LOG, ALPHAS_LOG = "steps.jsonl", "epochs.jsonl", "alphas.jsonl"
EVENTS_LOG = "events.jsonl"
PARAMETER_FREE_OPS = ("avg_pool_3x3", "max_pool_3x3", "skip", "zero")
_FREE_INDEX = [OP_NAMES.index(op) for op in PARAMETER_FREE_OPS]


def clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None (JSON has no inf/nan)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def append_jsonl(path: Path, *records: dict[str, Any]) -> None:
    """Append one line per record (one open for all of them)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(clean(r), sort_keys=True) + "\n" for r in records)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def rewrite_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace a log atomically (on resume: drop what came after the checkpoint)."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(clean(record), sort_keys=True) + "\n")
    os.replace(tmp, path)


def truncate_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    rewrite_jsonl(path, [r for r in read_jsonl(path) if keep(r)])


def alpha_entropy(alphas: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each α row."""
    return -(alphas * alphas.clamp_min(1e-12).log()).sum(-1)


def mean_alpha_entropy(alphas: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The mean entropy over the edges, a 0-d tensor on θ's device (not read: no sync)."""
    if not alphas:
        return None
    return alpha_entropy(torch.stack(list(alphas.values()))).mean()


def collapse_monitors(alphas: dict[str, torch.Tensor], pruned_ops: int) -> dict[str, Any]:
    """The per-epoch monitors (see the module docstring); empty for a fixed genotype."""
    if not alphas:
        return {}
    rows = torch.stack(list(alphas.values()))
    entropy = alpha_entropy(rows)
    free = rows[:, _FREE_INDEX].sum(-1)
    winners = [OP_NAMES[int(i)] for i in rows.argmax(-1)]
    return {
        "alpha_entropy_mean": float(entropy.mean()),
        "alpha_entropy": {e: float(h) for e, h in zip(alphas, entropy, strict=True)},
        "param_free_mass_mean": float(free.mean()),
        "param_free_mass": {e: float(m) for e, m in zip(alphas, free, strict=True)},
        "argmax": dict(zip(alphas, winners, strict=True)),
        "skip_count": winners.count("skip"),
        "cut_edges": winners.count("zero"),
        "pruned_ops": pruned_ops,
    }


def alpha_record(alphas: dict[str, torch.Tensor], epoch: int, step: int) -> dict[str, Any]:
    """One line of alphas.jsonl: edge -> {op: α}."""
    return {
        "epoch": epoch,
        "step": step,
        "alphas": {
            edge: dict(zip(OP_NAMES, (float(a) for a in row), strict=True))
            for edge, row in alphas.items()
        },
    }


def progress_bar(total: int, initial: int, description: str, quiet: bool) -> tqdm:
    """A tqdm bar on stderr; off with --quiet or when stderr is not a terminal."""
    return tqdm(
        total=total,
        initial=initial,
        desc=description,
        unit="step",
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
        dynamic_ncols=True,
        leave=False,
    )


def start_logs(run_dir: Path, initial_alphas: dict[str, torch.Tensor]) -> None:
    """Empty logs for a fresh run; alphas.jsonl starts with θ's initial α (epoch 0)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (STEPS_LOG, EPOCHS_LOG, ALPHAS_LOG, EVENTS_LOG):
        rewrite_jsonl(run_dir / name, [])
    if initial_alphas:
        append_jsonl(run_dir / ALPHAS_LOG, alpha_record(initial_alphas, 0, 0))


def trim_logs(
    run_dir: Path,
    step: int,
    epoch: int,
    history: list[dict[str, Any]],
    events: list[dict[str, Any]] | None = None,
) -> None:
    """On resume: drop lines written after the checkpoint (they will be written again).
    epochs.jsonl and events.jsonl are rewritten from the checkpoint's own records, so an
    event of a resume that never reached a checkpoint goes too."""
    truncate_jsonl(run_dir / STEPS_LOG, lambda r: r["step"] <= step)
    rewrite_jsonl(run_dir / EPOCHS_LOG, history)
    rewrite_jsonl(run_dir / EVENTS_LOG, events or [])
    truncate_jsonl(run_dir / ALPHAS_LOG, lambda r: r["epoch"] <= epoch)
