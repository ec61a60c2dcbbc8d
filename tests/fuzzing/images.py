"""Fuzz target 1: image bytes through ingest's per-image path (`read_image`, then
`process_image` with the ImageSpec ingest builds). Each case must give a JPEG of the
spec's size or an `ImageReject` whose reason the README documents."""

from __future__ import annotations

import io
import random
from functools import cache
from pathlib import Path

import numpy as np
from ingest_helpers import encoded
from PIL import Image

from bionas.ingest.config import IngestConfig
from bionas.ingest.execute import image_spec
from bionas.ingest.images import IMAGE_REASONS, ImageReject, process_image, read_image
from bionas.safe_paths import real_root

from .mutate import mutate_bytes
from .runner import Outcome, crash_detail

README = Path(__file__).resolve().parents[2] / "README.md"
OUTPUT_SIZE = 32  # ingest --size: small, so a case takes about a millisecond


def _photo(width: int, height: int) -> Image.Image:
    """A photo-like RGB image: a gradient with noise (so every DCT block has detail)."""
    rng = np.random.default_rng(width * height)
    ramp = np.linspace(40, 215, width)[None, :, None] + np.linspace(-30, 30, height)[:, None, None]
    noise = rng.normal(0, 25, (height, width, 3))
    return Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8), "RGB")


@cache
def image_seeds() -> dict[str, bytes]:
    """Valid inputs of each kind ingest accepts: JPEGs (one large enough for draft
    decoding at --size 32, one EXIF-rotated) and PNGs in the modes it converts."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: exif_transpose decodes the whole frame
    gradient = np.tile(np.linspace(0, 65535, 48), (40, 1)).astype(np.uint16)
    return {
        "jpeg": encoded(_photo(64, 48), quality=85),
        "jpeg_progressive": encoded(_photo(160, 120), quality=75, progressive=True),
        "jpeg_exif_rotated": encoded(_photo(64, 48), exif=exif.tobytes()),
        "jpeg_gray": encoded(_photo(48, 40).convert("L")),
        "png_rgb": encoded(_photo(48, 40), "PNG"),
        "png_16bit": encoded(Image.fromarray(gradient), "PNG"),
        "png_palette_alpha": encoded(_photo(48, 40).quantize(16), "PNG", transparency=0),
    }


def image_case(seed: int, index: int) -> tuple[str, bytes, tuple | None, tuple | None, list]:
    """(seed image, mutated bytes, bbox, frame, mutations) of case `index`."""
    rng = random.Random(f"images:{seed}:{index}")
    seeds = image_seeds()
    name, other = rng.choice(sorted(seeds)), rng.choice(sorted(seeds))
    data, mutations = mutate_bytes(seeds[name], rng, seeds[other])
    width, height = Image.open(io.BytesIO(seeds[name])).size
    # boxes as the plan hands them on (finite, inside the frame): none, inside, the whole
    # frame; the bbox table's frame: none, the photo's, or twice it (the box is scaled)
    bbox = rng.choice([None, (4.0, 3.0, width - 6.0, height - 2.0), (0.0, 0.0, width, height)])
    frame = rng.choice([None, (width, height), (2 * width, 2 * height)])
    if frame and bbox:
        bbox = tuple(v * frame[0] / width for v in bbox)
    return name, data, bbox, frame, mutations


def documented_reasons() -> set[str]:
    """The image reject reasons that the README's `bionas ingest` section names."""
    text = README.read_text()
    section = text[text.index("### `bionas ingest`") :]
    return {reason for reason in IMAGE_REASONS if f"`{reason}`" in section}


class Images:
    """Mutated JPEG/PNG bytes: a re-openable JPEG of plausible size, or a documented reject."""

    def __init__(self, workdir: Path) -> None:
        self.root = workdir / "images-target"
        self.root.mkdir(parents=True, exist_ok=True)
        config = IngestConfig(Path("metadata.csv"), self.root, workdir, size=OUTPUT_SIZE)
        self.spec = image_spec(config)  # as ingest builds it
        self.documented = documented_reasons()

    def run(self, seed: int, index: int) -> Outcome:
        name, data, bbox, frame, mutations = image_case(seed, index)
        (self.root / "case.jpg").write_bytes(data)
        where = f"{name} after {'+'.join(mutations)}, bbox {bbox}, frame {frame}"
        try:
            jpg = process_image(read_image(real_root(self.root), "case.jpg", self.spec),
                                bbox, self.spec, frame)  # fmt: skip
        except ImageReject as exc:
            if exc.reason not in self.documented or not exc.detail:
                return Outcome(index, "failure", detail=f"{where}: undocumented reject {exc!r}")
            return Outcome(index, "ok", {f"rejected {exc.reason}": 1})
        except Exception as exc:
            return Outcome(index, "crash", detail=f"{where}: {crash_detail(exc)}")
        problem = self.check_output(jpg)
        if problem:
            return Outcome(index, "failure", detail=f"{where}: {problem}")
        return Outcome(index, "ok", {"accepted": 1})

    def check_output(self, jpg: bytes) -> str | None:
        """What is wrong with an output image (None: an RGB JPEG, shorter side = --size)."""
        try:
            image = Image.open(io.BytesIO(jpg), formats=("JPEG",))
            image.load()
        except Exception as exc:
            return f"the output does not re-open as a JPEG: {exc!r}"
        short, long = sorted(image.size)
        spec = self.spec
        if image.mode != "RGB" or short != spec.size or long > spec.max_aspect * spec.size:
            return f"implausible output: {image.mode} {image.size}"
        return None
