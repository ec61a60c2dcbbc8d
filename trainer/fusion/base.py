"""What every fusion is: the interface the model calls, and the classifier head H (eq. 11)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

AfterCell = Callable[[int, Tensor], Tensor]


def classifier_head(in_dim: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """H in eq. (11): Linear(in, hidden) -> ReLU -> Dropout(p) -> Linear(hidden, classes)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class Fusion(nn.Module):
    """Image and metadata representations -> logits [B, classes].

    Built as `cls(embed_dim, num_classes, dropout, with_meta=...)`; called as
    `forward(img, meta, img_tokens=None, meta_tokens=None)` with img [B, D] and meta [B, D]
    (None without metadata fields). The class attributes tell the model what else to give:

    - `uses_tokens`: img_tokens [B, N, D] (one per position of the searched encoder's last
      feature map) and meta_tokens [B, F, D] (one per metadata field); without them (a
      backbone encoder, a direct call) the pooled vectors stand in as one token each.
    - `conditions_encoder`: `after_cell(meta)` is passed into the image encoder, which calls
      it after every cell (progressive fusion); such a fusion is built with the encoder's
      `stage_channels`.
    - `needs_meta`: there is nothing to fuse without metadata; `--meta-fields none` is
      refused rather than silently training another fusion's image-only head.
    """

    name: ClassVar[str]  # the --fusion name
    uses_tokens: ClassVar[bool] = False
    conditions_encoder: ClassVar[bool] = False
    needs_meta: ClassVar[bool] = False

    def after_cell(self, meta: Tensor | None) -> AfterCell | None:
        """The image encoder's per-cell hook for this sample batch (None: no hook)."""
        return None

    def check_meta(self, with_meta: bool) -> None:
        if self.needs_meta and not with_meta:
            raise ValueError(image_only_refusal(self.name))


def image_only_refusal(fusion: str, image_only: tuple[str, ...] = ()) -> str:
    """Why a fusion that needs metadata cannot run on the image alone, and what to do."""
    choose = f" ({', '.join(image_only)})" if image_only else ""
    return (
        f"fusion {fusion} combines the image with metadata, and there are no metadata "
        f"fields (--meta-fields none): give metadata fields, or choose a fusion that works "
        f"on the image alone{choose}"
    )


def image_sequence(img: Tensor, img_tokens: Tensor | None) -> Tensor:
    """[B, N, D]: the image tokens, or the pooled embedding as the only token."""
    return img[:, None] if img_tokens is None else img_tokens.to(img.dtype)


def meta_sequence(meta: Tensor, meta_tokens: Tensor | None, dtype: torch.dtype) -> Tensor:
    """[B, 1 + F, D]: F_meta's output (the summary token) followed by the field tokens."""
    summary = meta.to(dtype)[:, None]
    return summary if meta_tokens is None else torch.cat([summary, meta_tokens.to(dtype)], 1)
