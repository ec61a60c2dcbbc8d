"""The searchable cell (eqs. 7-9) and the fixed cell built from a genotype.

A cell has one input x and two nodes: e1: x -> z1, e2a: x -> z2, e2b: z1 -> z2.

Channels: the ops on every edge keep the cell's input width C; the output 1x1 conv maps
concat[z1, z2] (2C channels, eq. 9) to C_out, which is C in a normal cell and 2C in a
reduction cell. So a reduction cell doubles the width in its output conv, after its
edges have already halved the resolution (x -> z1 and x -> z2 at stride 2), and its ops
run on C channels at the low resolution: the cheapest place to do it.

`FixedCell` uses the same module names as `SearchCell` (`e1.ops.<op>`, `out`), so the
weights of the chosen ops can be copied from a supernet's state_dict.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bionas.trainer.genotype import CellGenotype
from bionas.trainer.ops import OP_NAMES, PRIMITIVES, ZERO, Zero

NONZERO_OPS: tuple[str, ...] = tuple(n for n in OP_NAMES if n != ZERO)


def edge_strides(reduction: bool) -> dict[str, int]:
    """Edges leaving x downsample in a reduction cell; z1 -> z2 is already downsampled."""
    s = 2 if reduction else 1
    return {"e1": s, "e2a": s, "e2b": 1}


class MixedOp(nn.Module):
    """One edge of the supernet: Σ_k α_k o_k(x) over the non-zero ops (eq. 7).

    The zero op is never computed; only its logit counts, through the softmax. The ops'
    BatchNorm has no learnable affine by default (DARTS): with a learnable γ, an op could
    scale its own output up as its α shrinks, and α would stop measuring the op's worth.
    """

    def __init__(
        self,
        C: int,
        stride: int,
        *,
        dilated: str = "full",
        affine: bool = False,
        ops: Sequence[str] = OP_NAMES,
    ) -> None:
        super().__init__()
        # only the ops of the search's primitive set (`--ops`) are built and weighted
        self.ops = nn.ModuleDict(
            {
                n: PRIMITIVES[n](C, stride, dilated=dilated, affine=affine)
                for n in NONZERO_OPS
                if n in ops
            }
        )
        self.zero = Zero(stride)

    def forward(self, x: Tensor, alpha_row: Tensor, active: Sequence[bool]) -> Tensor:
        """alpha_row: α in `OP_NAMES` order (fp32), 0 where the op is pruned; active: which
        ops to launch, same order, a host list the model refreshes only where the host
        waits for the device anyway (`BioAutoMLNAS.sync_prune_mask`), so it may still
        launch an op pruned since, whose α of 0 keeps the sum exact.

        Accumulates op by op in the activation dtype, `out += α_k o_k` as one fused
        multiply-add per op, with α cast once per edge. Stacking the outputs costs a
        second copy of them while the stack is built (measured on an H100: up to 14% more
        peak memory, no faster), and multiplying a stack by a broadcast fp32 α promotes
        the product to fp32 under AMP.
        """
        dtype = activation_dtype(x)
        weights: Tensor | None = None
        out: Tensor | None = None
        for k, name in enumerate(OP_NAMES):
            if name == ZERO or not active[k] or name not in self.ops:
                continue  # pruned (α < threshold) or outside the op set: not executed
            if weights is None:
                weights = alpha_row.to(dtype)
            y = self.ops[name](x).to(dtype)  # pools/skip keep x's dtype, convs autocast
            out = y * weights[k] if out is None else torch.addcmul(out, y, weights[k])
        return self.zero(x).to(dtype) if out is None else out


def activation_dtype(x: Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for x's device, else x's own dtype."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class SearchCell(nn.Module):
    """The searchable cell; `C` is the input width, output width is `C_out`."""

    def __init__(
        self,
        C: int,
        reduction: bool,
        *,
        dilated: str = "full",
        affine: bool = False,
        ops: Sequence[str] = OP_NAMES,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.C_out = 2 * C if reduction else C
        strides = edge_strides(reduction)
        self.e1 = MixedOp(C, strides["e1"], dilated=dilated, affine=affine, ops=ops)
        self.e2a = MixedOp(C, strides["e2a"], dilated=dilated, affine=affine, ops=ops)
        self.e2b = MixedOp(C, strides["e2b"], dilated=dilated, affine=affine, ops=ops)
        self.out = output_conv(C, self.C_out)

    def forward(self, x: Tensor, alphas: Tensor, active: Sequence[Sequence[bool]]) -> Tensor:
        """alphas: [3, K] α rows for (e1, e2a, e2b); active: the matching host-side mask."""
        z1 = self.e1(x, alphas[0], active[0])  # eq. (7)
        z2 = self.e2a(x, alphas[1], active[1]) + self.e2b(z1, alphas[2], active[2])  # eq. (8)
        return self.out(torch.cat([z1, z2], dim=1))  # eq. (9), then 1x1 conv to C_out


def output_conv(C: int, C_out: int) -> nn.Sequential:
    """1x1 conv(concat[z1, z2]) -> BN -> ReLU: 2C -> C_out channels (after eq. 9)."""
    return nn.Sequential(nn.Conv2d(2 * C, C_out, 1, bias=False), nn.BatchNorm2d(C_out), nn.ReLU())


class FixedEdge(nn.Module):
    """One op on one edge; an edge whose op is zero is cut and outputs zeros."""

    def __init__(self, C: int, stride: int, op: str, *, dilated: str = "full") -> None:
        super().__init__()
        self.op_name = op
        self.ops = nn.ModuleDict()
        if op != ZERO:
            self.ops[op] = PRIMITIVES[op](C, stride, dilated=dilated)
        self.zero = Zero(stride)

    def forward(self, x: Tensor) -> Tensor:
        if self.op_name == ZERO:
            return self.zero(x)
        return self.ops[self.op_name](x)


class FixedCell(nn.Module):
    """The cell of a derived architecture: z1 = o1(x), z2 = o2a(x) + o2b(z1)."""

    def __init__(self, C: int, genotype: CellGenotype, *, dilated: str = "full") -> None:
        super().__init__()
        self.reduction = genotype.reduction
        self.C_out = 2 * C if self.reduction else C
        strides = edge_strides(self.reduction)
        self.e1 = FixedEdge(C, strides["e1"], genotype.op("e1"), dilated=dilated)
        self.e2a = FixedEdge(C, strides["e2a"], genotype.op("e2a"), dilated=dilated)
        self.e2b = FixedEdge(C, strides["e2b"], genotype.op("e2b"), dilated=dilated)
        self.out = output_conv(C, self.C_out)

    def forward(self, x: Tensor) -> Tensor:
        z1 = self.e1(x)  # eq. (7) with one op
        z2 = self.e2a(x) + self.e2b(z1)  # eq. (8) with one op per edge
        return self.out(torch.cat([z1, z2], dim=1))  # eq. (9)
