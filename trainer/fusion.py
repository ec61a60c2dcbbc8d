"""Fusion of the image and metadata embeddings, and the classification head (eq. 11).

`FUSIONS` maps a name to a module class built as `cls(embed_dim, num_classes, dropout,
with_meta=...)`; `forward(img, meta)` takes meta=None when there are no metadata fields.
`concat` is the paper's fusion; `gated` is one of the ablation's alternatives.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def classifier_head(in_dim: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """H in eq. (11): Linear(in, hidden) -> ReLU -> Dropout(p) -> Linear(hidden, classes)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class ConcatFusion(nn.Module):
    """ŷ = H(Concat[X_img, X_meta]) (eq. 11): 2 x 256 -> 512 -> head; image only without meta."""

    def __init__(
        self, embed_dim: int, num_classes: int, dropout: float, *, with_meta: bool = True
    ) -> None:
        super().__init__()
        self.with_meta = with_meta
        in_dim = 2 * embed_dim if with_meta else embed_dim
        self.head = classifier_head(in_dim, embed_dim, num_classes, dropout)

    def forward(self, img: Tensor, meta: Tensor | None) -> Tensor:
        x = torch.cat([img, meta.to(img.dtype)], dim=1) if self.with_meta else img
        return self.head(x)


class GatedFusion(nn.Module):
    """h = g ⊙ X_img + (1 - g) ⊙ X_meta with g = σ(W [X_img, X_meta]), then the head.

    A per-feature learned gate: the network can lean on the image where the metadata is
    uninformative (e.g. an unknown dna_bin), and the other way round.
    """

    def __init__(
        self, embed_dim: int, num_classes: int, dropout: float, *, with_meta: bool = True
    ) -> None:
        super().__init__()
        self.with_meta = with_meta
        self.gate = nn.Linear(2 * embed_dim, embed_dim) if with_meta else None
        self.head = classifier_head(embed_dim, embed_dim, num_classes, dropout)

    def forward(self, img: Tensor, meta: Tensor | None) -> Tensor:
        if self.gate is None:
            return self.head(img)
        meta = meta.to(img.dtype)
        g = torch.sigmoid(self.gate(torch.cat([img, meta], dim=1)))
        return self.head(g * img + (1 - g) * meta)


FUSIONS: dict[str, type[nn.Module]] = {"concat": ConcatFusion, "gated": GatedFusion}
