"""`progressive`: metadata injected at every depth of the image encoder (FiLM), then concat.

After each cell i (channels C_i) the image encoder calls the fusion's hook:

    x_i <- x_i ⊙ (1 + γ_i) + β_i,   [γ_i; β_i] = W_i X_meta + b_i      (FiLM, Perez et al. 2018)
    ŷ = H(Concat[X_img, X_meta])                                          (as concat)

W_i, b_i start at zero, so training starts from the concat network and learns how far the
metadata should steer each stage's features (e.g. a dna_bin that suggests what to look
for). Needs the searched encoder's cells: refused with a backbone, and without metadata.
Cost vs concat: + Σ_i 2·C_i·(D + 1) parameters (107k with 5 cells of 16/32/32/64/64
channels at D = 256): 242k, 1.8x concat's; +0.2 MFLOPs for γ, β and one multiply-add
per feature-map element per cell.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bionas.trainer.fusion.base import AfterCell, Fusion, classifier_head


class ProgressiveFusion(Fusion):
    """FiLM of every cell's output by the metadata embedding, then concat's head."""

    name = "progressive"
    conditions_encoder = True
    needs_meta = True

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        dropout: float,
        *,
        with_meta: bool = True,
        stage_channels: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.check_meta(with_meta)
        self.film = nn.ModuleList(nn.Linear(embed_dim, 2 * c) for c in stage_channels)
        for layer in self.film:  # identity at the start: γ = β = 0
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.head = classifier_head(2 * embed_dim, embed_dim, num_classes, dropout)

    def after_cell(self, meta: Tensor | None) -> AfterCell | None:
        def film(i: int, x: Tensor) -> Tensor:
            gamma, beta = self.film[i](meta).to(x.dtype)[:, :, None, None].chunk(2, dim=1)
            return x * (1 + gamma) + beta

        return film

    def forward(
        self,
        img: Tensor,
        meta: Tensor | None,
        img_tokens: Tensor | None = None,
        meta_tokens: Tensor | None = None,
    ) -> Tensor:
        return self.head(torch.cat([img, meta.to(img.dtype)], dim=1))
