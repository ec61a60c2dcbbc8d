"""Multi-head attention and a pre-norm transformer block, shared by the attention fusions.

Written out (matmul + softmax) rather than `nn.MultiheadAttention`, whose eval-time fast
path is a different kernel from the training path and is not what the exporters see;
this one is the same graph in training, evaluation, TorchScript and ONNX.
"""

from __future__ import annotations

import math

from torch import Tensor, nn


def attention_heads(dim: int, most: int = 4) -> int:
    """The most heads (<= `most`) that divide `dim`: 4 at the default D = 256."""
    return next(h for h in range(most, 0, -1) if dim % h == 0)


class Attention(nn.Module):
    """softmax(Q Kᵀ / √d_h) V per head (Vaswani et al. 2017), queries from `x`, keys and
    values from `context`: [B, N, D], [B, M, D] -> [B, N, D]."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, 1.0 / math.sqrt(dim // heads)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        # [B, N, D] -> [B, H, N, d_h]; no Python sizes, so the batch and N stay dynamic.
        # q is scaled before the product, which then stays in fp16's range under AMP.
        q = (self.q(x) * self.scale).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k, v = self.kv(context).unflatten(-1, (2, self.heads, -1)).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.out((weights @ v).transpose(1, 2).flatten(2))


class TransformerBlock(nn.Module):
    """Pre-norm encoder block: x + Attn(LN x), then x + MLP(LN x), MLP width 2D."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h)
        return x + self.mlp(self.norm2(x))
