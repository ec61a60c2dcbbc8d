"""`bionas predict`: top-k classes of single images, with optional metadata (SPEC §6).

Metadata values are raw strings looked up in the run's own vocabularies; a field left
out, or a value the vocabulary does not know, is fed as unknown (index 0), exactly as
a training sample with that field empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bionas.errors import BionasError

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


def load_image(path: Path, image_size: int) -> torch.Tensor:
    """The model input [3, S, S] of an image file; a clear error when it cannot be read."""
    from bionas.trainer.transforms import preprocess_image

    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise BionasError(f"cannot read image {path}: {err.strerror or err}") from err
    try:
        return preprocess_image(data, image_size)
    except Image.UnidentifiedImageError as err:
        raise BionasError(f"{path} is not an image in a format PIL can read") from err
    except _IMAGE_ERRORS as err:
        raise BionasError(f"{path} is not a readable image ({type(err).__name__}: {err})") from err


def predict_images(
    run: Any, images: Sequence[Path], meta: Mapping[str, str], *, top_k: int = 5
) -> dict[str, Any]:
    """Top-k classes with probabilities for each image (`run`: trainer.run.TrainedRun)."""
    if top_k < 1:
        raise BionasError(f"--top-k must be >= 1, got {top_k}")
    tensors = [load_image(Path(p), run.image_size) for p in images]  # fail before computing
    indices, notes = meta_indices(meta, run.meta_fields, run.vocabs)
    k = min(top_k, len(run.class_names))
    model = run.model.eval()
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(tensors), BATCH):
        batch = torch.stack(tensors[start : start + BATCH]).to(device)
        meta_batch = torch.tensor([indices] * len(batch), dtype=torch.long, device=device)
        with torch.inference_mode():
            probs = torch.softmax(model(batch, meta_batch).float(), dim=1)
        top = torch.topk(probs, k, dim=1)
        for offset, (p, i) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True)):  # fmt: skip
            results.append(
                {
                    "image": str(images[start + offset]),
                    "top_k": [
                        {"class": run.class_names[c], "probability": prob}
                        for prob, c in zip(p, i, strict=True)
                    ],
                }
            )
    return {"target": run.target, "meta": notes, "predictions": results}
