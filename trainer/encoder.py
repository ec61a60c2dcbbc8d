"""The image encoder: stem, a stack of cells, global average pooling -> 256-d embedding.

Stem: two 3x3 conv (stride 2) -> BN -> ReLU blocks, so a 224 px image enters the first
cell at 56 px; the supernet evaluates nine ops on three edges per cell, and at 112 px that
would not fit a 12 GB card at useful batch sizes.

Reductions sit at cells // 3 and 2 * cells // 3 as in DARTS (5 cells: cells 1 and 3), so
the default network sees 56 -> 28 -> 14 px with 16 -> 32 -> 64 channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torch.nn.utils import parametrize

from bionas.trainer.cell import FixedCell, SearchCell
from bionas.trainer.genotype import Genotype
from bionas.trainer.ops import OP_NAMES


def reduction_flags(cells: int) -> tuple[bool, ...]:
    """DARTS' placement: reduction cells at cells // 3 and 2 * cells // 3."""
    at = {cells // 3, 2 * cells // 3}
    return tuple(i in at for i in range(cells))


STEMS = ("learned", "transpose_symmetric")


class TransposeSymmetric(nn.Module):
    """A parametrization: kernel w -> (w + wᵀ)/2 over its two spatial axes."""

    def forward(self, weight: Tensor) -> Tensor:
        return (weight + weight.transpose(-1, -2)) / 2


def stem(channels: int, kind: str = "learned") -> nn.Sequential:
    """Two 3x3 conv (stride 2) -> BN -> ReLU: 224 px -> 56 px.

    `transpose_symmetric` constrains both kernels to w = wᵀ, so the stem cannot tell a
    structure from its mirror image across the diagonal (x <-> y): a control for
    architecture-search experiments (`bionas synth --task pairs`), where only the searched
    cells may see orientation. A free 3x3 stem can learn detectors that fire beside a dot
    in a chosen direction, and then pooling cells solve orientation tasks as well as
    convolutions do (measured: 100% either way).
    """
    if kind not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {kind!r}")
    convs = [
        nn.Conv2d(3, channels, 3, stride=2, padding=1, bias=False),
        nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
    ]
    if kind == "transpose_symmetric":
        for conv in convs:
            parametrize.register_parametrization(conv, "weight", TransposeSymmetric())
    return nn.Sequential(
        convs[0], nn.BatchNorm2d(channels), nn.ReLU(),
        convs[1], nn.BatchNorm2d(channels), nn.ReLU(),
    )  # fmt: skip


class ImageEncoder(nn.Module):
    """Stem -> cells -> GAP -> Linear; a supernet, or a fixed net when given a genotype.

    The architecture logits θ are not held here but by the model, which passes α and
    the prune mask into `forward` (a fixed network takes neither).
    """

    def __init__(
        self,
        channels: int = 16,
        cells: int = 5,
        embed_dim: int = 256,
        *,
        dilated: str = "full",
        genotype: Genotype | None = None,
        search_bn_affine: bool = False,
        stem_kind: str = "learned",
        ops: Sequence[str] | None = None,  # the supernet's primitive set (None: all ten)
    ) -> None:
        super().__init__()
        self.searchable = genotype is None
        flags = reduction_flags(cells) if genotype is None else genotype.reduction_flags
        self.reduction_flags = flags
        self.stem = stem(channels, stem_kind)
        self.cells = nn.ModuleList()
        C = channels
        for i, reduction in enumerate(flags):
            if genotype is None:
                cell: nn.Module = SearchCell(
                    C, reduction, dilated=dilated, affine=search_bn_affine, ops=ops or OP_NAMES
                )
            else:
                cell = FixedCell(C, genotype.cells[i], dilated=dilated)
            self.cells.append(cell)
            C = cell.C_out
        self.stage_channels = tuple(cell.C_out for cell in self.cells)  # for FiLM (fusion)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Linear(C, embed_dim)

    def forward(
        self,
        images: Tensor,
        alphas: Tensor | None = None,
        active: Sequence[Sequence[Sequence[bool]]] | None = None,
    ) -> Tensor:
        """images: [B, 3, H, W]; alphas: [cells, 3, K] and active: the host-side mask
        (supernet only). Returns [B, embed_dim]."""
        return self.forward_head(self.forward_features(images, alphas, active))

    def forward_features(
        self,
        images: Tensor,
        alphas: Tensor | None = None,
        active: Sequence[Sequence[Sequence[bool]]] | None = None,
        *,
        after_cell: Callable[[int, Tensor], Tensor] | None = None,
    ) -> Tensor:
        """The last cell's feature map [B, C, h, w]. `after_cell(i, x)` (progressive
        fusion's FiLM) replaces cell i's output; None leaves the network untouched."""
        x = self.stem(images)
        for i, cell in enumerate(self.cells):
            x = cell(x, alphas[i], active[i]) if self.searchable else cell(x)
            if after_cell is not None:
                x = after_cell(i, x)
        return x

    def forward_head(self, features: Tensor) -> Tensor:
        """GAP -> Linear: [B, C, h, w] -> [B, embed_dim]."""
        return self.proj(self.pool(features).flatten(1))

    def tokens(self, features: Tensor) -> Tensor:
        """One token per feature-map position, by the same Linear: [B, h*w, embed_dim].
        Their mean is `forward_head(features)` (the projection is linear)."""
        return self.proj(features.flatten(2).transpose(1, 2))
