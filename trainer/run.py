"""The RUN_DIR contract between `bionas train` and derive / evaluate / predict.

    RUN_DIR/config.json         train config, model config, dataset dir, target,
                                metadata fields, class names, vocab sha256s, image size
    RUN_DIR/vocabs/vocab_<field>.json   copies of the vocabularies used (target + meta),
                                so predict works without the dataset
    RUN_DIR/model.pt            {"model_config": dict, "state_dict": ...}: the weights
                                after the latest finished epoch (or the stop), final
                                when training ends
    RUN_DIR/checkpoints/last.pt the resumable training state (bionas.trainer.checkpoint)
    RUN_DIR/steps.jsonl, epochs.jsonl, alphas.jsonl   logs (bionas.trainer.logs)

`load_trained` reads it back into a model in eval mode.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bionas.errors import BionasError
from bionas.manifests.manifest import load_manifest
from bionas.manifests.vocab import Vocab, load_vocab, vocab_filename, write_vocab
from bionas.trainer.config import TrainConfig
from bionas.trainer.encoder import reduction_flags
from bionas.trainer.encoding import Encoding
from bionas.trainer.genotype import BUILTIN_CELLS, Genotype, uniform_genotype
from bionas.trainer.logs import ALPHAS_LOG as ALPHAS_LOG
from bionas.trainer.logs import EPOCHS_LOG as EPOCHS_LOG
from bionas.trainer.logs import STEPS_LOG as STEPS_LOG
from bionas.trainer.model import BioAutoMLNAS, ModelConfig, build_model
from bionas.trainer.transforms import preprocess_image as preprocess_image  # shared with predict

RUN_FORMAT = "bionas.run/1"
CONFIG_NAME = "config.json"
MODEL_NAME = "model.pt"
VOCAB_DIR = "vocabs"
CHECKPOINT = Path("checkpoints") / "last.pt"


def model_config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """JSON-ready ModelConfig; the genotype in its own JSON format."""
    out = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    out["meta_cardinalities"] = [[name, int(size)] for name, size in cfg.meta_cardinalities]
    out["genotype"] = None if cfg.genotype is None else json.loads(cfg.genotype.to_json())
    return out


def model_config_from_dict(data: Mapping[str, Any]) -> ModelConfig:
    known = {f.name for f in fields(ModelConfig)}
    values = {k: v for k, v in data.items() if k in known}
    values.setdefault("search_bn_affine", True)  # written before the option: affine BN
    values["meta_cardinalities"] = tuple(
        (str(name), int(size)) for name, size in values.get("meta_cardinalities", ())
    )
    genotype = values.get("genotype")
    values["genotype"] = None if genotype is None else Genotype.from_json(json.dumps(genotype))
    return ModelConfig(**values)


def load_genotype(path: Path | None, cells: int = 5) -> Genotype | None:
    """The genotype of --genotype: a file, or the name of a built-in cell (`manual`,
    `pool_skip`) repeated over `cells` cells with DARTS' reduction placement; or None."""
    if path is None:
        return None
    name = str(path)
    if name in BUILTIN_CELLS and not Path(path).exists():
        return uniform_genotype(BUILTIN_CELLS[name], reduction_flags(cells))
    try:
        genotype = Genotype.load(path)
        genotype.check_reachable()
        return genotype
    except (OSError, ValueError) as err:
        builtin = ", ".join(BUILTIN_CELLS)
        raise BionasError(
            f"cannot use --genotype {path}: {err} (a genotype.json, or a built-in cell: {builtin})"
        ) from None


def model_config_for(
    config: TrainConfig, encoding: Encoding, genotype: Genotype | None
) -> ModelConfig:
    """The model a TrainConfig asks for, sized by the dataset's vocabularies."""
    try:
        return ModelConfig(
            num_classes=encoding.num_classes,
            meta_cardinalities=tuple((v.field, len(v)) for v in encoding.meta_vocabs),
            channels=config.channels,
            cells=len(genotype.cells) if genotype is not None else config.cells,
            embed_dim=config.embed_dim,
            meta_embed_dim=config.meta_embed_dim,
            dropout=config.dropout,
            fusion=config.fusion,
            dilated=config.dilated,
            prune_threshold=config.prune_threshold,
            genotype=genotype,
            search_bn_affine=config.search_bn_affine,
            stem=config.stem,
            ops=config.ops,
            backbone=config.backbone,
            image_size=config.image_size if config.backbone else None,
        )
    except ValueError as err:
        raise BionasError(f"invalid model options: {err}") from None


def _write_json(path: Path, body: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_run_config(
    run_dir: Path,
    *,
    train_config: Mapping[str, Any],
    model_config: ModelConfig,
    encoding: Encoding,
    dataset_dir: Path,
    image_size: int,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write config.json and copies of the vocabularies into RUN_DIR."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for vocab in encoding.vocabs.values():
        write_vocab(vocab, run_dir / VOCAB_DIR)
    body = {
        "format": RUN_FORMAT,
        "train_config": dict(train_config),
        "model_config": model_config_to_dict(model_config),
        "dataset_dir": str(Path(dataset_dir).resolve()),
        "target": encoding.target,
        "meta_fields": list(encoding.meta_fields),
        "class_names": encoding.class_names,
        "vocab_sha256": {f: v.sha256 for f, v in encoding.vocabs.items()},
        "image_size": image_size,
        # the crop rule predict and export need if the dataset is gone later
        "dataset_options": _crop_options(dataset_dir),
        **(extra or {}),
    }
    path = run_dir / CONFIG_NAME
    _write_json(path, body)
    return path


def update_run_config(run_dir: Path, train_config: Mapping[str, Any], **fields: Any) -> None:
    """Rewrite config.json's options and top-level `fields` (a run that changed its batch
    size mid-way: `bionas.trainer.rebatch`)."""
    path = Path(run_dir) / CONFIG_NAME
    body = json.loads(path.read_text())
    _write_json(path, {**body, "train_config": dict(train_config), **fields})


def _crop_options(dataset_dir: Path) -> dict[str, Any]:
    """Ingest's options that decide a sample image (size, crop margin, JPEG quality)."""
    try:
        options = load_manifest(dataset_dir).body.get("options", {})
    except (OSError, ValueError, BionasError):
        return {}
    return {k: options[k] for k in ("size", "crop_margin", "quality") if k in options}


def save_model(run_dir: Path, model: BioAutoMLNAS) -> Path:
    """Write model.pt atomically."""
    path = run_dir / MODEL_NAME
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model_config": model_config_to_dict(model.cfg), "state_dict": state}, tmp)
    os.replace(tmp, path)
    return path


def run_encoding(
    run_dir: Path, config: Mapping[str, Any], target: str, meta_fields: tuple[str, ...]
) -> Encoding | None:
    """The encoding from RUN_DIR/vocabs (the copies `write_run_config` wrote), or None when
    a copy is missing or differs from the sha256 config.json recorded for it."""
    recorded = config.get("vocab_sha256", {})
    vocabs = {}
    for name in (target, *meta_fields):
        path = run_dir / VOCAB_DIR / vocab_filename(name)
        try:
            vocab = load_vocab(path)
        except (OSError, ValueError):
            return None
        if vocab.sha256 != recorded.get(name):
            return None
        vocabs[name] = vocab
    return Encoding(vocabs[target], tuple(vocabs[f] for f in meta_fields))


@dataclass(frozen=True)
class TrainedRun:
    """A finished (or in-progress) run, ready for derive, evaluate and predict."""

    run_dir: Path
    model: BioAutoMLNAS  # in eval mode
    model_config: ModelConfig
    train_config: dict[str, Any]
    class_names: list[str]
    target: str
    meta_fields: list[str]
    vocabs: dict[str, Vocab]  # the metadata fields' and the target's, as at train time
    image_size: int
    dataset_dir: Path
    # the crop options of the dataset at train time (config.json; {} for older runs)
    dataset_options: dict[str, Any] = field(default_factory=dict)

    def meta_indices(self, values: Mapping[str, str | None]) -> Tensor:
        """LongTensor [1, F] of the metadata fields' indices (missing -> 0, unknown)."""
        row = [self.vocabs[f].lookup(values.get(f)) for f in self.meta_fields]
        return torch.tensor([row], dtype=torch.long)


def load_trained(run_dir: Path, map_location: str | torch.device = "cpu") -> TrainedRun:
    """Read RUN_DIR (config.json, model.pt, vocabs/) into a model in eval mode."""
    run_dir = Path(run_dir)
    config_path, model_path = run_dir / CONFIG_NAME, run_dir / MODEL_NAME
    if not config_path.exists():
        raise BionasError(f"{run_dir} is not a bionas run: {CONFIG_NAME} is missing")
    if not model_path.exists():
        raise BionasError(
            f"{run_dir} has no {MODEL_NAME} yet: training has not finished an epoch or "
            "stopped; let it run (or resume it with `bionas train … --resume`)"
        )
    config = json.loads(config_path.read_text())
    saved = torch.load(model_path, map_location=map_location, weights_only=True)
    model_config = model_config_from_dict(saved["model_config"])
    model = build_model(model_config)
    model.load_state_dict(saved["state_dict"])
    model.to(map_location).eval()
    vocabs = {}
    for name, sha in config["vocab_sha256"].items():
        vocab = load_vocab(run_dir / VOCAB_DIR / vocab_filename(name))
        if vocab.sha256 != sha:
            raise BionasError(
                f"{run_dir / VOCAB_DIR}: vocabulary {name!r} was changed after training"
            )
        vocabs[name] = vocab
    return TrainedRun(
        run_dir=run_dir,
        model=model,
        model_config=model_config,
        train_config=config["train_config"],
        class_names=list(config["class_names"]),
        target=config["target"],
        meta_fields=list(config["meta_fields"]),
        vocabs=vocabs,
        image_size=int(config["image_size"]),
        dataset_dir=Path(config["dataset_dir"]),
        dataset_options=dict(config.get("dataset_options") or {}),
    )
