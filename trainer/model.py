"""BioAutoML-NAS: searchable image encoder + metadata encoder + fusion head (Sec. III-A).

The architecture logits θ are one registered fp32 parameter of shape [cells, 3, K]
(rows e1, e2a, e2b; K = 10 ops including zero, whatever `--ops` set the supernet is
built from: ops outside the set are masked to α = 0), so they are in the state_dict and DDP
sees them. Each forward computes α = softmax(θ) in fp32 once for all edges.

Pruning (Sec. III: ops with α below the threshold, 1e-6, are omitted) has two halves:

- the prune mask itself, α >= threshold, is computed on the device in every forward from
  the α it weights with, and α is zeroed where it is False: a pruned op contributes
  exactly 0 to its edge and gets no gradient, whatever changed θ (an optimiser, fused or
  not, `load_state_dict`, an edit by hand), with no host sync;
- which ops are launched at all (the compute the pruning saves) is a host list, a copy of
  that mask. Copying makes the host wait for the device, so it is made only where the
  host waits anyway: when the training loop reads a window of steps (`sync_prune_mask`,
  every `--log-every` steps, at the same steps on every rank, so all ranks launch the same
  ops), at the first forward, after `load_state_dict`, and on entering eval mode when θ
  changed since the last copy (evaluation, FLOP counting, predict, export: exact, and one
  copy however many batches follow). A θ step only marks the copy stale; code that sets θ
  by hand in train mode calls `sync_prune_mask` (the shared-weight searches do).

Between two reads the host list lags θ by the θ steps taken since the last one. An op
pruned since then is still launched and weighted by 0: the network's output and
gradients are exactly those without it; only the op's own state moves (its BatchNorm
running statistics, and AdamW's decay and momentum on its zero gradient, for at most
`--log-every` / 2 w steps), none of which reaches an output while it stays pruned (but
an fp16 overflow in its output would: inf · 0 is NaN, and GradScaler skips that step). An op
whose α climbed back over the threshold since the last read stays skipped until the next
one (at most `--log-every` steps): the one approximation, and a small one. Its α was
below the threshold at the read, and a θ step moves log α_k by at most twice the largest
logit step, which Adam keeps to about lr (Kingma & Ba §2.1; at most 18 lr with θ's betas
(0.5, 0.999)). After the n θ steps of a window, α_k < threshold · exp(2 lr n): at the
paper's lr 3e-4 and --log-every 50 (25 θ steps), α_k < 1.02e-6 (1.32e-6 at worst), so the
skipped term is about a millionth of its edge's output, what the pruning rule itself drops.
And it is rare: it takes an op that fell to α < 1e-6 (among 10 ops, a logit ~11.6 below
the rest: >= 38,000 θ steps at 3e-4) and then turns back. With a large `--lr-theta`
(`auto` on a short search), a smaller `--log-every` keeps the bound tight.

The forward reads no tensor on the host and nothing but Python attributes to choose the
ops (the launch list: a guard under torch.compile, which recompiles only when it changes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from bionas.trainer.backbones import BackboneEncoder, check_backbone
from bionas.trainer.encoder import STEMS, ImageEncoder
from bionas.trainer.fusion import build_fusion, check_fusion
from bionas.trainer.genotype import EDGE_NAMES, Genotype, derive, edge_key
from bionas.trainer.metadata import MetadataEncoder
from bionas.trainer.ops import DILATED_VARIANTS, OP_NAMES, OP_SETS, ZERO

THETA_INIT_STD = 1e-3  # the paper's θ ~ N(0, 10^-3), read as standard deviation 1e-3
# A single path through the supernet: per cell, the op of (e1, e2a, e2b).
OpPath = Sequence[Sequence[str]]


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
    ops: str = "full"  # the supernet's primitive set, a key of `OP_SETS` (`--ops`)
    backbone: str | None = None  # a torchvision model as the image encoder (trainer.backbones)
    image_size: int | None = None  # the size a backbone is built for (ViT); None: any

    def __post_init__(self) -> None:
        for name in ("num_classes", "channels", "cells", "embed_dim", "meta_embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        check_fusion(
            self.fusion, with_meta=bool(self.meta_cardinalities), searched_encoder=not self.backbone
        )
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.dilated not in DILATED_VARIANTS:
            raise ValueError(f"dilated must be one of {DILATED_VARIANTS}, got {self.dilated!r}")
        if self.ops not in OP_SETS:
            raise ValueError(f"ops must be one of {tuple(OP_SETS)}, got {self.ops!r}")
        if self.genotype is not None and len(self.genotype.cells) != self.cells:
            raise ValueError(
                f"genotype has {len(self.genotype.cells)} cells but ModelConfig.cells={self.cells}"
            )
        if self.backbone is not None:
            check_backbone(self.backbone)
            if self.genotype is not None:
                raise ValueError("a backbone replaces the searched cells: give no genotype")


class BioAutoMLNAS(nn.Module):
    """The supernet (genotype=None) or the fixed network of a derived genotype."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = (
            BackboneEncoder(cfg.backbone, cfg.embed_dim, cfg.image_size)
            if cfg.backbone
            else ImageEncoder(
                cfg.channels,
                cfg.cells,
                cfg.embed_dim,
                dilated=cfg.dilated,
                genotype=cfg.genotype,
                search_bn_affine=cfg.search_bn_affine,
                stem_kind=cfg.stem,
                ops=OP_SETS[cfg.ops],
            )
        )
        with_meta = bool(cfg.meta_cardinalities)
        self.metadata_encoder = (
            MetadataEncoder(cfg.meta_cardinalities, cfg.meta_embed_dim, cfg.embed_dim)
            if with_meta
            else None
        )
        searched = isinstance(self.image_encoder, ImageEncoder)
        self.fusion = build_fusion(
            cfg.fusion, cfg.embed_dim, cfg.num_classes, cfg.dropout, with_meta=with_meta,
            stage_channels=self.image_encoder.stage_channels if searched else None,
        )  # fmt: skip
        if cfg.genotype is None and cfg.backbone is None:
            theta = torch.randn(cfg.cells, len(EDGE_NAMES), len(OP_NAMES)) * THETA_INIT_STD
            self.theta = nn.Parameter(theta)
        else:
            self.register_parameter("theta", None)
        # θ keeps a column per op of OP_NAMES whatever the op set, so derive, genotypes and
        # checkpoints read the same; ops outside the set get -inf before the softmax (α = 0,
        # never built, never computed). Not persistent: it follows from cfg.ops.
        excluded = [name not in OP_SETS[cfg.ops] for name in OP_NAMES]
        theta_mask = torch.tensor([float("-inf") if x else 0.0 for x in excluded])
        self.register_buffer("theta_mask", theta_mask if any(excluded) else None, persistent=False)
        # the host's copy of the prune mask: which ops forward launches (module docstring)
        self._launch: list[list[list[bool]]] | None = None
        self._launch_key: tuple[int, int, str] | None = None  # θ's (version, storage, device)
        self._launch_stale = False  # θ moved in a way its version counter may not show
        if self.theta is not None:
            self.register_load_state_dict_post_hook(_forget_launch_list)

    def forward(
        self, images: Tensor, meta: Tensor | None = None, path: OpPath | None = None
    ) -> Tensor:
        """images: [B, 3, H, W]; meta: LongTensor [B, F] (ignored when F = 0). -> logits.
        `path` (supernet only): one op name per edge per cell; only those ops run, with
        weight 1 (the shared-weight searches of `bionas.trainer.search`)."""
        if self.theta is None:
            encoder_args: tuple = ()
        else:
            encoder_args = self._alphas_and_mask() if path is None else self._one_hot(path)
        meta_vec, meta_tokens = self._encode_metadata(meta)
        img, img_tokens = self._encode_image(images, encoder_args, meta_vec)
        return self.fusion(img, meta_vec, img_tokens, meta_tokens)

    def _encode_metadata(self, meta: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """X_meta, and the field tokens when the fusion uses tokens (else None)."""
        if self.metadata_encoder is None:
            return None, None
        if meta is None:
            raise ValueError(f"model expects metadata fields {self.metadata_encoder.fields}")
        if self.fusion.uses_tokens:
            return self.metadata_encoder.forward_with_tokens(meta)
        return self.metadata_encoder(meta), None

    def _encode_image(
        self, images: Tensor, encoder_args: tuple, meta_vec: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """X_img, and its tokens when the fusion uses tokens; a fusion's hook (progressive:
        FiLM by X_meta) runs after each cell. A backbone gives its embedding only."""
        encoder = self.image_encoder
        if not isinstance(encoder, ImageEncoder):
            return encoder(images, *encoder_args), None
        after_cell = self.fusion.after_cell(meta_vec)
        features = encoder.forward_features(images, *encoder_args, after_cell=after_cell)
        tokens = encoder.tokens(features) if self.fusion.uses_tokens else None
        return encoder.forward_head(features), tokens

    def _alphas_and_mask(self) -> tuple[Tensor, list[list[list[bool]]]]:
        """α with the pruned ops' entries 0 (on the device), and the host's launch list."""
        # fp32 outside autocast: 1e-6 is subnormal in fp16 and the mask would be wrong.
        with torch.autocast(device_type=self.theta.device.type, enabled=False):
            alphas = self._softmax(self.theta.float())  # eq. (6)
            alphas = torch.where(alphas >= self.cfg.prune_threshold, alphas, 0.0)
        if self._launch is None:
            self.sync_prune_mask()
        return alphas, self._launch

    def _softmax(self, theta: Tensor) -> Tensor:
        """α = softmax(θ) over the ops of the set (the others get α = 0)."""
        return torch.softmax(theta if self.theta_mask is None else theta + self.theta_mask, -1)

    def _one_hot(self, path: OpPath) -> tuple[Tensor, list[list[list[bool]]]]:
        """α and the mask of a single path: 1 for the chosen op of each edge, 0 elsewhere."""
        alphas = torch.zeros(self.theta.shape)
        for i, ops in enumerate(path):
            for j, op in enumerate(ops):
                if op not in OP_SETS[self.cfg.ops]:
                    raise ValueError(f"cell {i} edge {j}: {op!r} is not in op set {self.cfg.ops}")
                alphas[i, j, OP_NAMES.index(op)] = 1.0
        return alphas.to(self.theta.device), alphas.bool().tolist()

    @torch.no_grad()
    def prune_mask(self) -> Tensor:
        """[cells, 3, K] bool on θ's device: False where α < threshold (the op is pruned).
        Reads nothing on the host."""
        return self._softmax(self.theta.float()) >= self.cfg.prune_threshold

    def sync_prune_mask(self) -> list[list[list[bool]]]:
        """The launch list ([cells][edge][op], False: not run) brought up to date: one
        device -> host copy when θ changed since the last one, none otherwise. For points
        where the host waits for the device anyway (the loop's window reads), and for
        whoever sets θ by hand and wants the compute saving at once."""
        if self.theta is None:
            return []
        if self._launch is None or self._launch_changed():
            self._launch = self.prune_mask().tolist()  # the host waits for θ here
            self._launch_key, self._launch_stale = self._theta_key(), False
        return self._launch

    def mark_prune_mask_stale(self) -> None:
        """θ changed (a θ step): the next `sync_prune_mask` copies. Needed because fused
        optimisers and `.data` writes leave θ's version counter as it was."""
        self._launch_stale = True

    def train(self, mode: bool = True) -> BioAutoMLNAS:
        """Entering eval mode drops a launch list θ has moved away from: evaluation, FLOP
        counting, predict and export launch exactly the ops α keeps (one copy, at the
        first forward)."""
        super().train(mode)
        if not mode and self.theta is not None and self._launch_changed():
            self._launch = None
        return self

    def _launch_changed(self) -> bool:
        return self._launch_stale or self._theta_key() != self._launch_key

    def _theta_key(self) -> tuple[int, int, str]:
        """Changes when θ is written in place or replaced; reading it needs no sync."""
        return (self.theta._version, self.theta.data_ptr(), str(self.theta.device))

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
        alphas = self._softmax(self.theta.detach().float())
        return {
            edge_key(i, edge): alphas[i, j]
            for i in range(alphas.shape[0])
            for j, edge in enumerate(EDGE_NAMES)
        }

    def pruned_op_count(self) -> int:
        """Non-zero ops of the set whose α is below the threshold, i.e. pruned (weighted 0,
        and not launched once the launch list is synced)."""
        if self.theta is None:
            return 0
        nonzero = [OP_NAMES.index(n) for n in OP_SETS[self.cfg.ops] if n != ZERO]
        return int((~self.prune_mask()[..., nonzero]).sum())

    def genotype(self) -> Genotype:
        """The derived architecture: argmax α per edge (or the fixed net's own genotype)."""
        if self.cfg.backbone is not None:
            raise ValueError(f"a backbone network ({self.cfg.backbone}) has no genotype")
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


def architecture_json(model: BioAutoMLNAS) -> dict[str, Any]:
    """What the image encoder is, JSON-ready: {"backbone": NAME}, or the genotype's JSON."""
    if model.cfg.backbone is not None:
        return {"backbone": model.cfg.backbone}
    return json.loads(model.genotype().to_json())


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


def _forget_launch_list(model: BioAutoMLNAS, _incompatible: Any) -> None:
    """After `load_state_dict`: θ may be anything now; the next forward copies its mask."""
    model._launch = None


def _op_bn_affine(key: str, model: nn.Module) -> bool:
    """True for the γ/β of a BatchNorm inside a cell's candidate op (`...ops.<op>...`)."""
    module_name, _, leaf = key.rpartition(".")
    if leaf not in ("weight", "bias") or ".ops." not in module_name:
        return False
    return isinstance(model.get_submodule(module_name), nn.BatchNorm2d)
