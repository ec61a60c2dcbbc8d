"""Image transforms of the trainer: JPEG -> uint8 pixels at the training size (in the
DataLoader workers), then normalisation with the BIOSCAN-5M mean/std (on the device)."""

from __future__ import annotations

import functools
import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor

# RGB mean/std of the cropped BIOSCAN-5M images (SPEC §3).
BIOSCAN_MEAN = (0.7628, 0.7650, 0.7637)
BIOSCAN_STD = (0.1421, 0.1564, 0.1731)
# (x / 255 - mean) / std == x * _SCALE + _SHIFT
_SCALE = 1.0 / (255.0 * torch.tensor(BIOSCAN_STD).view(3, 1, 1))
_SHIFT = -torch.tensor(BIOSCAN_MEAN).view(3, 1, 1) / torch.tensor(BIOSCAN_STD).view(3, 1, 1)
# What a damaged JPEG or JSON record raises while decoding: each is one counted bad sample.
# `decode_record` turns JSON's RecursionError (deep nesting) into a ValueError; it is listed
# too, as is EOFError, so that no parser's way of failing can end a run. (A seeded fuzz of
# 20,000 mutated JPEG/PNG/GIF/BMP/TIFF/WebP files raised only OSError, ValueError and
# DecompressionBombError.)
DECODE_ERRORS = (
    OSError, ValueError, SyntaxError, EOFError, RecursionError, Image.DecompressionBombError,
)  # fmt: skip


def decode_image(
    image: Image.Image | bytes, image_size: int = 224, formats: tuple[str, ...] | None = None
) -> Tensor:
    """JPEG bytes or a PIL image -> uint8 tensor [3, S, S]: resize the shorter side to S,
    centre-crop S x S. For CUDA training batches travel like this (a quarter of float32's
    bytes through the worker queues, pinned memory and the host-to-device copy) and
    `normalize_images` runs on the device; on CPU the DataLoader workers normalise.
    `formats`: the PIL formats bytes may be (shard images: `IMAGE_FORMATS`); None, any."""
    if isinstance(image, bytes | bytearray | memoryview):
        image = Image.open(io.BytesIO(image), formats=formats)
        image.draft("RGB", (image_size, image_size))  # JPEG DCT scaling, both sides >= S
    image = image.convert("RGB")  # decodes now: a truncated JPEG raises here
    width, height = image.size
    scale = image_size / min(width, height)
    size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def normalize_images(pixels: Tensor) -> Tensor:
    """uint8 [..., 3, S, S] -> float32 scaled to [0, 1] and normalised with the BIOSCAN
    mean/std, on the pixels' device: (x / 255 - mean) / std as one multiply-add."""
    scale, shift = _affine(pixels.device)
    return torch.addcmul(shift, pixels.float(), scale)


@functools.cache
def _affine(device: torch.device) -> tuple[Tensor, Tensor]:
    """The normalisation constants on `device`, copied there once (not once per batch)."""
    return _SCALE.to(device), _SHIFT.to(device)


def preprocess_image(
    image: Image.Image | bytes, image_size: int = 224, formats: tuple[str, ...] | None = None
) -> Tensor:
    """JPEG bytes or a PIL image -> normalised float tensor [3, S, S] (decode, then
    normalise): what evaluation and `bionas predict` feed the model."""
    return normalize_images(decode_image(image, image_size, formats))
