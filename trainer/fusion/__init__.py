"""Fusion of the image and metadata representations, and the classifier head (eq. 11).

`FUSIONS` maps a `--fusion` name to its class, one module each; `build_fusion` builds
one for a model. The interface (what `forward` takes, and the class attributes that ask
the model for image/metadata tokens or a hook inside the image encoder) is
`base.Fusion`. `concat` is the paper's fusion; the others are the fusion strategies of
its ablation (Table I, E001-E004 and E013-E015), each defined in its module's docstring,
where the paper does not define them, with its cost relative to concat.
"""

from __future__ import annotations

from bionas.trainer.fusion.base import Fusion, classifier_head, image_only_refusal
from bionas.trainer.fusion.bilinear import BilinearFusion
from bionas.trainer.fusion.concat import ConcatFusion
from bionas.trainer.fusion.cross_attention import CrossAttentionFusion
from bionas.trainer.fusion.ensemble import EnsembleFusion
from bionas.trainer.fusion.gated import GatedFusion
from bionas.trainer.fusion.multihead import MultiHeadFusion
from bionas.trainer.fusion.progressive import ProgressiveFusion
from bionas.trainer.fusion.transformer import TransformerFusion

__all__ = ["FUSIONS", "Fusion", "build_fusion", "check_fusion", "classifier_head"]

FUSIONS: dict[str, type[Fusion]] = {
    cls.name: cls
    for cls in (
        ConcatFusion,
        GatedFusion,
        BilinearFusion,
        CrossAttentionFusion,
        TransformerFusion,
        MultiHeadFusion,
        ProgressiveFusion,
        EnsembleFusion,
    )
}


def check_fusion(name: str, *, with_meta: bool, searched_encoder: bool = True) -> None:
    """ValueError when `name` is unknown or cannot run on this model (config time)."""
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choose from {', '.join(FUSIONS)}")
    cls = FUSIONS[name]
    if cls.needs_meta and not with_meta:
        image_only = tuple(n for n, c in FUSIONS.items() if not c.needs_meta)
        raise ValueError(image_only_refusal(name, image_only))
    if cls.conditions_encoder and not searched_encoder:
        raise ValueError(
            f"fusion {name} injects metadata after each cell of the searched image encoder, "
            "and a backbone has no cells: choose another --fusion for a --backbone run"
        )


def build_fusion(
    name: str,
    embed_dim: int,
    num_classes: int,
    dropout: float,
    *,
    with_meta: bool,
    stage_channels: tuple[int, ...] | None = None,
) -> Fusion:
    """The fusion `name` for a model; `stage_channels`: the searched encoder's channels per
    cell (None: a backbone encoder)."""
    check_fusion(name, with_meta=with_meta, searched_encoder=stage_channels is not None)
    cls = FUSIONS[name]
    extra = {"stage_channels": stage_channels} if cls.conditions_encoder else {}
    return cls(embed_dim, num_classes, dropout, with_meta=with_meta, **extra)
