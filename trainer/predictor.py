"""One interface over every form of a trained model, for prediction and export.

A `Predictor` is what `bionas predict` needs from a model, wherever it comes from:

- a run folder (`bionas train`'s RUN_DIR or RUN_DIR/final): the eager PyTorch model;
- an export folder (`bionas export`): TorchScript or ONNX, described by its model.json.

Both give the same things: the classes, the metadata fields and their vocabularies, the
preprocessing (the crop rule of the dataset's ingest and the trainer's input size), the
calibration temperature, and `logits(images, meta)` on normalised image tensors. Class
probabilities are softmax(logits / T): T = 1 until `bionas calibrate` fitted one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bionas.errors import BionasError
from bionas.manifests.vocab import Vocab
from bionas.trainer.transforms import BIOSCAN_MEAN, BIOSCAN_STD

log = logging.getLogger(__name__)

CALIBRATION_NAME = "calibration.json"
CALIBRATION_SCHEMA = "bionas.calibration/1"
EXPORT_JSON = "model.json"

# The forms of a model; a supernet run predicts through its soft mixture (see `network`).
FIXED, SUPERNET, TORCHSCRIPT, ONNX = "fixed", "supernet", "torchscript", "onnx"


@dataclass(frozen=True)
class Preprocessing:
    """How a photo becomes the model's input, as the run's dataset was made.

    Ingest: crop the specimen's box grown by `crop_margin` of its size on each side,
    resize its shorter side to `ingest_size`, JPEG at `quality`. Trainer: resize the
    shorter side to `image_size`, centre-crop, scale to [0, 1], normalise with mean/std.
    """

    image_size: int
    ingest_size: int | None = None  # None: the run's dataset is not at hand
    crop_margin: float = 0.1
    quality: int = 90
    mean: tuple[float, float, float] = BIOSCAN_MEAN
    std: tuple[float, float, float] = BIOSCAN_STD

    def to_json(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "ingest_size": self.ingest_size,
            "crop_margin": self.crop_margin,
            "quality": self.quality,
            "mean": list(self.mean),
            "std": list(self.std),
            "rule": "ingest: box grown by crop_margin of its size per side, clipped to the "
            "photo, shorter side resized to ingest_size, JPEG at quality; model: shorter side "
            "resized to image_size (bilinear), centre crop image_size x image_size, RGB "
            "scaled to [0, 1], (x - mean) / std, layout [batch, 3, H, W] float32",
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Preprocessing:
        return cls(
            image_size=int(body["image_size"]),
            ingest_size=None if body.get("ingest_size") is None else int(body["ingest_size"]),
            crop_margin=float(body.get("crop_margin", 0.1)),
            quality=int(body.get("quality", 90)),
            mean=tuple(body.get("mean", cls.mean)),  # type: ignore[arg-type]
            std=tuple(body.get("std", cls.std)),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Calibration:
    """A temperature fitted on a validation split (`bionas calibrate`), and the
    low-confidence threshold on the calibrated top-1 probability chosen there."""

    temperature: float = 1.0
    low_confidence: float | None = None
    body: dict[str, Any] = field(default_factory=dict)  # calibration.json as written


def load_calibration(folder: Path) -> Calibration:
    """FOLDER/calibration.json, or T = 1 (uncalibrated) when there is none."""
    path = Path(folder) / CALIBRATION_NAME
    if not path.exists():
        return Calibration()
    body = json.loads(path.read_text())
    if body.get("schema") != CALIBRATION_SCHEMA:
        raise BionasError(f"{path}: unknown calibration schema {body.get('schema')!r}")
    temperature = float(body["temperature"])
    if not temperature > 0:
        raise BionasError(f"{path}: temperature must be > 0, got {temperature}")
    threshold = body.get("low_confidence_threshold")
    return Calibration(temperature, None if threshold is None else float(threshold), body)


@dataclass
class Predictor:
    """A trained model as prediction sees it (see the module docstring)."""

    source: Path
    network: str  # FIXED, SUPERNET, TORCHSCRIPT or ONNX
    target: str
    class_names: list[str]
    meta_fields: list[str]
    vocabs: dict[str, Vocab]  # the metadata fields' (index 0 = unknown)
    preprocessing: Preprocessing
    calibration: Calibration
    logits_fn: Callable[[Tensor, Tensor], Tensor]  # images [B,3,S,S] f32, meta [B,F] i64
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    about: dict[str, Any] = field(default_factory=dict)  # genotype, metrics, manifest hash

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    @property
    def temperature(self) -> float:
        return self.calibration.temperature

    def meta_row(self, values: Mapping[str, str | None]) -> list[int]:
        """The metadata fields' indices for one sample (missing or unknown -> 0)."""
        return [self.vocabs[f].lookup(values.get(f)) for f in self.meta_fields]

    def logits(self, images: Tensor, meta: Tensor) -> Tensor:
        """Raw logits [B, C] in fp32 (no temperature)."""
        with torch.inference_mode():
            return self.logits_fn(images, meta).float()

    def probabilities(self, images: Tensor, meta: Tensor) -> Tensor:
        """softmax(logits / T): calibrated class probabilities [B, C]."""
        return torch.softmax(self.logits(images, meta) / self.temperature, dim=1)


def load_predictor(path: Path, device: str | torch.device = "cpu") -> Predictor:
    """A run folder or an export folder (it has model.json) as a `Predictor`."""
    path = Path(path)
    if (path / EXPORT_JSON).exists():
        from bionas.trainer.export import load_export

        return load_export(path, device)
    return predictor_of_run(path, device)


def predictor_of_run(run_dir: Path, device: str | torch.device = "cpu") -> Predictor:
    """The eager model of a run folder, with its dataset's crop rule when the dataset is
    still where the run found it (else the ingest defaults, with a warning)."""
    from bionas.trainer.model import architecture_json
    from bionas.trainer.run import load_trained

    device = torch.device(device)
    run = load_trained(run_dir, map_location=device)
    model = run.model.eval()

    def logits_fn(images: Tensor, meta: Tensor) -> Tensor:
        return model(images.to(device), meta.to(device))

    network = SUPERNET if getattr(model, "theta", None) is not None else FIXED
    return Predictor(
        source=Path(run_dir),
        network=network,
        target=run.target,
        class_names=run.class_names,
        meta_fields=list(run.meta_fields),
        vocabs={f: run.vocabs[f] for f in run.meta_fields},
        preprocessing=run_preprocessing(run.dataset_dir, run.image_size, run.dataset_options),
        calibration=calibration_of_run(run_dir, network),
        logits_fn=logits_fn,
        device=device,
        about={"genotype": architecture_json(model)},
    )


def calibration_of_run(run_dir: Path, network: str) -> Calibration:
    """The run's calibration if it still applies: fitted on the network that answers here
    (a search run's T is fitted on its derived network, while its folder predicts with the
    supernet), and on the model.pt there now (a resumed run rewrites it). Else T = 1, with
    a warning."""
    calibration = load_calibration(run_dir)
    fitted_on = calibration.body.get("network")
    problem = None
    if fitted_on and fitted_on != network:
        problem = f"was fitted on the {fitted_on} network, but the {network} answers here"
    fitted_model = calibration.body.get("model_sha256")
    if problem is None and fitted_model and fitted_model != model_sha256(run_dir):
        problem = "was fitted on an earlier model.pt (the run trained on since)"
    if problem:
        log.warning(
            "%s/%s %s: probabilities are uncalibrated (T = 1); run `bionas calibrate %s`",
            run_dir, CALIBRATION_NAME, problem, run_dir,
        )  # fmt: skip
        return Calibration()
    return calibration


def model_sha256(run_dir: Path) -> str | None:
    """sha256 of RUN_DIR/model.pt (what a calibration was fitted on), None if absent."""
    from bionas.shards.writer import file_sha256

    path = Path(run_dir) / "model.pt"
    return file_sha256(path) if path.exists() else None


def run_preprocessing(
    dataset_dir: Path,
    image_size: int,
    recorded: Mapping[str, Any] | None = None,
    *,
    strict: bool = False,
) -> Preprocessing:
    """The crop rule of the run's dataset: its manifest's ingest options, else the copy the
    run recorded at train time (config.json `dataset_options`), else ingest's defaults with
    a warning — or, `strict` (export), an error: a wrong crop rule changes predictions."""
    from bionas.manifests.manifest import load_manifest

    try:
        options = load_manifest(dataset_dir).body.get("options", {})
    except (FileNotFoundError, ValueError, BionasError) as err:
        if recorded:
            options = recorded
        elif strict:
            raise BionasError(
                f"the crop rule of the run's dataset is unknown: {dataset_dir} cannot be read "
                f"({err}) and the run predates recording it. Put the dataset back at "
                f"{dataset_dir} (or a copy there) and export again"
            ) from None
        else:
            log.warning(
                "the run's dataset %s cannot be read (%s): crops use ingest's defaults "
                "(margin 0.1, JPEG 90; batch prediction resizes them to 256 px like ingest)",
                dataset_dir, err,
            )  # fmt: skip
            return Preprocessing(image_size=image_size)
    return Preprocessing(
        image_size=image_size,
        ingest_size=options.get("size"),
        crop_margin=float(options.get("crop_margin", 0.1)),
        quality=int(options.get("quality", 90)),
    )
