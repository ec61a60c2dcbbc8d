"""The w optimiser: AdamW, with the rows of large embedding tables updated lazily.

A batch looks up at most B rows of each metadata table, but AdamW steps every row of
every table on every w step: decoupled weight decay shrinks rows no batch has seen, stale
momentum keeps moving them, and a 324k-row `dna_bin` table (BIOSCAN-5M) costs ~115 ms of a
one-thread CPU w step (BENCHMARKS, "Sparse embedding rows"). With `--sparse-embeddings` those tables
give row-sparse gradients and `torch.optim.SparseAdam` steps only the rows in the batch
(lazy Adam: their moments and the row itself change only when the row is looked up).

    off   AdamW on all of w (the paper's setting; what runs started before the option did)
    on    every metadata table lazy
    auto  tables of >= AUTO_SPARSE_ROWS rows lazy, smaller ones dense (the default)

Lazy tables take --lr-w and AdamW's betas and eps, but no weight decay (SparseAdam has
none: decaying only the looked-up rows would decay a frequent value more than a rare one);
--weight-decay-w applies to the rest of w. Sparse gradients go through GradScaler's
unscale_ and clip_grad_norm_ (tested on CPU), but not through DDP here: its reducer fails
("Expected sparse gradient to be defined") when a step leaves a sparse table without a
gradient, as every θ step does (w is frozen), and NCCL has no sparse all-reduce. So on
several processes `auto` stays dense and `on` is refused.

Fused Adam/AdamW (`fused_supported`): one kernel steps every tensor of a group, and
GradScaler hands a fused optimiser its inf flag as a tensor (`found_inf`, which the kernel
reads on the device) instead of calling `found_inf.item()` before the step, so a loss-scaled
step never waits for the GPU. torch fuses only when asked; its CPU default is a per-tensor
loop, and fused made a CPU w + θ step pair of a 5-cell C=16 supernet 1.05-1.08x as fast
(benchmarks/bench_step_options.py), so it is fused there too. A checkpoint keeps the
implementation flags of the optimiser that wrote it; loading keeps the loader's own
(`_keep_own_implementation`), so fused and unfused runs resume each other's checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bionas.errors import BionasError
from bionas.trainer.config import PAPER_LR_THETA, SPARSE_EMBEDDINGS, Amp, TrainConfig
from bionas.trainer.distributed import SINGLE, Dist

if TYPE_CHECKING:
    from bionas.trainer.model import BioAutoMLNAS

# Measured on CPU (BENCHMARKS): lazy rows win from ~1k rows on (the table's step 11x faster
# at 16k rows, 39x at 64k, 540x at 324k), but below 2**16 rows the dense step is cheap (and
# one fused kernel on a GPU), so such a table keeps the paper's AdamW with weight decay.
AUTO_SPARSE_ROWS = 65_536
# Devices with fused Adam/AdamW kernels (torch.utils._foreach_utils lists more)
# that we use; elsewhere the optimisers keep torch's default implementation.
FUSED_DEVICES = ("cuda", "cpu")
# What selects an optimiser's implementation, not its maths (kept from the loader's own).
IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable")

log = logging.getLogger(__name__)


def sparse_fields(
    mode: str,
    vocab_sizes: Mapping[str, int],
    *,
    distributed: bool = False,
    rows: int = AUTO_SPARSE_ROWS,
) -> tuple[str, ...]:
    """The metadata fields whose tables are updated lazily under `--sparse-embeddings mode`;
    `distributed`: in DDP (which cannot take them, see the module docstring)."""
    if mode not in SPARSE_EMBEDDINGS:
        raise ValueError(f"--sparse-embeddings must be one of {SPARSE_EMBEDDINGS}, got {mode!r}")
    if mode == "off" or not vocab_sizes:
        return ()
    if distributed:
        if mode == "on":
            raise BionasError(
                "--sparse-embeddings on cannot train on several processes: DDP cannot reduce "
                "sparse embedding gradients that θ steps leave undefined. Use "
                "--sparse-embeddings off (or auto, which stays dense under torchrun)"
            )
        return ()
    return tuple(sorted(f for f, v in vocab_sizes.items() if mode == "on" or v >= rows))


class LazyRowsAdamW(torch.optim.Optimizer):
    """AdamW on the dense part of w and SparseAdam on the lazy tables, as one optimiser:
    a train step unscales, clips and steps `opts.w` as one, and a checkpoint stores both
    (`{"dense": ..., "sparse": ...}`). `param_groups` are the two optimisers' own, so a
    change of lr reaches both.

    With a fused dense part it takes GradScaler's `found_inf` like a fused AdamW: the dense
    step skips on the device. SparseAdam cannot skip on the device, so the sparse part
    reads `found_inf` on the host: one sync per loss-scaled w step remains with lazy tables
    (SparseAdam's coalescing of the row indices waits for the GPU anyway)."""

    def __init__(
        self,
        dense: list[nn.Parameter],
        sparse: list[nn.Parameter],
        lr: float,
        weight_decay: float,
        *,
        fused: bool = False,
    ) -> None:
        self.dense = adam(torch.optim.AdamW, dense, fused, lr=lr, weight_decay=weight_decay)
        self.sparse = torch.optim.SparseAdam(sparse, lr=lr)
        super().__init__([*dense, *sparse], {"lr": lr})
        self.param_groups = [*self.dense.param_groups, *self.sparse.param_groups]
        # GradScaler.step then sets `grad_scale` and `found_inf` on this optimiser
        self._step_supports_amp_scaling = fused

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)  # set unless unscale_ ran first
        found_inf = getattr(self, "found_inf", None)
        self.dense.grad_scale, self.dense.found_inf = grad_scale, found_inf
        try:
            self.dense.step()
        finally:
            del self.dense.grad_scale, self.dense.found_inf
        if found_inf is None or not found_inf.item():  # the sparse part's host sync
            if grad_scale is not None:
                for p in self.sparse.param_groups[0]["params"]:
                    if p.grad is not None:
                        p.grad = p.grad / grad_scale
            self.sparse.step()
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:  # type: ignore[override]
        if set(state_dict) != {"dense", "sparse"}:
            raise BionasError(
                "cannot restore the w optimiser: the checkpoint's was a dense AdamW, this run "
                "updates embedding rows lazily; resume with the run's own --sparse-embeddings"
            )
        self.dense.load_state_dict(state_dict["dense"])
        self.sparse.load_state_dict(state_dict["sparse"])


def fused_supported(params: Iterable[torch.Tensor]) -> bool:
    """Whether Adam/AdamW on these parameters can be fused (floating point, on a device
    of FUSED_DEVICES): then it is (see the module docstring)."""
    return all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)


def adam(
    kind: type[torch.optim.Optimizer], params: list[nn.Parameter], fused: bool, **hyper: Any
) -> torch.optim.Optimizer:
    """`kind` (Adam or AdamW) fused or with torch's default implementation (not
    `fused=False`: that forces the per-tensor loop even where torch would use foreach),
    restoring checkpoints from either."""
    optimizer = kind(params, fused=True if fused else None, **hyper)
    optimizer.register_load_state_dict_pre_hook(_keep_own_implementation)
    return optimizer


def _keep_own_implementation(
    optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]
) -> dict[str, Any]:
    """The checkpoint's param groups with this optimiser's implementation flags: torch's
    load_state_dict adopts the saved groups whole, and a fused optimiser given
    `fused: None` would still take GradScaler's `found_inf` but step without it."""
    groups = [
        {**saved, **{k: own[k] for k in IMPLEMENTATION_FLAGS if k in own}}
        for saved, own in zip(state_dict["param_groups"], optimizer.param_groups, strict=False)
    ]  # a count mismatch is load_state_dict's to report
    return {**state_dict, "param_groups": groups}


def build_w_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    fields: tuple[str, ...],
    *,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """AdamW on `model.weight_parameters()`; with lazy `fields`, a `LazyRowsAdamW` whose
    sparse part holds those fields' tables (switched to sparse gradients here: the two
    must agree, AdamW refuses a sparse gradient). `fused`: see `fused_supported`."""
    encoder = getattr(model, "metadata_encoder", None)
    lazy = encoder.use_sparse_gradients(fields) if encoder is not None else []
    if not lazy:
        params = model.weight_parameters()
        return adam(torch.optim.AdamW, params, fused, lr=lr, weight_decay=weight_decay)
    ids = {id(p) for p in lazy}
    dense = [p for p in model.weight_parameters() if id(p) not in ids]
    log.info("embedding rows updated lazily (SparseAdam, no weight decay): %s", ", ".join(fields))
    return LazyRowsAdamW(dense, lazy, lr, weight_decay, fused=fused)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors an optimiser keeps between steps (moments, step counts)."""
    optimizers = [optimizer]
    if isinstance(optimizer, LazyRowsAdamW):
        optimizers = [optimizer.dense, optimizer.sparse]
    return sum(
        t.numel() * t.element_size()
        for o in optimizers
        for per_param in o.state.values()
        for t in per_param.values()
        if isinstance(t, torch.Tensor)
    )


@dataclass
class Optimizers:
    w: torch.optim.Optimizer
    theta: torch.optim.Optimizer | None  # None for a fixed genotype
    w_scaler: torch.amp.GradScaler  # disabled unless fp16 autocast
    theta_scaler: torch.amp.GradScaler

    def stateful(self) -> dict[str, Any]:
        return {
            "w_optimizer": self.w,
            "theta_optimizer": self.theta,
            "w_scaler": self.w_scaler,
            "theta_scaler": self.theta_scaler,
        }


def build_optimizers(
    model: BioAutoMLNAS,
    config: TrainConfig,
    amp: Amp,
    lr_theta: float | None = None,
    lazy_fields: tuple[str, ...] | None = None,
    fused: bool | None = None,
) -> Optimizers:
    """AdamW on w (SparseAdam on lazily-updated embedding tables: `trainer.optimizers`);
    Adam (coupled L2, the paper's) or AdamW on θ with DARTS' betas (0.5, 0.999) by default
    (the paper gives none); one loss scaler each. `lr_theta`: θ's rate as resolved for the
    run (default: the config's, or the paper's for `auto`); `lazy_fields`: the tables
    updated lazily (default: `--sparse-embeddings` resolved on one process); `fused`:
    fused Adam/AdamW (default: wherever the parameters' device has them)."""
    if lazy_fields is None:
        lazy_fields = lazy_fields_for(config, model, SINGLE)
    if fused is None:
        fused = fused_supported(model.parameters())
    w = build_w_optimizer(model, config.lr_w, config.weight_decay_w, lazy_fields, fused=fused)
    theta = None
    if model.arch_parameters():
        kind = torch.optim.Adam if config.theta_optimizer == "adam" else torch.optim.AdamW
        theta = adam(
            kind,
            model.arch_parameters(),
            fused,
            lr=lr_theta or config.lr_theta or PAPER_LR_THETA,
            betas=config.theta_betas,
            weight_decay=config.weight_decay_theta,
        )
    scalers = [torch.amp.GradScaler("cuda", enabled=amp.loss_scaling) for _ in range(2)]
    return Optimizers(w, theta, *scalers)


def lazy_fields_for(config: TrainConfig, model: BioAutoMLNAS, dist: Dist) -> tuple[str, ...]:
    """`--sparse-embeddings` resolved for the model's tables (dense under DDP)."""
    encoder = model.metadata_encoder
    sizes = encoder.vocab_sizes() if encoder is not None else {}
    return sparse_fields(config.sparse_embeddings, sizes, distributed=dist.enabled)
