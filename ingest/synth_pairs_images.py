"""Photos of the `--task pairs` synthetic set: two identical dark dots on a light noisy floor.

Every photo is a pure function of its `PairTask` (seed, row and the dot centres chosen by
`bionas.ingest.synth_pairs`), so the output does not depend on how many processes draw.
Nothing here may differ between classes except where the two dots sit: the floor is
isotropic noise and both dots are the same soft disk, so only the pair's angle tells the
class apart (see `synth_pairs` for why that makes the architecture's operations matter).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bionas.ingest.synth_images import HEIGHT, WIDTH, encode

DOT_RADIUS = 22.0  # pixels of the 1024x768 photo, to the middle of the soft edge
DOT_EDGE = 8.0  # width of the soft edge (alpha falls from 1 to 0 across it)
NOISE_STEP = 4  # the floor's noise is drawn on a grid 4x coarser than the photo ...
NOISE_SIGMA = 3.0  # ... and blurred there with this Gaussian (12 photo pixels)
_GRAIN_MARGIN = 64


@dataclass(frozen=True)
class PairTask:
    """One photo to write: where, and the two dot centres (x, y) in photo pixels."""

    path: str
    seed: int
    row: int
    dots: tuple[tuple[float, float], tuple[float, float]]


def write_pair_image(task: PairTask) -> str:
    """Draw and write one photo (the Pool worker); returns its path."""
    image = render_pair(task.seed, task.row, task.dots)
    Path(task.path).write_bytes(encode(image))
    return task.path


def render_pair(
    seed: int, row: int, dots: tuple[tuple[float, float], tuple[float, float]]
) -> Image.Image:
    """The 1024x768 RGB photo of row `row`: a noisy floor and two identical dark dots."""
    rng = np.random.default_rng([seed, row, 0x9A125])
    floor = _floor(rng)
    gx, gy = (int(v) for v in rng.integers(0, _GRAIN_MARGIN, 2))
    grey = floor + _grain()[gy : gy + HEIGHT, gx : gx + WIDTH]  # sensor noise, float32
    ink = rng.uniform(25, 70)  # how dark both dots are in this photo
    for x, y in dots:
        _stamp_dot(grey, x, y, ink)
    grey_image = Image.fromarray(np.clip(grey + 0.5, 0, 255).astype(np.uint8), "L")
    tint = np.array([0.985, 0.99, 1.0]) + rng.normal(0, 0.012, 3)  # cool grey to beige
    luts = [np.clip(np.arange(256) * t, 0, 255).astype(np.uint8).tolist() for t in tint]
    return Image.merge("RGB", [grey_image.point(lut) for lut in luts])


def _floor(rng: np.random.Generator) -> np.ndarray:
    """Light isotropic noise with a random brightness and contrast, float32 (HEIGHT, WIDTH).

    White noise blurred by a Gaussian (the only separable kernel that is also isotropic)
    on a coarse grid, then enlarged: cheap, and no direction is preferred, so the floor
    gives a network nothing that differs between a horizontal and a vertical pair.
    """
    kernel = _gaussian_taps()
    pad = len(kernel) // 2
    h, w = HEIGHT // NOISE_STEP, WIDTH // NOISE_STEP
    noise = rng.standard_normal((h + 2 * pad, w + 2 * pad), dtype=np.float32)
    noise = sum(k * noise[i : i + h] for i, k in enumerate(kernel))
    noise = sum(k * noise[:, i : i + w] for i, k in enumerate(kernel))
    noise /= np.float32(np.sum(kernel**2))  # unit standard deviation
    brightness, contrast = rng.uniform(190, 225), rng.uniform(4, 11)
    coarse = Image.fromarray((brightness + contrast * noise).astype(np.float32), "F")
    return np.asarray(coarse.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC), np.float32)


@functools.lru_cache(maxsize=1)
def _gaussian_taps() -> np.ndarray:
    radius = int(3 * NOISE_SIGMA)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / NOISE_SIGMA) ** 2)
    return (taps / taps.sum()).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _grain() -> np.ndarray:
    """Fixed sensor noise in [-4, 4]; each photo reads it through its own random window."""
    size = (HEIGHT + _GRAIN_MARGIN, WIDTH + _GRAIN_MARGIN)
    return np.random.default_rng(0x6A2).integers(-4, 5, size).astype(np.float32)


def _stamp_dot(grey: np.ndarray, x: float, y: float, ink: float) -> None:
    """Blend a soft disk of level `ink` centred at sub-pixel (x, y) into `grey`, in place."""
    reach = int(DOT_RADIUS + DOT_EDGE) + 2
    x0, y0 = max(0, int(x) - reach), max(0, int(y) - reach)
    x1, y1 = min(WIDTH, int(x) + reach + 1), min(HEIGHT, int(y) + reach + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    distance = np.hypot(xx + 0.5 - x, yy + 0.5 - y)  # pixel centres sit at +0.5
    alpha = np.clip((DOT_RADIUS + DOT_EDGE / 2 - distance) / DOT_EDGE, 0.0, 1.0)
    alpha = alpha * alpha * (3 - 2 * alpha)  # smoothstep: no hard rim
    patch = grey[y0:y1, x0:x1]
    patch += alpha.astype(np.float32) * (ink - patch)
