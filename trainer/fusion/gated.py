"""`gated`: h = g ⊙ X_img + (1 - g) ⊙ X_meta with g = σ(W [X_img, X_meta]), then H.

A per-feature learned gate: the network can lean on the image where the metadata is
uninformative (e.g. an unknown dna_bin), and the other way round. Without metadata it is
the image-only head (as it always was).

Cost vs concat: the gate adds 2D·D parameters and the head's input halves (D instead of
2D): 201k parameters, 1.5x concat's at D = 256, C = 16; +0.13 MFLOPs per sample.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bionas.trainer.fusion.base import Fusion, classifier_head


class GatedFusion(Fusion):
    """h = g ⊙ X_img + (1 - g) ⊙ X_meta, g = σ(W [X_img, X_meta]) per feature, then H."""

    name = "gated"

    def __init__(
        self, embed_dim: int, num_classes: int, dropout: float, *, with_meta: bool = True
    ) -> None:
        super().__init__()
        self.with_meta = with_meta
        self.gate = nn.Linear(2 * embed_dim, embed_dim) if with_meta else None
        self.head = classifier_head(embed_dim, embed_dim, num_classes, dropout)

    def forward(
        self,
        img: Tensor,
        meta: Tensor | None,
        img_tokens: Tensor | None = None,
        meta_tokens: Tensor | None = None,
    ) -> Tensor:
        if self.gate is None:
            return self.head(img)
        meta = meta.to(img.dtype)
        g = torch.sigmoid(self.gate(torch.cat([img, meta], dim=1)))
        return self.head(g * img + (1 - g) * meta)
