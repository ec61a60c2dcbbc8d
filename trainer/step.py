"""One step of Algorithm 1 (a w step or a θ step), moving a batch to the device, and
reading the steps' results in windows.

`train_step` freezes the other parameter group, runs forward and loss under the AMP
policy, scales, unscales, clips the gradient norm, steps and puts back BatchNorm's
running statistics after a θ step (see `bionas.trainer.loop` for the whole algorithm).

Its result stays on the device: a read (`float(loss)`) makes the host wait until the GPU
has finished the step, so the CPU could never queue the next step's kernels ahead of it.
The loop gathers the results of `--log-every` steps in a `StepWindow` and reads them all
with one host sync.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bionas.trainer.batch_size import is_out_of_memory
from bionas.trainer.config import Amp
from bionas.trainer.data import Batch
from bionas.trainer.distributed import Dist
from bionas.trainer.optimizers import Optimizers
from bionas.trainer.transforms import normalize_images


@dataclass(frozen=True)
class StepResult:
    """One step's loss, correct count and gradient norm (before clipping), as 0-d tensors
    on the step's device. The `loss`, `correct` and `grad_norm` properties read them now
    (a host sync each), for callers that take one step at a time; the loop reads a whole
    window at once (`StepWindow`)."""

    loss_on_device: Tensor
    correct_on_device: Tensor
    grad_norm_on_device: Tensor
    samples: int

    @property
    def loss(self) -> float:
        return float(self.loss_on_device)

    @property
    def correct(self) -> int:
        return int(self.correct_on_device)

    @property
    def grad_norm(self) -> float:
        return float(self.grad_norm_on_device)


class StepOutOfMemory(torch.OutOfMemoryError):
    """The device ran out of memory while a step computed its gradient (forward, loss,
    backward, unscale, clip), before the optimiser step: w, θ, both optimisers and the loss
    scales are as the last completed step left them, the gradients are dropped and a θ
    step's BatchNorm statistics put back; only a w step's running statistics (an average
    over batches, not a weight) may hold the failed forward's batch statistics. So the
    step can be taken again, e.g. on smaller batches, once the scalers have forgotten the
    unscale of the failed step (`bionas.trainer.rebatch.fresh_scaler`). An
    out-of-memory error in the optimiser step itself propagates as it is: the update may
    be half applied (Adam's step counts, moments, weights are updated one after another)."""

    def __init__(self, kind: str, samples: int) -> None:
        super().__init__(f"a {kind} step ran out of memory")
        self.kind, self.samples = kind, samples


def task_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.1) -> Tensor:
    """Cross-entropy with label smoothing, computed in fp32."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def train_step(
    model: nn.Module,
    images: Tensor,
    meta: Tensor,
    labels: Tensor,
    kind: str,
    opts: Optimizers,
    amp: Amp,
    *,
    grad_clip: float = 1.0,
    label_smoothing: float = 0.1,
    forward: nn.Module | None = None,
) -> StepResult:
    """One step of Algorithm 1: `kind="w"` updates the weights, `"theta"` the θ logits;
    the other group is frozen (requires_grad off) and stays bit-identical. `forward`:
    `model` wrapped in DDP, whose backward averages the gradients over the ranks (the
    frozen group, absent from the graph, is left without gradients on every rank)."""
    if kind == "w":
        params, optimizer, scaler = model.weight_parameters(), opts.w, opts.w_scaler
    elif kind == "theta" and opts.theta is not None:
        params, optimizer, scaler = model.arch_parameters(), opts.theta, opts.theta_scaler
    else:
        raise ValueError(f"cannot take a {kind!r} step with this model")
    updated = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in updated)
    running_stats = None
    model.zero_grad(set_to_none=True)
    try:  # the gradient: an out-of-memory error here leaves nothing to undo (StepOutOfMemory)
        running_stats = save_buffers(model) if kind == "theta" else None
        with amp.autocast():
            logits = (forward or model)(images, meta)
            loss = task_loss(logits, labels, label_smoothing)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        model.zero_grad(set_to_none=True)
        if running_stats is not None:
            restore_buffers(*running_stats)
        raise StepOutOfMemory(kind, int(labels.shape[0])) from err
    scaler.step(optimizer)
    scaler.update()
    if kind == "theta":
        model.mark_prune_mask_stale()  # the host's copy follows at the next read
    if running_stats is not None:
        restore_buffers(*running_stats)
    return StepResult(
        loss_on_device=loss.detach(),
        correct_on_device=(logits.detach().argmax(1) == labels).sum(),
        grad_norm_on_device=grad_norm.detach(),
        samples=int(labels.shape[0]),
    )


BufferSnapshot = tuple[list[list[Tensor]], list[list[Tensor]]]


@torch.no_grad()
def save_buffers(model: nn.Module) -> BufferSnapshot:
    """A copy of every buffer (BatchNorm running statistics, batch counters), to put back
    with `restore_buffers`: one foreach clone per (device, dtype) group, not a kernel per
    buffer (a 5-cell supernet has ~540 buffers: fp32 statistics and int64 counters)."""
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for buffer in model.buffers():
        groups.setdefault((buffer.device, buffer.dtype), []).append(buffer)
    buffers = list(groups.values())
    return buffers, [torch._foreach_clone(group) for group in buffers]


@torch.no_grad()
def restore_buffers(buffers: list[list[Tensor]], saved: list[list[Tensor]]) -> None:
    """Put back what `save_buffers` copied, one foreach copy per group."""
    for group, copies in zip(buffers, saved, strict=True):
        torch._foreach_copy_(group, copies)


@dataclass(frozen=True)
class StepValues:
    """One step's numbers on the host, over all ranks (DDP made the gradient, hence
    `grad_norm`, the same on every rank already)."""

    loss: float
    correct: int
    samples: int
    grad_norm: float
    seconds: float  # the step's share of its window's wall time
    alpha_entropy: float | None


@dataclass
class StepWindow:
    """The steps taken since the last read, their results still on the device.

    `read` copies them to the host with one sync and sums them over the ranks with one
    collective (every rank reads at the same steps). Each step gets the window's mean wall
    time: the host only learns when the device finished at the read, so a step's own
    host time would say when its kernels were queued, not how long they ran."""

    steps: list[tuple[Any, StepResult, Tensor | None]] = field(default_factory=list)
    started: float | None = None  # perf_counter when the window's first step began

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, info: Any, result: StepResult, alpha_entropy: Tensor | None, started: float):
        """One step: `info` (whatever the caller wants back with it), its result and the
        mean α entropy after it (a 0-d tensor, None without θ)."""
        if self.started is None:
            self.started = started
        self.steps.append((info, result, alpha_entropy))

    def read(self, dist: Dist) -> list[tuple[Any, StepValues]]:
        """Every step's (info, values), in order; empties the window."""
        if not self.steps:
            return []
        infos, results, entropies = zip(*self.steps, strict=True)
        columns = [
            torch.stack([r.loss_on_device.float() for r in results]),
            torch.stack([r.correct_on_device for r in results]).float(),
            torch.stack([r.grad_norm_on_device.float() for r in results]),
        ]
        if entropies[0] is not None:
            columns.append(torch.stack(entropies))
        host = torch.stack(columns).double().tolist()  # the one host sync of the window
        losses, correct, norms = host[:3]
        entropy = host[3] if len(host) > 3 else [None] * len(results)
        samples = [r.samples for r in results]
        if dist.enabled:
            n = len(results)
            sums = dist.sum(
                [lo * s for lo, s in zip(losses, samples, strict=True)] + correct + samples
            )
            correct, samples = sums[n : 2 * n], [int(s) for s in sums[2 * n :]]
            losses = [total / s for total, s in zip(sums[:n], samples, strict=True)]
        seconds = (time.perf_counter() - self.started) / len(results)
        self.steps, self.started = [], None
        return [
            (info, StepValues(loss, int(c), s, norm, seconds, h))
            for info, loss, c, s, norm, h in zip(
                infos, losses, correct, samples, norms, entropy, strict=True
            )
        ]


def to_device(batch: Batch, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The batch on `device`; uint8 images are normalised there, after the copy."""
    images = batch.images.to(device, non_blocking=True)
    return (
        normalize_images(images) if images.dtype == torch.uint8 else images,
        batch.meta.to(device, non_blocking=True),
        batch.labels.to(device, non_blocking=True),
    )
