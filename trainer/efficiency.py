"""Efficiency of a model (SPEC §6): parameters, size, FLOPs and multiply-adds, latency.

Conventions, written into the report so nobody has to guess:
- FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`, which counts
  convolutions and matrix products only, as 2 FLOPs per multiply-add; MACs (multiply-
  accumulates) = FLOPs / 2. Elementwise ops, pooling, BatchNorm, activations and
  embedding lookups are not counted. Tools and papers differ by this factor of 2 (the
  paper's "2.95 GFLOPs" does not say which), so both are reported.
- A supernet computes, and is counted for, every candidate op whose α is at or above the
  prune threshold; the derived fixed network (one op per edge) is reported beside it.
- Size is the bytes of the fp32 state_dict (floating tensors at 4 bytes per value,
  integer buffers at their own width); MB = 10^6 bytes.
- Latency is the median wall time of one forward at batch 1 under `torch.inference_mode`
  after warm-up runs; on CUDA each run is bracketed by `torch.cuda.synchronize()`.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)

FLOPS_CONVENTION = (
    "torch.utils.flop_counter.FlopCounterMode: convolutions and matmuls only; "
    "FLOPs = 2 x MACs (one multiply-add = 2 FLOPs); elementwise ops, pooling, "
    "BatchNorm, activations and embedding lookups not counted; one sample (batch 1)"
)
SIZE_CONVENTION = "bytes of the state_dict with floating tensors as fp32; MB = 10^6 bytes"
LATENCY_CONVENTION = "median of N forwards at batch 1 under torch.inference_mode, after warm-up"


@dataclass(frozen=True)
class FlopCount:
    flops: int
    macs: int
    by_operator: dict[str, int]  # aten op name -> FLOPs

    def to_json(self) -> dict[str, Any]:
        return {
            "flops": self.flops,
            "macs": self.macs,
            "gflops": self.flops / 1e9,
            "gmacs": self.macs / 1e9,
            "flops_by_operator": self.by_operator,
        }


def count_flops(module: nn.Module, *inputs: Any) -> FlopCount:
    """FLOPs and MACs of one forward of `module` on `inputs` (see FLOPS_CONVENTION)."""
    was_training, fastpath = module.training, torch.backends.mha.get_fastpath_enabled()
    module.eval()
    # nn.MultiheadAttention's fused inference kernel (eval + no_grad) is invisible to the
    # counter: torchvision ViTs would lose a third of their FLOPs. Same maths, counted path.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
        torch.backends.mha.set_fastpath_enabled(fastpath)
    flops = int(counter.get_total_flops())
    by_op = counter.get_flop_counts().get("Global", {})
    return FlopCount(
        flops=flops,
        macs=flops // 2,
        by_operator={str(op): int(n) for op, n in sorted(by_op.items(), key=str)},
    )


def parameter_count(module: nn.Module) -> dict[str, int]:
    """Per-component counts when the model offers `parameter_counts()`, else the total."""
    if hasattr(module, "parameter_counts"):
        return dict(module.parameter_counts())
    return {"total": sum(p.numel() for p in module.parameters())}


def state_dict_bytes(module: nn.Module) -> int:
    """Bytes of the state_dict with every floating tensor counted as fp32."""
    total = 0
    for tensor in module.state_dict().values():
        width = 4 if tensor.is_floating_point() else tensor.element_size()
        total += tensor.numel() * width
    return total


def median_latency_ms(
    module: nn.Module,
    inputs: tuple[Any, ...],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    runs: int = 20,
) -> float:
    """Median milliseconds per forward of `inputs` on `device` (module is not changed)."""
    device = torch.device(device)
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    model = module if _on(module, device) else copy.deepcopy(module).to(device)
    was_training = model.training
    model.eval()
    inputs = tuple(x.to(device) if isinstance(x, Tensor) else x for x in inputs)
    sync = torch.cuda.synchronize if device.type == "cuda" else _no_sync
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + runs):
                sync()
                start = time.perf_counter()
                model(*inputs)
                sync()
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1e3)
    finally:
        model.train(was_training)
    return statistics.median(times)


def example_inputs(model: nn.Module, image_size: int) -> tuple[Tensor, Tensor]:
    """One image [1, 3, S, S] and its metadata indices [1, F] (all unknown)."""
    fields = getattr(getattr(model, "cfg", None), "meta_cardinalities", ())
    images = torch.zeros(1, 3, image_size, image_size)
    return images, torch.zeros(1, len(fields), dtype=torch.long)


def efficiency_report(
    model: nn.Module,
    image_size: int,
    *,
    genotype: Any = None,
    latency_runs: int = 20,
    latency_warmup: int = 3,
    cuda: bool | None = None,
    build_fixed: Callable[[Any], nn.Module] | None = None,
) -> dict[str, Any]:
    """Parameters, size, FLOPs/MACs, and latency on CPU (and CUDA when present).

    With a `genotype` and a supernet, the derived fixed network is measured too; it is
    built by `build_fixed(genotype)` (default: the model's config with that genotype).
    """
    inputs = example_inputs(model, image_size)
    report: dict[str, Any] = {
        "image_size": image_size,
        "conventions": {
            "flops": FLOPS_CONVENTION,
            "size": SIZE_CONVENTION,
            "latency": LATENCY_CONVENTION,
        },
        "model": _static_costs(model, inputs),
    }
    if _is_supernet(model):
        report["model"]["scope"] = (
            "supernet: counts every candidate op whose α >= prune threshold "
            f"({_pruned_ops(model)} ops pruned at this θ)"
        )
    elif getattr(getattr(model, "cfg", None), "backbone", None):
        report["model"]["scope"] = (
            f"backbone {model.cfg.backbone} (torchvision) + metadata + fusion"
        )
    else:
        report["model"]["scope"] = "fixed network (one op per edge)"
    if genotype is not None and _is_supernet(model):
        fixed = (build_fixed or _fixed_network(model))(genotype)
        report["derived"] = _static_costs(fixed, inputs)
        report["derived"]["scope"] = "fixed network of the derived genotype (argmax op per edge)"
    report["latency_ms"] = latency_report(
        model, inputs, runs=latency_runs, warmup=latency_warmup, cuda=cuda
    )
    return report


def latency_report(
    model: nn.Module,
    inputs: tuple[Any, ...],
    *,
    runs: int = 20,
    warmup: int = 3,
    cuda: bool | None = None,
) -> dict[str, Any]:
    """{"cpu": {...}, "cuda": {...} or None}: median ms at batch 1."""
    cpu_ms = median_latency_ms(model, inputs, device="cpu", runs=runs, warmup=warmup)
    result: dict[str, Any] = {
        "batch_size": 1,
        "cpu": {"median_ms": cpu_ms, "runs": runs, "threads": torch.get_num_threads()},
        "cuda": None,
    }
    if cuda is None:
        cuda = torch.cuda.is_available()
    if cuda:
        cuda_ms = median_latency_ms(model, inputs, device="cuda", runs=runs, warmup=warmup)
        result["cuda"] = {
            "median_ms": cuda_ms,
            "runs": runs,
            "device": torch.cuda.get_device_name(),
        }
    return result


def _static_costs(model: nn.Module, inputs: tuple[Any, ...]) -> dict[str, Any]:
    size = state_dict_bytes(model)
    return {
        "parameters": parameter_count(model),
        "size_bytes": size,
        "size_mb": size / 1e6,
        **count_flops(model, *inputs).to_json(),
    }


def _is_supernet(model: nn.Module) -> bool:
    return getattr(model, "theta", None) is not None


def _pruned_ops(model: nn.Module) -> int:
    return int(model.pruned_op_count()) if hasattr(model, "pruned_op_count") else 0


def _fixed_network(model: nn.Module) -> Callable[[Any], nn.Module]:
    from bionas.trainer.model import build_model

    def build(genotype: Any) -> nn.Module:
        return build_model(replace(model.cfg, genotype=genotype)).eval()

    return build


def _on(module: nn.Module, device: torch.device) -> bool:
    first = next(module.parameters(), None)
    if first is None:
        return device.type == "cpu"
    return first.device.type == device.type


def _no_sync() -> None:
    return None
