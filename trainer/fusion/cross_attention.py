"""`cross_attention`: image tokens attend to metadata tokens, and back, then the head H.

    I  = image tokens [B, N, D]: the last feature map, one token per position
    M  = [X_meta; field tokens] [B, 1 + F, D]
    I' = I + Attn(LN I, LN M)        (image queries metadata)
    M' = M + Attn(LN M, LN I')       (metadata queries the updated image)
    ŷ  = H(Concat[mean_n I'_n, M'_0])

With a backbone encoder (no feature map) I is the pooled embedding as one token.
Cost vs concat: two attention layers (4·D² + 4D each) on top of concat's head: 664k
parameters, 4.9x concat's at D = 256, C = 16. FLOPs grow with the N tokens (196 at 224 px
with 5 cells): +112 MFLOPs per sample, twice the manual 5-cell image encoder's 55.
Refused without metadata: there is nothing to attend to.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bionas.trainer.fusion.attention import Attention, attention_heads
from bionas.trainer.fusion.base import Fusion, classifier_head, image_sequence, meta_sequence


class CrossAttentionFusion(Fusion):
    """Bidirectional cross-attention between image and metadata tokens, then H."""

    name = "cross_attention"
    uses_tokens = True
    needs_meta = True

    def __init__(
        self, embed_dim: int, num_classes: int, dropout: float, *, with_meta: bool = True
    ) -> None:
        super().__init__()
        self.check_meta(with_meta)
        heads = attention_heads(embed_dim)
        self.norm_img, self.norm_meta = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.norm_img2, self.norm_meta2 = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.img_to_meta = Attention(embed_dim, heads)
        self.meta_to_img = Attention(embed_dim, heads)
        self.head = classifier_head(2 * embed_dim, embed_dim, num_classes, dropout)

    def forward(
        self,
        img: Tensor,
        meta: Tensor | None,
        img_tokens: Tensor | None = None,
        meta_tokens: Tensor | None = None,
    ) -> Tensor:
        image = image_sequence(img, img_tokens)
        metadata = meta_sequence(meta, meta_tokens, image.dtype)
        image = image + self.img_to_meta(self.norm_img(image), self.norm_meta(metadata))
        metadata = metadata + self.meta_to_img(self.norm_meta2(metadata), self.norm_img2(image))
        return self.head(torch.cat([image.mean(dim=1), metadata[:, 0]], dim=1))
