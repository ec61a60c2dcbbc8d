"""A tiny supernet and fixed batches for the step tests (compile, channels_last, fused
optimisers): 1 cell, C=4, 16 px, no dropout (a compiled forward draws its own random
numbers, not eager's)."""

from __future__ import annotations

import torch

from bionas.trainer.model import ModelConfig, build_model


def supernet():
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=3, meta_cardinalities=(("dna_bin", 40), ("class", 3)),
                      channels=4, cells=1, embed_dim=16, meta_embed_dim=4, dropout=0.0)  # fmt: skip
    return build_model(cfg)


def batches(n: int, size: int = 4):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(size, 3, 16, 16, generator=g), torch.randint(0, 3, (size, 2), generator=g),
         torch.randint(0, 3, (size,), generator=g))
        for _ in range(n)
    ]  # fmt: skip
