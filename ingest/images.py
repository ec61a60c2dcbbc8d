"""One image: read, decode, crop to the bounding box, resize, re-encode (SPEC §4 step 2).

The hot path of ingest. It avoids full-frame copies: JPEG draft (DCT) scaling decodes
straight to a smaller frame when the crop is much larger than the output, and crop +
resize happen in one `resize(box=...)` call; 16-bit and alpha conversions run on the
small output.

It is also the boundary where one hostile file must stay that file's problem: every
failure to read or decode an image is an `ImageReject` with a reason from
`IMAGE_REASONS`, never an exception that stops the worker. Limits on the file size, the
declared pixel count and the crop's shape are checked before the pixels are decoded.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bionas.safe_paths import FileTooLarge, UnsafePath, read_file_inside

Box = tuple[float, float, float, float]
_EXIF_ORIENTATION = 0x0112

# The image-stage reject reasons (README "bionas ingest" lists them too).
IMAGE_REASONS = {
    "missing_file": "no file at the image path",
    "unreadable_file": "the file exists but reading it failed (permissions, I/O error)",
    "unsafe_path": "the path leaves --images after resolving symlinks and `..`, or names "
    "a FIFO, device, socket or directory instead of a regular file; never opened",
    "too_large": "the file is above max_file_bytes, or its header declares more than "
    "max_pixels pixels; rejected before decoding",
    "not_an_image": "not a JPEG (MPO included) or PNG, whatever the file name says",
    "corrupt_image": "a JPEG/PNG that fails to decode; the detail names the exception",
    "too_small": "the crop's shorter side is below min_crop_side source pixels",
    "extreme_aspect": "the crop's long/short side ratio is above max_aspect",
    "bad_bbox": "the bbox has no area inside the photo",
    # decided beside the image, in the same worker stage: a record over the reader's cap
    # (a cell of megabytes) would make training drop the whole shard
    "record_too_large": "the sample's record (its metadata cells as JSON) is over "
    "MAX_RECORD_BYTES (1 MiB)",
}

# What a photo can be. MPO (stereo and some phone cameras: JPEG frames plus an index) is
# opened by Pillow's JPEG factory, which has no opener registered under "MPO" (naming it
# raises KeyError). Everything else is refused unopened: EPS would run Ghostscript, and
# the other plugins fail on a few bytes with exception types of their own.
PHOTO_FORMATS = ("JPEG", "PNG")
_PHOTO_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG SOI + a marker; PNG
JPEG_MAX_SIDE = 65_500  # libjpeg cannot write a wider or taller image
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# Transparent pixels become white: BIOSCAN photos show the specimen on a bright well
# (RGB mean 0.76), so a cut-out on white looks like the photos the model is trained on.
_BACKGROUND = (255, 255, 255, 255)


@dataclass(frozen=True)
class ImageSpec:
    """How every image is turned into a sample image, and which images are refused."""

    size: int = 256  # shorter side of the output, pixels
    quality: int = 90  # JPEG quality of the output
    crop_margin: float = 0.1  # fraction of the bbox's width/height added on each side
    draft: bool = True  # use JPEG DCT scaling when the crop is >= 2x the output
    # 64 MiB: a 1024x768 BIOSCAN JPEG is ~0.1 MB and a 100 MP camera JPEG ~50 MB.
    max_file_bytes: int = 64 * 2**20
    # 160 MP admits photos of today's cameras up to medium format (Phase One IQ4: 151 MP)
    # and stays under Pillow's own refusal at 2 x 89.5 MP. A JPEG this large decodes at 1/8 scale
    # (draft); the worst case, a PNG, is 640 MB of RGBA: bounded per worker.
    max_pixels: int = 160_000_000
    # 16 source pixels: below that a crop is no specimen photo but a speck enlarged 16x or
    # more (a 1x1 JPEG became a blank 256x256 sample). In `original_256` photos (1/3 of
    # `original_full`) this is a 48 px box in the 1024x768 frame.
    min_crop_side: int = 16
    # BIOSCAN crops are about 1:1 to 1:4; 20 leaves room for long-legged specimens while
    # a 2000x1 px image (once a 512000x256, 0.5 GB output) is refused.
    max_aspect: float = 20.0


class ImageReject(Exception):
    """An image that cannot become a sample; `reason` is a key of IMAGE_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # picklable across the worker pool, like any exception should be
        return (type(self), (self.reason, self.detail))


def read_image(root: str, relative: str, spec: ImageSpec) -> bytes:
    """The bytes of image `relative` under the resolved `root` (`safe_paths.real_root`).

    ImageReject for an unsafe path or a file above the size limit; FileNotFoundError and
    other OSErrors of the read itself pass through (the caller decides what they mean).
    """
    try:
        return read_file_inside(root, relative, spec.max_file_bytes)
    except UnsafePath as exc:
        raise ImageReject("unsafe_path", exc.detail) from exc
    except FileTooLarge as exc:
        raise ImageReject("too_large", str(exc)) from exc


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


def check_crop(box: Box, spec: ImageSpec) -> tuple[int, int]:
    """The output size of crop `box` (source pixels); ImageReject when its shape is refused."""
    w, h = box[2] - box[0], box[3] - box[1]
    shape = f"the {w:.0f}x{h:.0f} px crop"
    if max(w, h) > spec.max_aspect * min(w, h):
        raise ImageReject("extreme_aspect", f"{shape} is longer than {spec.max_aspect:g}:1")
    if min(w, h) < spec.min_crop_side:
        raise ImageReject("too_small", f"{shape} has a side below {spec.min_crop_side} px")
    out_w, out_h = output_size(box, spec.size)
    if max(out_w, out_h) > JPEG_MAX_SIDE:
        raise ImageReject(
            "extreme_aspect", f"{shape} at --size {spec.size} would be {out_w}x{out_h}, "
            f"above JPEG's {JPEG_MAX_SIDE} px side",
        )  # fmt: skip
    return out_w, out_h


def process_image(
    data: bytes, bbox: Box | None, spec: ImageSpec, frame: tuple[int, int] | None = None
) -> bytes:
    """Decode `data`, crop to `bbox` (+margin), resize, encode JPEG; raise ImageReject.

    `bbox` is in the coordinates of `frame` (the bbox table's width/height of the
    upright photo); when the decoded image has another size the bbox is scaled.
    """
    image = _open(data, spec)
    try:
        out = _crop_and_resize(image, bbox, spec, frame)
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG", quality=spec.quality)
    except (ImageReject, MemoryError):
        # MemoryError within the limits is this machine's state, not the file's fault:
        # the shard fails and is redone on the next run instead of a permanent reject
        raise
    except Exception as exc:  # any plugin's failure on these bytes is this file's reject
        raise ImageReject("corrupt_image", f"cannot decode: {_describe(exc)}") from exc
    return buffer.getvalue()


def _open(data: bytes, spec: ImageSpec) -> Image.Image:
    """Read the header only (Pillow decodes lazily): format and declared size checked."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89.5 MP; the limit that counts is spec.max_pixels below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=PHOTO_FORMATS)
    except UnidentifiedImageError as exc:
        if data.startswith(_PHOTO_SIGNATURES):  # a photo's signature, then a broken header
            raise ImageReject(  # not Pillow's message: it names the buffer's address
                "corrupt_image", f"a JPEG/PNG signature, then an unreadable header "
                f"({len(data)} bytes, starting {data[:8]!r})",
            ) from exc  # fmt: skip
        raise ImageReject(
            "not_an_image", f"not a JPEG or PNG ({len(data)} bytes, starting {data[:8]!r})"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageReject("too_large", str(exc)) from exc
    except MemoryError:
        raise
    except Exception as exc:  # a JPEG/PNG header the plugin cannot parse
        raise ImageReject("corrupt_image", f"cannot read header: {_describe(exc)}") from exc
    width, height = image.size
    if width * height > spec.max_pixels:
        raise ImageReject(
            "too_large", f"{image.format} declares {width}x{height} = {width * height} pixels, "
            f"more than {spec.max_pixels}",
        )  # fmt: skip
    return image


def _crop_and_resize(
    image: Image.Image, bbox: Box | None, spec: ImageSpec, frame: tuple[int, int] | None
) -> Image.Image:
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)  # rare: decode fully, then rotate
    width, height = image.size
    if frame is not None and frame != (width, height) and frame[0] > 0 and frame[1] > 0:
        bbox = _scale_bbox(bbox, width / frame[0], height / frame[1])
    box = crop_box(bbox, width, height, spec.crop_margin)
    out_w, out_h = check_crop(box, spec)
    if spec.draft and image.format in ("JPEG", "MPO"):
        box = _draft(image, box, out_w, out_h)
    image = _resizable(image)
    out = image.resize((out_w, out_h), Image.Resampling.LANCZOS, box=box)
    return _to_rgb(out)


def _resizable(image: Image.Image) -> Image.Image:
    """Palette, 1-bit and colour-key transparency become plain modes before resampling."""
    transparent = "transparency" in image.info
    if image.mode in ("P", "PA"):
        return image.convert("RGBA" if transparent or image.mode == "PA" else "RGB")
    if image.mode == "1":
        return image.convert("L")
    if transparent and image.mode in ("L", "RGB"):
        return image.convert("RGBA")
    return image  # RGB, L, CMYK, RGBA, LA and 16-bit resample as they are


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit scaled (not clipped), alpha composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT:
        levels = np.asarray(image).astype(np.int64).clip(0, 65535)
        image = Image.fromarray(((levels + 128) // 257).astype(np.uint8), "L")
    elif image.mode in _ALPHA:
        return Image.alpha_composite(
            Image.new("RGBA", image.size, _BACKGROUND), image.convert("RGBA")
        ).convert("RGB")
    return image.convert("RGB")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _scale_bbox(bbox: Box | None, sx: float, sy: float) -> Box | None:
    if bbox is None:
        return None
    return (bbox[0] * sx, bbox[1] * sy, bbox[2] * sx, bbox[3] * sy)


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
