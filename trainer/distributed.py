"""Training on several processes: torchrun's environment -> a process group, the model in
DistributedDataParallel, and the few collectives the loop needs (SPEC §7).

    torchrun --nproc-per-node N -m bionas train DS --out RUN          # one machine
    torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29400 --rdzv-id RUN -m bionas train DS --out RUN

torchrun starts the processes and tells each one its place through the environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): that is the interface of
`torch.distributed`, read once by `process_group`. Without torchrun (or with one process)
the run gets `SINGLE`, whose collectives do nothing, so the loop has one code path.

What runs where: every rank trains on its share of each epoch (the same number of batches
on every rank) and validates on its share; rank 0 alone writes logs, checkpoints, model.pt
and config.json and shows progress. The collectives: gradients (DDP, every step), each
step's loss/accuracy sums (so the logs are over all ranks), validation sums, BatchNorm
running statistics (averaged at the end of every epoch), the batch size (minimum over
ranks), and each rank's stream position and RNG state, gathered for the checkpoint.

How the alternating w / θ steps run under DDP (Algorithm 1). The model is wrapped once,
with every parameter (w and θ) registered, and every step - w or θ - goes through the
DDP forward, so every rank takes part in the same collectives at the same time (the kind
of step is a function of the batch index, which is the same on every rank). The step
freezes the other group with `requires_grad_(False)`, as on one process: the frozen
group is then not in the autograd graph, and DDP's unused-parameter detection
(`find_unused_parameters=True`, needed anyway for pruned ops and cut edges) marks it
unused on every rank, so its gradients stay None and only the active group's optimiser
steps: an even step leaves θ bit-identical, an odd step every weight. A θ step also
skips the weight-gradient computation. The price is that the buckets of frozen weights
are still all-reduced (as zeros) on θ steps. Two alternatives were rejected: running θ
steps on the bare module (or under `no_sync`) and all-reducing θ by hand leaves θ marked
"used" in DDP's reducer, which then fails the next w step where θ has no gradient; and
`skip_all_reduce_unused_params` would drop the wasted all-reduce but hangs when the set of
unused parameters differs between ranks (a prune mask decided on an α within one ulp of
the threshold), a risk not worth half the communication of θ steps.

BatchNorm buffers are not synchronised in forward (a train-mode forward normalises with
the batch's statistics; running statistics only matter for evaluation): each rank keeps
its own during the epoch, `average_buffers` makes them one set at the end of each epoch.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from bionas.errors import BionasError
from bionas.trainer.config import resolve_device
from bionas.trainer.model import BioAutoMLNAS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place among the ranks, and the collectives the loop uses; with one
    process every collective returns its input."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # of collectives

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes RUN_DIR and shows progress."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            ids = [self.local_rank] if self.device.type == "cuda" else None
            torch_dist.barrier(device_ids=ids)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over all ranks (float64: exact for counts below 2**53)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor)
        return tensor.tolist()

    def min(self, value: int) -> int:
        """The smallest `value` of all ranks."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MIN)
        return int(tensor.item())

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable, small), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(gathered, obj)
        return gathered

    def average_buffers(self, module: nn.Module) -> None:
        """Replace every floating-point buffer (BatchNorm running statistics) by its mean
        over the ranks; integer buffers (batches tracked) are equal on all ranks already."""
        if not self.enabled:
            return
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        if not buffers:
            return
        flat = torch.cat([b.detach().reshape(-1).to(self.device, torch.float64) for b in buffers])
        torch_dist.all_reduce(flat)
        flat /= self.world_size
        with torch.no_grad():
            for buffer, mean in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
                buffer.copy_(mean.view_as(buffer))


SINGLE = Dist()


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


@contextmanager
def process_group(device: str = "auto") -> Iterator[Dist]:
    """Join the process group torchrun describes in the environment (NCCL when training on
    CUDA, each rank on GPU LOCAL_RANK; gloo on CPU) for the duration; `SINGLE` without
    torchrun. `device` is the --device option."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield SINGLE
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    on = resolve_device(device)
    if on.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise BionasError(
                f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} "
                "visible GPU(s): start at most one process per GPU (--nproc-per-node)"
            )
        on = torch.device("cuda", local_rank)
        torch.cuda.set_device(on)
    backend = "nccl" if on.type == "cuda" else "gloo"
    torch_dist.init_process_group(backend, rank=rank, world_size=world_size)
    if rank == 0:
        log.info("process group: %d ranks, %s", world_size, backend)
    try:
        yield Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=on)
    finally:
        torch_dist.destroy_process_group()


def data_parallel(model: BioAutoMLNAS, dist: Dist) -> nn.Module:
    """What a train step calls forward on: `model` itself on one process, else `model` in
    DistributedDataParallel (see the module docstring for the w / θ steps)."""
    if not dist.enabled:
        return model
    for parameter in model.parameters():
        # DDP registers only what requires grad when it is built; a step freezes a group
        parameter.requires_grad_(True)
    accepted = inspect.signature(DistributedDataParallel.__init__).parameters
    # torch >= 2.13 renamed broadcast_buffers; either way: no buffer sync in forward
    no_buffer_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in accepted
        else {"broadcast_buffers": False}
    )
    # The supernet leaves the frozen group and pruned ops without gradients, a set that
    # changes from step to step; a fixed network's unused parameters (those before a cell
    # whose edges are all cut) are the same on every step: a static graph.
    searching = bool(model.arch_parameters())
    return DistributedDataParallel(
        model,
        device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
        find_unused_parameters=searching,
        static_graph=not searching,
        **no_buffer_sync,
    )


def fingerprint(tensors: Iterable[tuple[str, Tensor]]) -> str:
    """sha256 of named tensors' names, dtypes, shapes and bytes: equal on two ranks only
    when the tensors are bit-identical."""
    digest = hashlib.sha256()
    for name, tensor in tensors:
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def rank_seed(seed: int, rank: int, step: int) -> int:
    """A seed for rank `rank`'s own randomness (dropout) from step `step` on: the model is
    built from `seed` on every rank, the ranks' dropout masks must differ."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{rank}/{step}".encode()).digest()[:4], "big")
