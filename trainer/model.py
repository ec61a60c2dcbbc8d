"""BioAutoML-NAS: searchable image encoder + metadata encoder + fusion head (Sec. III-A).

The architecture logits θ are one registered fp32 parameter of shape [cells, 3, K]
(rows e1, e2a, e2b; K = 10 ops including zero), so they are in the state_dict and DDP
sees them. Each forward computes α = softmax(θ) in fp32 once for all edges. The prune mask
(α >= threshold) decides on the host which ops run, so it is cached: `train_step` refreshes
it after every θ step (one device sync per θ step, none on w steps, in evaluation or in
prediction), and a change of θ's version counter (`load_state_dict`, DDP's broadcast, an
in-place edit under no_grad) invalidates it too. Fused optimisers and `.data` writes do not
move the counter, hence the explicit refresh.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from bionas.trainer.encoder import STEMS, ImageEncoder
from bionas.trainer.fusion import FUSIONS
from bionas.trainer.genotype import EDGE_NAMES, Genotype, derive, edge_key
from bionas.trainer.metadata import MetadataEncoder
from bionas.trainer.ops import DILATED_VARIANTS, OP_NAMES, ZERO_INDEX

THETA_INIT_STD = 1e-3  # the paper's θ ~ N(0, 10^-3), read as standard deviation 1e-3


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int
    meta_cardinalities: tuple[tuple[str, int], ...] = ()  # (field, vocab size incl. index 0)
    channels: int = 16
    cells: int = 5
    embed_dim: int = 256
    meta_embed_dim: int = 32
    dropout: float = 0.2
    fusion: str = "concat"
    dilated: str = "full"  # or "separable"
    prune_threshold: float = 1e-6
    genotype: Genotype | None = None  # fixed network instead of the supernet
    # learnable BN affine inside the supernet's candidate ops (DARTS: none); runs written
    # before bionas 0.2 searched with it and load with True
    search_bn_affine: bool = False
    stem: str = "learned"  # or "transpose_symmetric" (an experimental control, see encoder)

    def __post_init__(self) -> None:
        for name in ("num_classes", "channels", "cells", "embed_dim", "meta_embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {self.fusion!r}; choose from {sorted(FUSIONS)}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.dilated not in DILATED_VARIANTS:
            raise ValueError(f"dilated must be one of {DILATED_VARIANTS}, got {self.dilated!r}")
        if self.genotype is not None and len(self.genotype.cells) != self.cells:
            raise ValueError(
                f"genotype has {len(self.genotype.cells)} cells but ModelConfig.cells={self.cells}"
            )


class BioAutoMLNAS(nn.Module):
    """The supernet (genotype=None) or the fixed network of a derived genotype."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = ImageEncoder(
            cfg.channels,
            cfg.cells,
            cfg.embed_dim,
            dilated=cfg.dilated,
            genotype=cfg.genotype,
            search_bn_affine=cfg.search_bn_affine,
            stem_kind=cfg.stem,
        )
        with_meta = bool(cfg.meta_cardinalities)
        self.metadata_encoder = (
            MetadataEncoder(cfg.meta_cardinalities, cfg.meta_embed_dim, cfg.embed_dim)
            if with_meta
            else None
        )
        self.fusion = FUSIONS[cfg.fusion](
            cfg.embed_dim, cfg.num_classes, cfg.dropout, with_meta=with_meta
        )
        if cfg.genotype is None:
            theta = torch.randn(cfg.cells, len(EDGE_NAMES), len(OP_NAMES)) * THETA_INIT_STD
            self.theta = nn.Parameter(theta)
        else:
            self.register_parameter("theta", None)
        self._mask_key: tuple[int, int, str] | None = None  # θ's (version, storage, device)
        self._mask: list[list[list[bool]]] = []

    def forward(self, images: Tensor, meta: Tensor | None = None) -> Tensor:
        """images: [B, 3, H, W]; meta: LongTensor [B, F] (ignored when F = 0). -> logits."""
        if self.theta is None:
            img = self.image_encoder(images)
        else:
            alphas, active = self._alphas_and_mask()
            img = self.image_encoder(images, alphas, active)
        if self.metadata_encoder is None:
            return self.fusion(img, None)
        if meta is None:
            raise ValueError(f"model expects metadata fields {self.metadata_encoder.fields}")
        return self.fusion(img, self.metadata_encoder(meta))

    def _alphas_and_mask(self) -> tuple[Tensor, list[list[list[bool]]]]:
        # fp32 outside autocast: 1e-6 is subnormal in fp16 and the mask would be wrong.
        with torch.autocast(device_type=self.theta.device.type, enabled=False):
            alphas = torch.softmax(self.theta.float(), dim=-1)  # eq. (6)
        return alphas, self.prune_mask()

    def refresh_prune_mask(self) -> list[list[list[bool]]]:
        """Recompute the mask now (after a θ step, whatever updated θ)."""
        self._mask_key = None
        return self.prune_mask()

    def prune_mask(self) -> list[list[list[bool]]]:
        """[cells][edge][op]: False where α < threshold (the op is not computed).

        Computed on θ's device and copied to the host only when θ changed since the last
        call; a key of version counter, storage and device needs no sync to check.
        """
        theta = self.theta
        key = (theta._version, theta.data_ptr(), str(theta.device))
        if key != self._mask_key:
            with torch.no_grad():
                alphas = torch.softmax(theta.detach().float(), dim=-1)
                self._mask = (alphas >= self.cfg.prune_threshold).cpu().tolist()  # one sync
            self._mask_key = key
        return self._mask

    def arch_parameters(self) -> list[nn.Parameter]:
        """θ (empty for a fixed genotype)."""
        return [] if self.theta is None else [self.theta]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except θ."""
        return [p for name, p in self.named_parameters() if name != "theta"]

    def alphas(self) -> dict[str, Tensor]:
        """Edge name (`cell0.e1`) -> softmax(θ) row in `OP_NAMES` order, fp32, detached."""
        if self.theta is None:
            return {}
        alphas = torch.softmax(self.theta.detach().float(), dim=-1)
        return {
            edge_key(i, edge): alphas[i, j]
            for i in range(alphas.shape[0])
            for j, edge in enumerate(EDGE_NAMES)
        }

    def pruned_op_count(self) -> int:
        """Non-zero ops whose α is below the threshold, i.e. skipped in forward."""
        if self.theta is None:
            return 0
        alphas = torch.softmax(self.theta.detach().float(), dim=-1)
        nonzero = [k for k in range(len(OP_NAMES)) if k != ZERO_INDEX]
        return int((alphas[..., nonzero] < self.cfg.prune_threshold).sum())

    def genotype(self) -> Genotype:
        """The derived architecture: argmax α per edge (or the fixed net's own genotype)."""
        if self.cfg.genotype is not None:
            return self.cfg.genotype
        return derive(self.alphas(), self.image_encoder.reduction_flags)

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts per component (θ counted apart from the image encoder)."""

        def count(module: nn.Module | None) -> int:
            return 0 if module is None else sum(p.numel() for p in module.parameters())

        counts = {
            "image_encoder": count(self.image_encoder),
            "metadata_encoder": count(self.metadata_encoder),
            "head": count(self.fusion),
            "theta": 0 if self.theta is None else self.theta.numel(),
        }
        counts["total"] = sum(counts.values())
        return counts


def build_model(cfg: ModelConfig) -> BioAutoMLNAS:
    """Build the supernet, or the fixed network when `cfg.genotype` is set."""
    return BioAutoMLNAS(cfg)


def fixed_from_supernet(supernet: BioAutoMLNAS, genotype: Genotype | None = None) -> BioAutoMLNAS:
    """The fixed network of `genotype` (default: the supernet's argmax), with the chosen
    ops', stem's, metadata encoder's and head's weights copied from the supernet.

    A supernet searched without BN affine has no γ/β in its ops; the fixed net's affine
    BN keeps γ = 1, β = 0 there, which computes exactly what the supernet's op did."""
    fixed = build_model(replace(supernet.cfg, genotype=genotype or supernet.genotype()))
    source = supernet.state_dict()
    wanted = fixed.state_dict()
    missing = [k for k in wanted if k not in source]
    unexplained = [k for k in missing if not _op_bn_affine(k, fixed)]
    if unexplained:
        raise ValueError(f"supernet lacks weights for {unexplained[:5]}")
    fixed.load_state_dict({k: source[k] for k in wanted if k in source}, strict=False)
    return fixed


def _op_bn_affine(key: str, model: nn.Module) -> bool:
    """True for the γ/β of a BatchNorm inside a cell's candidate op (`...ops.<op>...`)."""
    module_name, _, leaf = key.rpartition(".")
    if leaf not in ("weight", "bias") or ".ops." not in module_name:
        return False
    return isinstance(model.get_submodule(module_name), nn.BatchNorm2d)
