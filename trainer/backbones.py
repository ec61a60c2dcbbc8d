"""Image backbones (paper Table II): any torchvision classification model as the image encoder.

`bionas train --backbone NAME` replaces the searched encoder (stem + cells) by a
torchvision model whose last classification layer is replaced by identity (torchvision's
fine-tuning recipe: penultimate features, e.g. ResNet's pooled 512-d, VGG's 4096-d fc7,
ViT's class token), followed by a Linear to the embedding width. The metadata encoder,
the fusion and the loop are the NAS run's; a backbone has no θ, so every step is a w step.

Built with `weights=None` always: torchvision never downloads anything. Pretrained
weights come from a local file (`load_backbone_weights`), e.g. one written by
`torch.save(torchvision.models.resnet18(weights="DEFAULT").state_dict(), FILE)` on a
machine with network access; the original classifier's keys in it are dropped.

`FAMILIES` says, per name prefix, where the classifier is and what the constructor needs;
a torchvision model of an unlisted family works when its classifier is one of
`HEAD_ATTRIBUTES`.
"""

from __future__ import annotations

import difflib
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from bionas.errors import BionasError

HEAD_ATTRIBUTES = ("fc", "classifier", "heads", "head")
PREFIXES_TO_STRIP = ("module.", "image_encoder.backbone.")  # DDP; a bionas backbone run


def _image_size(size: int) -> dict[str, Any]:
    return {"image_size": size}


def _input_size(size: int) -> dict[str, Any]:
    return {"input_size": (size, size)}


@dataclass(frozen=True)
class Family:
    """How to build one family of torchvision classifiers as a feature extractor."""

    head: str  # attribute holding the classifier; its last Linear (or 1x1 conv) is removed
    # constructor options for the input size, for models built for one size (ViT's
    # position embeddings, MaxViT's attention grids); None: any size works
    sized: Callable[[int], dict[str, Any]] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


_NO_AUX = {"aux_logits": False, "init_weights": True}  # training-mode aux heads off
FAMILIES: dict[str, Family] = {
    "resnet": Family("fc"),
    "resnext": Family("fc"),
    "wide_resnet": Family("fc"),
    "regnet": Family("fc"),
    "shufflenet": Family("fc"),
    "googlenet": Family("fc", options=_NO_AUX),
    "inception": Family("fc", options=_NO_AUX),
    "alexnet": Family("classifier"),
    "vgg": Family("classifier"),
    "densenet": Family("classifier"),
    "squeezenet": Family("classifier"),  # a 1x1 conv to the classes, then pooling
    "mnasnet": Family("classifier"),
    "mobilenet": Family("classifier"),
    "efficientnet": Family("classifier"),
    "convnext": Family("classifier"),  # LayerNorm2d -> Flatten -> Linear: the norm is kept
    "maxvit": Family("classifier", sized=_input_size),
    "vit": Family("heads", sized=_image_size),
    "swin": Family("head"),
}


def backbone_names() -> list[str]:
    """Every torchvision classification model name (`torchvision.models.list_models`)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_backbone(name: str) -> None:
    """ValueError naming close matches when `name` is not a torchvision classifier."""
    names = backbone_names()
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(
        f"unknown backbone {name!r}: {hint}choose a torchvision classification model "
        f"({', '.join(names[:6])}, …; {len(names)} in all: torchvision.models.list_models())"
    )


def family_of(name: str) -> Family | None:
    """The longest `FAMILIES` prefix of `name` (`vit` for vit_b_16), or None."""
    prefixes = [p for p in FAMILIES if name.startswith(p)]
    return FAMILIES[max(prefixes, key=len)] if prefixes else None


def feature_extractor(name: str, image_size: int | None = None) -> tuple[nn.Module, str, int]:
    """The torchvision model `name`, built from scratch, with its last classification layer
    replaced by identity. Returns (model, the removed layer's name, feature width)."""
    check_backbone(name)
    family = family_of(name)
    options = {"weights": None, **(family.options if family else {})}  # None: no download
    if family is not None and family.sized is not None:
        if image_size is None:
            raise ValueError(f"backbone {name} is built for one image size; none was given")
        options.update(family.sized(image_size))
    try:
        model = torchvision.models.get_model(name, **options)
    except (AssertionError, ValueError, RuntimeError) as err:
        raise ValueError(f"cannot build backbone {name} at image size {image_size}: {err}") from err
    key, width = _remove_classifier(model, name, family)
    return model, key, width


def _remove_classifier(model: nn.Module, name: str, family: Family | None) -> tuple[str, int]:
    attributes = (family.head,) if family else HEAD_ATTRIBUTES
    head_attr = next(
        (a for a in attributes if isinstance(getattr(model, a, None), nn.Module)), None
    )
    if head_attr is None:
        raise ValueError(f"backbone {name}: no classifier found under {', '.join(attributes)}")
    head = getattr(model, head_attr)
    layers = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if not layers:
        raise ValueError(f"backbone {name}: {head_attr} holds no Linear or Conv2d to remove")
    sub, last = layers[-1]
    key = f"{head_attr}.{sub}" if sub else head_attr
    model.set_submodule(key, nn.Identity())
    width = last.in_features if isinstance(last, nn.Linear) else last.in_channels
    return key, int(width)


class BackboneEncoder(nn.Module):
    """A torchvision classifier without its last layer -> Linear(features, embed_dim).

    Takes the NAS encoder's place (same output, [B, embed_dim]); it has no cells, hence no
    reduction flags and nothing to search."""

    searchable = False
    reduction_flags: tuple[bool, ...] = ()

    def __init__(self, name: str, embed_dim: int, image_size: int | None = None) -> None:
        super().__init__()
        self.name = name
        self.backbone, self.removed, width = feature_extractor(name, image_size)
        self.proj = nn.Linear(width, embed_dim)

    def forward(self, images: Tensor, alphas: Tensor | None = None, active: Any = None) -> Tensor:
        return self.proj(self.backbone(images).flatten(1))


def load_backbone_weights(encoder: BackboneEncoder, path: Path) -> None:
    """Load the local state dict `path` into `encoder.backbone`, all keys or none.

    Accepted: a torchvision state dict (its classifier's keys are dropped), a checkpoint
    dict holding one under "state_dict", or a bionas backbone run's model.pt. A file that
    does not fit is a BionasError naming a few missing, unexpected and misshapen keys."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise BionasError(f"cannot read --weights {path}: {err}") from None
    state = _state_dict_in(loaded, path)
    own = encoder.backbone.state_dict()
    state = {k: v for k, v in state.items() if not _under(k, encoder.removed)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshapen = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshapen:
        raise BionasError(_mismatch_message(encoder.name, path, missing, unexpected, misshapen))
    encoder.backbone.load_state_dict(state)


def _state_dict_in(loaded: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()
    ):
        raise BionasError(
            f"--weights {path} is not a state dict (a mapping of parameter names to tensors, "
            "as `torch.save(model.state_dict(), FILE)` writes)"
        )
    for prefix in PREFIXES_TO_STRIP:
        if any(k.startswith(prefix) for k in loaded):
            loaded = {k.removeprefix(prefix): v for k, v in loaded.items() if k.startswith(prefix)}
    return dict(loaded)


def _under(key: str, module: str) -> bool:
    return key == module or key.startswith(module + ".")


def _mismatch_message(
    name: str, path: Path, missing: list[str], unexpected: list[str], misshapen: list[str]
) -> str:
    def few(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (", …" if len(keys) > 4 else "")

    parts = [
        f"{len(keys)} {what} (e.g. {few(keys)})"
        for what, keys in (
            ("missing key(s)", missing),
            ("unexpected key(s)", unexpected),
            ("of another shape", misshapen),
        )
        if keys
    ]
    return (
        f"--weights {path} does not fit backbone {name}: {'; '.join(parts)}. Give a state dict "
        f"of torchvision's {name} (torch.save(torchvision.models.{name}(weights=...)"
        ".state_dict(), FILE)), or the model.pt of a bionas run with --backbone "
        f"{name}; models built for one image size (ViT, MaxViT) need the size the weights "
        "were made for."
    )
