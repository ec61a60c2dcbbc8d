"""BatchNorm recalibration of a network derived from a supernet (one-shot NAS practice).

The derived network inherits the supernet's weights, but each of its layers now sees
other inputs: where the supernet summed nine α-weighted ops, the derived cell runs one, so
every BatchNorm after it (the cell's output conv, the next cell's ops) normalises with
running statistics of activations that no longer occur. Evaluating it as it is measures
the mismatch, not the architecture. As in single-path one-shot NAS (Guo et al. 2020,
"SPOS") and FairNAS, the running statistics are re-estimated on training batches before
evaluation: reset, then a cumulative average over `batches` forward passes in train
mode, without gradients; no weight changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

DEFAULT_BATCHES = 20


def recalibrate_batchnorm(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device | str
) -> int:
    """Re-estimate every BatchNorm's running mean/var on `batches` of (images, meta);
    returns the number of samples seen. The model is left in eval mode.

    The statistics are reset only once a first batch has arrived, and put back as they
    were when no batch comes or reading fails midway: a failed recalibration leaves the
    inherited statistics, never freshly reset ones (mean 0, variance 1)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in norms]
    batches = iter(batches)
    first = next(batches, None)  # reading errors here leave the model untouched
    seen = 0
    model.eval()
    if first is None:
        return 0
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    try:
        with torch.no_grad():
            for images, meta in itertools.chain([first], batches):
                model(images.to(device), meta.to(device))
                seen += int(images.shape[0])
    except BaseException:
        _restore(norms, saved)
        raise
    finally:
        for m, (momentum, _) in zip(norms, saved, strict=True):
            m.momentum = momentum
        model.eval()
    return seen


def _restore(norms: list[nn.Module], saved: list[tuple[Any, dict[str, Tensor]]]) -> None:
    with torch.no_grad():
        for m, (_, state) in zip(norms, saved, strict=True):
            m.load_state_dict(state)
