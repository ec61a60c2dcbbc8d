"""How a train step runs on its device, not what it computes.

    --compile auto|on|off        torch.compile (inductor) of the model's forward: the train
                                 steps' and evaluation's
    --channels-last auto|on|off  the model's weights and its input images in NHWC layout
    fused optimisers             chosen by device, no option (`bionas.trainer.optimizers`)

None of them changes the maths beyond float rounding (tests/test_compile_step.py and
tests/test_channels_last.py compare losses and parameters with the eager, contiguous
step), so both options may change on --resume (`match_state_layouts` then lays the
restored optimiser state out like the parameters), and what `auto` resolved to is
recorded in config.json (`step_options`).

`auto` follows measurements (benchmarks/bench_step_options.py: one process, same model
and batch; CPU: 2 shared cores, torch 1 thread, fp32; a 5-cell C=16 supernet at 64 px,
batch 16, dna_bin 324k rows, w + θ step pairs):

- channels_last: on on CPU: 1.26x, 1.26x and 1.36x the contiguous pair's speed in three
  runs (fused optimisers alone: 1.05x, 1.08x). CUDA: off until `benchmarks/bench_gpu.py`
  measures it (cuDNN's NHWC kernels tend to pay under fp16 autocast; unmeasured here).
- compile: off. On CPU the compiled pair ran 1.51x eager (1.73x with channels_last and
  fused, against 1.36x for channels_last alone), after 382 s of compiling before the first
  step (318 s with channels_last; more for the first evaluation, a graph of its own): on
  top of channels_last it saves ~38 ms a pair, so it pays back after ~8,500 pairs, longer
  than a CPU run (a demo, a test, a smoke run) goes. A long CPU run can say `--compile on`.
  CUDA: off until `benchmarks/bench_gpu.py` times compiled against eager steps.

torch.compile compiles `model.__call__` in place (`nn.Module.compile`), so the state dict,
checkpoints and `save_model` keep the plain module's keys (no `_orig_mod.` prefix), DDP
wraps the compiled module, and evaluation's `model(...)` runs compiled too. The forward
is one graph with no break (torch._dynamo.explain on a 2-cell supernet; the first forward,
which copies the prune mask to the host with `.tolist()`, breaks into 4 graphs). Which ops
run is the mask's host copy (`BioAutoMLNAS.sync_prune_mask`), a guard: when a read of the
steps prunes an op, the next steps recompile. w steps, θ steps (other parameters require
grad) and evaluation (eval mode, no grad) compile as separate graphs, as does a batch of a
new size (the epoch's last one; from the second size on, with a dynamic batch dimension).
Past torch._dynamo's recompile limit (8 variants of a frame) dynamo runs the forward
eager and warns: a long search that prunes ops at several reads gets there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bionas.trainer.config import TrainConfig
from bionas.trainer.optimizers import LazyRowsAdamW, fused_supported

log = logging.getLogger(__name__)

# `auto` per device type (see the module docstring for the measurements behind each)
AUTO_COMPILE = {"cpu": False, "cuda": False}
AUTO_CHANNELS_LAST = {"cpu": True, "cuda": False}
COMPILE_BACKEND = "inductor"  # torch.compile's default; tests swap in aot_eager (no C++ build)


@dataclass(frozen=True)
class StepOptions:
    """The step options as resolved for a run's device."""

    compile: bool = False
    channels_last: bool = False
    fused_optimizers: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_step_options(
    config: TrainConfig, model: nn.Module, device: torch.device
) -> StepOptions:
    """`--compile` and `--channels-last` (`auto` by device type, off on any other) and
    whether the optimisers are fused for `model`'s parameters."""
    return StepOptions(
        compile=_resolve(config.compile, AUTO_COMPILE, device),
        channels_last=_resolve(config.channels_last, AUTO_CHANNELS_LAST, device),
        fused_optimizers=fused_supported(model.parameters()),
    )


def _resolve(mode: str, auto: dict[str, bool], device: torch.device) -> bool:
    return auto.get(device.type, False) if mode == "auto" else mode == "on"


def apply_step_options(
    model: nn.Module, options: StepOptions, *, backend: str | None = None
) -> None:
    """Put `model` (on its device, optimisers built or not: parameters keep their
    identity) in channels_last and/or compile its forward in place with torch.compile's
    `backend` (default COMPILE_BACKEND)."""
    backend = backend or COMPILE_BACKEND
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
        model.register_forward_pre_hook(_images_channels_last)
    if options.compile:
        model.compile(backend=backend)
        log.info("forward compiled with torch.compile (%s); the first steps compile it", backend)


def match_state_layouts(*optimizers: torch.optim.Optimizer | None) -> None:
    """Lay each optimiser state tensor of its parameter's shape out like the parameter.

    After a --resume whose channels_last differs from the checkpoint's (changed, or `auto`
    resolved on another device type), load_state_dict casts the Adam moments' dtype and
    device but keeps the checkpoint's memory layout; CUDA's fused Adam kernel refuses
    parameters, gradients and states of different strides at the first step. Values are
    unchanged: `empty_like` keeps the parameter's strides, `copy_` the state's values."""
    for optimizer in _holding_state(optimizers):
        for param, state in optimizer.state.items():
            for name, value in list(state.items()):
                if (
                    isinstance(value, Tensor)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _holding_state(
    optimizers: Iterable[torch.optim.Optimizer | None],
) -> Iterator[torch.optim.Optimizer]:
    """The optimisers whose `state` holds the tensors: a LazyRowsAdamW's two parts."""
    for optimizer in optimizers:
        if isinstance(optimizer, LazyRowsAdamW):
            yield from (optimizer.dense, optimizer.sparse)
        elif optimizer is not None:
            yield optimizer


def _images_channels_last(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The images argument in channels_last: every caller (train steps, evaluation, the
    batch-size probe) gets it without converting its batches itself."""
    if not args or not isinstance(args[0], Tensor) or args[0].dim() != 4:
        return None
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
