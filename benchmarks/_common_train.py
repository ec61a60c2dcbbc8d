"""What the train-step benchmarks share: the model at paper scale, a synthetic batch of the
real shapes, the naive DARTS-style mixed ops they compare against, and pruning by θ.

Imported by bench_supernet_step.py and bench_gpu.py (`python benchmarks/<script>.py` puts
this folder on `sys.path`). Nothing here changes bionas: the naive mixed ops replace
`MixedOp.forward` only inside the benchmark process, through `mixed_op_variant`.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from bionas.trainer.cell import MixedOp, activation_dtype
from bionas.trainer.config import Amp, TrainConfig
from bionas.trainer.model import BioAutoMLNAS, ModelConfig, build_model
from bionas.trainer.ops import OP_NAMES, ZERO
from bionas.trainer.optimizers import Optimizers, build_optimizers
from bionas.trainer.step import StepResult, train_step

# Paper scale (SPEC §3, §6): 21 order classes; metadata fields dna_bin (324,411 values +
# unknown) and class (10 + unknown), the default non-leaking fields for target `order`.
NUM_CLASSES = 21
DNA_BINS = 324_412
CLASSES = 11

# Named sets of ops whose θ is pushed to PRUNED_THETA (α ~ e^-30 ~ 1e-13 < 1e-6) on every edge.
PRUNED_THETA = -30.0
PRUNE_SETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "dil": ("dil_conv_3x3", "dil_conv_5x5"),  # the two full dilated convs: the costliest ops
    "keep3": tuple(n for n in OP_NAMES if n not in ("dw_sep_3x3", "max_pool_3x3", "skip", ZERO)),
}


# ---- the baselines: DARTS-style mixed ops (every op, zero included, no pruning) ---------


def _all_ops(op: MixedOp) -> list[torch.nn.Module]:
    return [op.zero if name == ZERO else op.ops[name] for name in OP_NAMES]


def naive_sum_forward(
    self: MixedOp, x: Tensor, alpha_row: Tensor, active: Sequence[bool]
) -> Tensor:
    """quark0/darts `MixedOp.forward`: sum(w * op(x) for w, op in zip(weights, ops))."""
    return sum(w * op(x) for w, op in zip(alpha_row, _all_ops(self), strict=True))


def naive_stack_forward(
    self: MixedOp, x: Tensor, alpha_row: Tensor, active: Sequence[bool]
) -> Tensor:
    """Stack every op's output and weight it by a broadcast α: (stack * α).sum(0)."""
    outputs = torch.stack([op(x) for op in _all_ops(self)])
    return (outputs * alpha_row.view(-1, 1, 1, 1, 1)).sum(0)


def opwise_forward(self: MixedOp, x: Tensor, alpha_row: Tensor, active: Sequence[bool]) -> Tensor:
    """bionas before the stacked product: `out + α_k * o_k` op by op over the active ops,
    in the activation dtype (two kernels per op)."""
    dtype = activation_dtype(x)
    out = None
    for k, name in enumerate(OP_NAMES):
        if name == ZERO or not active[k]:
            continue
        term = self.ops[name](x).to(dtype) * alpha_row[k].to(dtype)
        out = term if out is None else out + term
    return self.zero(x).to(dtype) if out is None else out


def stacked_forward(self: MixedOp, x: Tensor, alpha_row: Tensor, active: Sequence[bool]) -> Tensor:
    """α[active] @ stack(active outputs) in the activation dtype: one tensordot per edge
    (bionas at 4b9d97a)."""
    dtype = activation_dtype(x)
    live = [k for k, name in enumerate(OP_NAMES) if name != ZERO and active[k]]
    if not live:
        return self.zero(x).to(dtype)
    outputs = [self.ops[OP_NAMES[k]](x).to(dtype) for k in live]
    weights = alpha_row.to(dtype)
    picked = torch.stack([weights[k] for k in live])
    return torch.tensordot(picked, torch.stack(outputs), dims=1)


VARIANTS: dict[str, Callable | None] = {
    "bionas": None,  # MixedOp.forward as shipped
    "opwise": opwise_forward,
    "stacked": stacked_forward,
    "naive-sum": naive_sum_forward,
    "naive-stack": naive_stack_forward,
}


@contextlib.contextmanager
def mixed_op_variant(name: str) -> Iterator[None]:
    """Run the block with `MixedOp.forward` replaced by the named variant."""
    forward = VARIANTS[name]
    original = MixedOp.forward
    if forward is not None:
        MixedOp.forward = forward
    try:
        yield
    finally:
        MixedOp.forward = original


# ---- model, optimisers, batch ------------------------------------------------------------


@dataclass(frozen=True)
class StepSetup:
    channels: int = 16
    cells: int = 5
    image_size: int = 224
    batch_size: int = 32
    dna_bins: int = DNA_BINS
    dilated: str = "full"
    prune: str = "none"
    seed: int = 0


def build(
    setup: StepSetup, device: torch.device, amp: Amp, *, dense_embeddings: bool = False
) -> tuple[BioAutoMLNAS, Optimizers]:
    """The supernet and Algorithm 1's optimisers, as `bionas train` builds them
    (`dense_embeddings`: every table dense, as `--sparse-embeddings off`)."""
    torch.manual_seed(setup.seed)
    cfg = ModelConfig(
        num_classes=NUM_CLASSES,
        meta_cardinalities=(("dna_bin", setup.dna_bins), ("class", CLASSES)),
        channels=setup.channels,
        cells=setup.cells,
        dilated=setup.dilated,
    )
    model = build_model(cfg).to(device)
    prune(model, PRUNE_SETS[setup.prune])
    model.train()
    # Algorithm 1's optimisers with the TrainConfig defaults (AdamW on w, Adam on θ)
    config = TrainConfig(dataset_dir=Path("."), run_dir=Path("."))
    lazy_fields = () if dense_embeddings else None
    return model, build_optimizers(model, config, amp, lazy_fields=lazy_fields)


def prune(model: BioAutoMLNAS, ops: Sequence[str]) -> None:
    """Push θ of `ops` far down on every edge, so their α falls below the 1e-6 threshold."""
    with torch.no_grad():
        for name in ops:
            model.theta[..., OP_NAMES.index(name)] = PRUNED_THETA


def synthetic_batch(setup: StepSetup, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Images, metadata indices and labels of the real shapes and dtypes."""
    g = torch.Generator().manual_seed(setup.seed + 1)
    n, s = setup.batch_size, setup.image_size
    images = torch.randn(n, 3, s, s, generator=g)
    meta = torch.stack(
        [
            torch.randint(setup.dna_bins, (n,), generator=g),
            torch.randint(CLASSES, (n,), generator=g),
        ],
        dim=1,
    )
    labels = torch.randint(NUM_CLASSES, (n,), generator=g)
    return images.to(device), meta.to(device), labels.to(device)


def step(
    model: BioAutoMLNAS,
    batch: tuple[Tensor, Tensor, Tensor],
    kind: str,
    opts: Optimizers,
    amp: Amp,
    sync: Callable[[], None] = lambda: None,
) -> tuple[float, StepResult]:
    """One real bionas `train_step`; (seconds, result)."""
    sync()
    start = time.perf_counter()
    result = train_step(model, *batch, kind, opts, amp)  # reads nothing on the host: `sync` waits
    sync()
    return time.perf_counter() - start, result


def sync(device: torch.device) -> None:
    """Wait for `device`'s queued work (a no-op on CPU, where the host is the device)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
