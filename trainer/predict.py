"""`bionas predict`: top-k classes of single images, with optional metadata (SPEC §6).

The model comes as a `Predictor` (a run folder or an export folder, `load_predictor`).

Metadata values are raw strings looked up in the run's own vocabularies; a field left
out, or a value the vocabulary does not know, is fed as unknown (index 0), exactly as
a training sample with that field empty.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bionas.errors import BionasError
from bionas.trainer.predictor import Predictor, Preprocessing

BATCH = 32
# What PIL raises on bytes that are not a readable image (UnidentifiedImageError is an OSError).
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def parse_meta(pairs: Sequence[str], allowed: Sequence[str]) -> dict[str, str]:
    """`["dna_bin=BOLD:AAA1234", "class=Insecta"]` -> dict; refuses fields the run lacks."""
    meta: dict[str, str] = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        field = field.strip()
        if not sep or not field:
            raise BionasError(f"--meta {pair!r}: expected FIELD=VALUE, e.g. dna_bin=BOLD:AAA1234")
        if field not in allowed:
            fields = ", ".join(allowed) if allowed else "none (the run uses no metadata)"
            raise BionasError(
                f"--meta {field}: not a metadata field of this run; allowed: {fields}"
            )
        meta[field] = value.strip()
    return meta


def meta_indices(
    meta: Mapping[str, str], fields: Sequence[str], vocabs: Mapping[str, Any]
) -> tuple[list[int], dict[str, dict[str, Any]]]:
    """Vocabulary indices in `fields` order (0 = unknown) and a note per field."""
    indices, notes = [], {}
    for field in fields:
        value = meta.get(field)
        index = vocabs[field].lookup(value)
        indices.append(index)
        notes[field] = {"value": value, "index": index, "known": index != 0}
    return indices, notes


Box = tuple[float, float, float, float]


def parse_box(text: str) -> Box:
    """`"x0,y0,x1,y1"` in the photo's pixels -> a box with x1 > x0 and y1 > y0."""
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or not all(map(math.isfinite, box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise BionasError(
            f"--bbox {text!r}: expected X0,Y0,X1,Y1 with X1 > X0 and Y1 > Y0, e.g. 300,200,700,560"
        )
    return box  # type: ignore[return-value]


def specimen_crop(image: Image.Image, box: Box, margin: float) -> Image.Image:
    """The box grown by `margin` of its size on each side, clipped to the photo: the crop
    `bionas ingest` makes (same rule as its --crop-margin), so the model sees what it
    was trained on."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)  # boxes are given on the upright photo
    x0, y0, x1, y1 = box
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    width, height = image.size
    grown = (max(0.0, x0 - mx), max(0.0, y0 - my), min(width, x1 + mx), min(height, y1 + my))
    if grown[2] - grown[0] < 1 or grown[3] - grown[1] < 1:
        raise BionasError(f"--bbox {box} lies outside the {width}x{height} photo")
    return image.crop(tuple(round(v) for v in grown))


def normalize(pixels: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 [..., 3, S, S] -> float32, (x / 255 - mean) / std with the model's own mean/std,
    on the pixels' device (for BIOSCAN's values, the same numbers as `normalize_images`)."""
    std = torch.tensor(preprocessing.std).view(3, 1, 1)
    scale = 1.0 / (255.0 * std)
    shift = -torch.tensor(preprocessing.mean).view(3, 1, 1) / std
    return torch.addcmul(shift.to(pixels.device), pixels.float(), scale.to(pixels.device))


def load_image(
    path: Path, image_size: int, box: Box | None = None, margin: float = 0.1
) -> torch.Tensor:
    """The model's uint8 pixels [3, S, S] of an image file (cropped to `box` + margin if
    given); a clear error when it cannot be read."""
    from bionas.trainer.transforms import decode_image

    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise BionasError(f"cannot read image {path}: {err.strerror or err}") from err
    try:
        if box is None:
            return decode_image(data, image_size)
        return decode_image(specimen_crop(Image.open(io.BytesIO(data)), box, margin), image_size)
    except Image.UnidentifiedImageError as err:
        raise BionasError(f"{path} is not an image in a format PIL can read") from err
    except _IMAGE_ERRORS as err:
        raise BionasError(f"{path} is not a readable image ({type(err).__name__}: {err})") from err


def predict_images(
    predictor: Predictor,
    images: Sequence[Path],
    meta: Mapping[str, str],
    *,
    top_k: int = 5,
    boxes: Sequence[Box] = (),
    margin: float | None = None,
) -> dict[str, Any]:
    """Top-k classes with probabilities for each image.

    `boxes`: none, or one specimen box per image (photo pixels), cropped as ingest does
    with `margin` (None: the crop margin of the model's dataset). `probability` is
    softmax(logits); `calibrated_probability` softmax(logits / T) with the temperature of
    `bionas calibrate` (T = 1, the same numbers, until one was fitted).
    """
    margin = predictor.preprocessing.crop_margin if margin is None else margin
    if top_k < 1:
        raise BionasError(f"--top-k must be >= 1, got {top_k}")
    if boxes and len(boxes) != len(images):
        raise BionasError(f"{len(boxes)} --bbox for {len(images)} images: give one per image")
    if margin < 0:
        raise BionasError("--crop-margin must be >= 0")
    chosen = list(boxes) or [None] * len(images)
    pixels = [  # fail before computing
        load_image(Path(p), predictor.image_size, box, margin)
        for p, box in zip(images, chosen, strict=True)
    ]
    indices, notes = meta_indices(meta, predictor.meta_fields, predictor.vocabs)
    k = min(top_k, len(predictor.class_names))
    results = []
    for start in range(0, len(pixels), BATCH):
        batch = normalize(torch.stack(pixels[start : start + BATCH]), predictor.preprocessing)
        meta_batch = torch.tensor([indices] * len(batch), dtype=torch.long)
        logits = predictor.logits(batch, meta_batch).cpu()
        probs = torch.softmax(logits, dim=1)
        calibrated = torch.softmax(logits / predictor.temperature, dim=1)
        top = torch.topk(probs, k, dim=1)
        for offset, (p, i) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True)):  # fmt: skip
            row = start + offset
            results.append(
                {
                    "image": str(images[row]),
                    "bbox": list(chosen[row]) if chosen[row] else None,
                    "top_k": [
                        {
                            "class": predictor.class_names[c],
                            "probability": prob,
                            "calibrated_probability": calibrated[offset, c].item(),
                        }
                        for prob, c in zip(p, i, strict=True)
                    ],
                }
            )
    return {
        "target": predictor.target,
        "network": predictor.network,
        "temperature": predictor.temperature,
        "meta": notes,
        "predictions": results,
    }
