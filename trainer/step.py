"""One step of Algorithm 1 (a w step or a θ step), and moving a batch to the device.

`train_step` freezes the other parameter group, runs forward and loss under the AMP
policy, scales, unscales, clips the gradient norm, steps and puts back BatchNorm's
running statistics after a θ step (see `bionas.trainer.loop` for the whole algorithm).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bionas.trainer.config import Amp
from bionas.trainer.data import Batch
from bionas.trainer.distributed import Dist
from bionas.trainer.session import Optimizers
from bionas.trainer.transforms import normalize_images


@dataclass(frozen=True)
class StepResult:
    loss: float
    correct: int
    samples: int
    grad_norm: float  # before clipping


def over_all_ranks(result: StepResult, dist: Dist) -> StepResult:
    """The step's loss, correct count and samples over all ranks (DDP made the gradient,
    hence `grad_norm`, the same on all ranks already)."""
    if not dist.enabled:
        return result
    loss_sum, correct, samples = dist.sum([result.loss * result.samples, result.correct,
                                           result.samples])  # fmt: skip
    return replace(result, loss=loss_sum / samples, correct=int(correct), samples=int(samples))


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
    running_stats = [(b, b.clone()) for b in model.buffers()] if kind == "theta" else []
    model.zero_grad(set_to_none=True)
    with amp.autocast():
        logits = (forward or model)(images, meta)
        loss = task_loss(logits, labels, label_smoothing)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    if kind == "theta":
        model.refresh_prune_mask()  # θ changed: refresh here, not in the next forward
    with torch.no_grad():
        for buffer, saved in running_stats:
            buffer.copy_(saved)
    return StepResult(
        loss=float(loss.detach()),
        correct=int((logits.detach().argmax(1) == labels).sum()),
        samples=int(labels.shape[0]),
        grad_norm=float(grad_norm),
    )


def to_device(batch: Batch, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The batch on `device`; uint8 images are normalised there, after the copy."""
    images = batch.images.to(device, non_blocking=True)
    return (
        normalize_images(images) if images.dtype == torch.uint8 else images,
        batch.meta.to(device, non_blocking=True),
        batch.labels.to(device, non_blocking=True),
    )
