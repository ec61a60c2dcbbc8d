"""One image: decode, crop to the bounding box, resize, re-encode (SPEC §4 step 2).

The hot path of ingest. It avoids full-frame copies: JPEG draft (DCT) scaling decodes
straight to a smaller frame when the crop is much larger than the output, and crop +
resize happen in one `resize(box=...)` call.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

Box = tuple[float, float, float, float]
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageSpec:
    """How every image is turned into a sample image."""

    size: int = 256  # shorter side of the output, pixels
    quality: int = 90  # JPEG quality of the output
    crop_margin: float = 0.1  # fraction of the bbox's width/height added on each side
    draft: bool = True  # use JPEG DCT scaling when the crop is >= 2x the output


class ImageReject(Exception):
    """An image that cannot become a sample; `reason` is a stable reject code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def crop_box(bbox: Box | None, width: int, height: int, margin: float) -> Box:
    """The bbox grown by `margin` on each side and clipped to the image; whole image if none."""
    if bbox is None:
        return (0.0, 0.0, float(width), float(height))
    x0, y0, x1, y1 = bbox
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    box = (max(0.0, x0 - mx), max(0.0, y0 - my), min(width, x1 + mx), min(height, y1 + my))
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise ImageReject("bad_bbox", f"bbox {bbox} has no area inside the {width}x{height} image")
    return box


def output_size(box: Box, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side equal to `size` (never upscaled beyond it)."""
    w, h = box[2] - box[0], box[3] - box[1]
    scale = size / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageReject("not_an_image", f"not a readable image ({len(data)} bytes)") from exc


def _scale_bbox(bbox: Box | None, sx: float, sy: float) -> Box | None:
    if bbox is None:
        return None
    return (bbox[0] * sx, bbox[1] * sy, bbox[2] * sx, bbox[3] * sy)


def process_image(
    data: bytes, bbox: Box | None, spec: ImageSpec, frame: tuple[int, int] | None = None
) -> bytes:
    """Decode `data`, crop to `bbox` (+margin), resize, encode JPEG; raise ImageReject.

    `bbox` is in the coordinates of `frame` (the bbox table's width/height of the
    upright photo); when the decoded image has another size the bbox is scaled.
    """
    image = _open(data)
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)  # rare: decode fully, then rotate
        width, height = image.size
        if frame is not None and frame != (width, height) and frame[0] > 0 and frame[1] > 0:
            bbox = _scale_bbox(bbox, width / frame[0], height / frame[1])
        box = crop_box(bbox, width, height, spec.crop_margin)
        out_w, out_h = output_size(box, spec.size)
        if spec.draft and image.format == "JPEG":
            box = _draft(image, box, out_w, out_h)
        if image.mode != "RGB":
            image = image.convert("RGB")
        out = image.resize((out_w, out_h), Image.Resampling.LANCZOS, box=box)
    except ImageReject:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReject("corrupt_image", f"cannot decode: {exc}") from exc
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=spec.quality)
    return buffer.getvalue()


def _draft(image: Image.Image, box: Box, out_w: int, out_h: int) -> Box:
    """Ask libjpeg for a 1/2, 1/4 or 1/8 DCT-scaled decode that keeps the crop >= output."""
    crop_w, crop_h = box[2] - box[0], box[3] - box[1]
    factor = min(crop_w / out_w, crop_h / out_h)
    if factor < 2:
        return box
    width, height = image.size
    request = (math.ceil(width / factor), math.ceil(height / factor))
    image.draft("RGB" if image.mode == "RGB" else image.mode, request)
    sx, sy = image.size[0] / width, image.size[1] / height
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
