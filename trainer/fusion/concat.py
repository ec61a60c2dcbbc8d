"""`concat`, the paper's fusion (eq. 11): ŷ = H(Concat[X_img, X_meta]).

Cost: the reference for the other fusions. Parameters (2D + 1)·D + (D + 1)·C: 135k at
D = 256 with C = 16 classes; as many multiply-adds per sample (0.27 MFLOPs), negligible
beside the image encoder (55 MFLOPs for 5 manual cells at 224 px).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bionas.trainer.fusion.base import Fusion, classifier_head


class ConcatFusion(Fusion):
    """ŷ = H(Concat[X_img, X_meta]) (eq. 11): 2 x 256 -> 512 -> head; image only without meta."""

    name = "concat"

    def __init__(
        self, embed_dim: int, num_classes: int, dropout: float, *, with_meta: bool = True
    ) -> None:
        super().__init__()
        self.with_meta = with_meta
        in_dim = 2 * embed_dim if with_meta else embed_dim
        self.head = classifier_head(in_dim, embed_dim, num_classes, dropout)

    def forward(
        self,
        img: Tensor,
        meta: Tensor | None,
        img_tokens: Tensor | None = None,
        meta_tokens: Tensor | None = None,
    ) -> Tensor:
        x = torch.cat([img, meta.to(img.dtype)], dim=1) if self.with_meta else img
        return self.head(x)
