"""Synthetic specimen photos: a microscope well and an insect whose look depends on its order.

Every image is a pure function of (seed, row, order, bbox), so the output does not depend
on how many worker processes draw them. The specimen's shapes come from
`bionas.ingest.synth_specimen`; this module paints them, the well and the sensor noise, and
writes the file in one of the real-world variants (or corruptions) ingest must handle.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bionas.ingest.synth_specimen import specimen_shapes

WIDTH, HEIGHT = 1024, 768
JPEG_QUALITY = 90
# How a file is written: "" = plain RGB JPEG; the rest are real-world variants or corruptions.
FILE_VARIANTS = (
    "",
    "png_named_jpg",
    "grayscale_jpeg",
    "cmyk_jpeg",
    "exif_orientation_6",
    "truncated_jpeg",
    "not_an_image",
)
NOT_AN_IMAGE_BYTES = b"<html><body><h1>404 Not Found</h1>image unavailable</body></html>\n"


@dataclass(frozen=True)
class ImageTask:
    """One file to write: where, what to draw, and how to encode it (see FILE_VARIANTS)."""

    path: str
    seed: int
    row: int
    order: str  # the specimen's true order, drawn even when the CSV hides it
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 inside the frame
    variant: str = ""


def write_image(task: ImageTask) -> str:
    """Draw and write one image file (the Pool worker); returns its path."""
    image = render_specimen(task.seed, task.row, task.order, task.bbox)
    Path(task.path).write_bytes(encode(image, task.variant))
    return task.path


def encode(image: Image.Image, variant: str = "") -> bytes:
    """The file bytes for an RGB image written as `variant`."""
    if variant == "not_an_image":
        return NOT_AN_IMAGE_BYTES
    buf = io.BytesIO()
    if variant == "png_named_jpg":
        image.save(buf, "PNG", compress_level=1)
    elif variant == "grayscale_jpeg":
        image.convert("L").save(buf, "JPEG", quality=JPEG_QUALITY)
    elif variant == "cmyk_jpeg":
        image.convert("CMYK").save(buf, "JPEG", quality=JPEG_QUALITY)
    elif variant == "exif_orientation_6":
        # Orientation 6 = "rotate 90 deg clockwise to display": store the photo turned
        # counter-clockwise so that honouring the tag gives back the upright 1024x768 image.
        exif = Image.Exif()
        exif[0x0112] = 6
        turned = image.transpose(Image.Transpose.ROTATE_90)
        turned.save(buf, "JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
    elif variant in ("", "truncated_jpeg"):
        image.save(buf, "JPEG", quality=JPEG_QUALITY)
    else:
        raise ValueError(f"unknown image variant {variant!r}")
    data = buf.getvalue()
    return data[: len(data) // 2] if variant == "truncated_jpeg" else data


def render_specimen(
    seed: int, row: int, order: str, bbox: tuple[int, int, int, int]
) -> Image.Image:
    """The 1024x768 RGB photo of row `row`: well background plus a specimen filling `bbox`."""
    rng = np.random.default_rng([seed, row, 0x1A5E])
    image = _background(rng)
    draw = ImageDraw.Draw(image, "RGBA")
    shapes = specimen_shapes(order, bbox, rng)
    for kind, points, fill, line, width in shapes:
        flat = points.ravel().tolist()
        if kind == "poly":
            draw.polygon(flat, fill=fill, outline=line)
        else:
            draw.line(flat, fill=line, width=max(1, round(width)), joint="curve")
    # Soft focus on the specimen only: a blur of the whole frame would cost 10x more.
    x0, y0, x1, y1 = bbox
    box = (max(0, x0 - 8), max(0, y0 - 8), min(WIDTH, x1 + 8), min(HEIGHT, y1 + 8))
    image.paste(image.crop(box).filter(ImageFilter.GaussianBlur(0.8)), box)
    gx, gy = (int(v) for v in rng.integers(0, _GRAIN_MARGIN, 2))
    grain = _grain()[gy : gy + HEIGHT, gx : gx + WIDTH, None]  # sensor noise
    return Image.fromarray(np.clip(np.asarray(image, np.int16) + grain, 0, 255).astype(np.uint8))


_SHIFT = 64  # how far the well's centre may sit from the photo's centre, in pixels
_RADIUS_STEP = 3  # pixels per radius level: the largest distance must fit in a uint8
_GRAIN_MARGIN = 256


@functools.lru_cache(maxsize=1)
def _radius_map() -> Image.Image:
    """Distance / 3 from the centre of a frame a little larger than the photo (cropped per image)."""
    y, x = np.mgrid[0 : HEIGHT + 2 * _SHIFT, 0 : WIDTH + 2 * _SHIFT]
    r = np.hypot(x - WIDTH / 2 - _SHIFT, y - HEIGHT / 2 - _SHIFT) / _RADIUS_STEP
    return Image.fromarray(np.round(r).astype(np.uint8))


@functools.lru_cache(maxsize=1)
def _grain() -> np.ndarray:
    """Fixed sensor noise in [-5, 5]; each photo reads it through its own random window."""
    size = (HEIGHT + _GRAIN_MARGIN, WIDTH + _GRAIN_MARGIN)
    return np.random.default_rng(0x6A1).integers(-5, 6, size, dtype=np.int16)


def _background(rng: np.random.Generator) -> Image.Image:
    """A plastic well seen from above: grey-white floor, a bright rim, a soft vignette."""
    radius, wall = rng.uniform(400, 520), rng.uniform(18, 40)
    r = np.arange(256, dtype=np.float32) * _RADIUS_STEP
    inside = 210 + 12 * (1 - (r / radius) ** 2)  # brighter in the middle of the well
    rim = 22 * np.exp(-(((r - radius) / wall) ** 2))
    rim -= 12 * np.exp(-(((r - radius + 2 * wall) / wall) ** 2))  # shadow inside the wall
    outside = 200 - 0.06 * np.clip(r - radius, 0, None)  # vignette towards the corners
    profile = np.where(r < radius, inside, outside) + rim
    tint = np.array([0.985, 0.99, 1.0]) + rng.normal(0, 0.012, 3)  # cool grey to beige
    cx, cy = (int(v) for v in rng.integers(-_SHIFT, _SHIFT + 1, 2))
    left, top = _SHIFT - cx, _SHIFT - cy
    radii = _radius_map().crop((left, top, left + WIDTH, top + HEIGHT))
    channels = [radii.point(np.clip(profile * t, 0, 255).astype(np.uint8).tolist()) for t in tint]
    return Image.merge("RGB", channels)
