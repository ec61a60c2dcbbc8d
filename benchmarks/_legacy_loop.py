"""The search loop's host-side behaviour when issue 14 was filed (bionas at 6c7ece1^): the
baseline that `bench_gpu_loop.py` measures today's loop against.

What it did around the same model forward (the mixed op and the model are today's; only the
loop's bookkeeping and the optimisers are the old ones):

- after every step, `float(loss)`, `int(correct)` and `float(grad_norm)` (three host syncs)
  and, after a θ step, the mean α entropy read as a float (one more);
- one steps.jsonl line appended per step (open + write + close);
- BatchNorm buffers saved and restored one tensor at a time around a θ step (`b.clone()`,
  `b.copy_(saved)`: ~540 small kernels each way for a 5-cell supernet);
- the prune mask copied to the host after every θ step (`.cpu().tolist()`: a sync);
- AdamW on every row of every embedding table (no lazy rows), Adam on θ, both torch's
  default implementation (foreach on CUDA, not fused), so GradScaler.step reads
  `found_inf` on the host (a sync per step under fp16).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from bionas.trainer.config import Amp, TrainConfig
from bionas.trainer.logs import mean_alpha_entropy
from bionas.trainer.model import BioAutoMLNAS
from bionas.trainer.optimizers import Optimizers
from bionas.trainer.step import task_loss


def legacy_optimizers(model: BioAutoMLNAS, amp: Amp) -> Optimizers:
    """AdamW on all of w and Adam on θ as bionas built them then (TrainConfig defaults)."""
    cfg = TrainConfig(dataset_dir=Path("."), run_dir=Path("."))
    # torch's default implementation (fused=None: foreach on CUDA; fused=False would force
    # the slower per-tensor loop there)
    w = torch.optim.AdamW(model.weight_parameters(), lr=cfg.lr_w, weight_decay=cfg.weight_decay_w)
    theta = torch.optim.Adam(
        model.arch_parameters(), lr=cfg.lr_theta, betas=cfg.theta_betas,
        weight_decay=cfg.weight_decay_theta,
    )  # fmt: skip
    scalers = [torch.amp.GradScaler("cuda", enabled=amp.loss_scaling) for _ in range(2)]
    return Optimizers(w, theta, *scalers)


def legacy_step(
    model: BioAutoMLNAS,
    batch: tuple[Tensor, Tensor, Tensor],
    kind: str,
    opts: Optimizers,
    amp: Amp,
    steps_log: Path,
    step: int,
) -> float:
    """One w or θ step with the old loop's bookkeeping; the loss, read on the host."""
    images, meta, labels = batch
    if kind == "w":
        params, optimizer, scaler = model.weight_parameters(), opts.w, opts.w_scaler
    else:
        params, optimizer, scaler = model.arch_parameters(), opts.theta, opts.theta_scaler
    updated = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in updated)
    running_stats = [(b, b.clone()) for b in model.buffers()] if kind == "theta" else []
    model.zero_grad(set_to_none=True)
    with amp.autocast():
        logits = model(images, meta)
        loss = task_loss(logits, labels)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    scaler.step(optimizer)
    scaler.update()
    if kind == "theta":
        model.mark_prune_mask_stale()
        model.sync_prune_mask()  # the old refresh: the mask copied to the host (a sync)
    with torch.no_grad():
        for buffer, saved in running_stats:
            buffer.copy_(saved)
    record = {
        "step": step,
        "kind": kind,
        "loss": float(loss.detach()),
        "correct": int((logits.detach().argmax(1) == labels).sum()),
        "grad_norm": float(grad_norm),
        "alpha_entropy": float(mean_alpha_entropy(model.alphas())),
    }
    with open(steps_log, "a") as f:
        f.write(json.dumps(record) + "\n")
    return record["loss"]
