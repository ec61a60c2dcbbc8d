"""The synthetic specimen: how an order looks (`Morph`) and the shapes drawn from it.

Shapes are built in a local frame (head towards +x, length about 1), rotated, then
stretched onto the bounding box the metadata promises. `bionas.ingest.synth_images`
paints them onto a photo of a microscope well.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]
Shape = tuple[str, np.ndarray, tuple | None, tuple | None, float]  # kind, points, fill, line, width


@dataclass(frozen=True)
class Morph:
    """How one order looks: body segments tail -> head as (x, half-length, half-width)."""

    segments: tuple[tuple[float, float, float], ...]
    colour: RGB
    accent: RGB = (30, 25, 20)
    wings: int = 0  # 0, 2 or 4
    wing_len: float = 0.5
    wing_width: float = 0.12
    wing_angle: float = 30.0  # degrees between the wing and the body axis, pointing backwards
    wing_rgba: tuple[int, int, int, int] = (235, 240, 245, 110)
    wing_pattern: str = ""  # "veins" | "bands" | "spots"
    leg_pairs: int = 3
    leg_x: float = 0.1  # where the legs attach along the body
    leg_len: float = 0.3
    leg_width: float = 0.015
    antenna: float = 0.15
    texture: str = ""  # "stripes" | "shell" | "gloss" | "spots" | "rings" | "shield"
    eyes: bool = False


_CLEAR = (235, 238, 240, 95)
_MITE = {"leg_pairs": 4, "leg_x": 0.05, "antenna": 0.0, "texture": "gloss"}
# fmt: off
MORPHS: dict[str, Morph] = {
    "Diptera": Morph(  # dark body, two clear wings, red eyes
        ((-0.2, 0.24, 0.09), (0.08, 0.13, 0.11), (0.27, 0.07, 0.09)), (45, 38, 32),
        accent=(150, 40, 30), wings=2, wing_len=0.55, wing_width=0.14, wing_angle=28,
        wing_rgba=_CLEAR, wing_pattern="veins", leg_x=0.08, leg_len=0.42, leg_width=0.012,
        antenna=0.07, texture="rings", eyes=True),
    "Hymenoptera": Morph(  # orange-brown, narrow waist, striped gaster, four narrow wings
        ((-0.26, 0.2, 0.1), (-0.02, 0.04, 0.025), (0.14, 0.13, 0.09), (0.33, 0.08, 0.085)),
        (190, 105, 35), accent=(55, 30, 15), wings=4, wing_len=0.42, wing_width=0.09,
        wing_angle=20, wing_rgba=(225, 215, 185, 100), wing_pattern="veins", leg_x=0.14,
        leg_len=0.36, leg_width=0.013, antenna=0.3, texture="stripes", eyes=True),
    "Coleoptera": Morph(  # round glossy shell with a suture
        ((-0.08, 0.36, 0.27), (0.3, 0.1, 0.16), (0.43, 0.06, 0.08)), (55, 45, 30),
        accent=(20, 15, 10), leg_x=0.15, leg_len=0.2, leg_width=0.022, antenna=0.15,
        texture="shell"),
    "Lepidoptera": Morph(  # broad patterned opaque wings
        ((-0.1, 0.17, 0.06), (0.1, 0.1, 0.07), (0.24, 0.06, 0.06)), (115, 90, 65),
        accent=(60, 40, 25), wings=4, wing_len=0.55, wing_width=0.32, wing_angle=50,
        wing_rgba=(175, 135, 85, 255), wing_pattern="bands", leg_len=0.15, leg_width=0.01,
        antenna=0.25),
    "Hemiptera": Morph(  # a shield with a scutellum
        ((-0.05, 0.32, 0.24), (0.32, 0.1, 0.09)), (95, 125, 55), accent=(60, 40, 25),
        leg_x=0.1, leg_len=0.3, leg_width=0.016, antenna=0.3, texture="shield"),
    "Araneae": Morph(  # two body parts, eight long legs
        ((-0.2, 0.25, 0.2), (0.15, 0.15, 0.13)), (105, 72, 45), accent=(60, 40, 25),
        leg_pairs=4, leg_x=0.15, leg_len=0.6, leg_width=0.03, antenna=0.06, texture="spots"),
    "Trombidiformes": Morph(((0.0, 0.4, 0.32),), (200, 45, 30), accent=(120, 20, 15),
                            leg_len=0.22, leg_width=0.025, **_MITE),
    "Mesostigmata": Morph(((0.0, 0.42, 0.3),), (150, 92, 40), accent=(90, 50, 20),
                          leg_len=0.3, leg_width=0.02, **_MITE),
    "Sarcoptiformes": Morph(((0.0, 0.4, 0.33),), (55, 32, 20), accent=(20, 10, 5),
                            leg_len=0.18, leg_width=0.02, **_MITE),
    "Entomobryomorpha": Morph(  # springtail: segmented, long antennae
        ((-0.32, 0.1, 0.06), (-0.12, 0.12, 0.08), (0.1, 0.12, 0.085), (0.3, 0.09, 0.08)),
        (110, 110, 135), accent=(50, 50, 70), leg_len=0.15, antenna=0.35, texture="rings"),
    "Poduromorpha": Morph(((-0.15, 0.3, 0.16), (0.2, 0.15, 0.13)), (70, 72, 115),
                          accent=(40, 40, 70), leg_len=0.12, antenna=0.1, texture="rings"),
    "Symphypleona": Morph(((-0.05, 0.33, 0.3), (0.3, 0.12, 0.12)), (135, 100, 55),
                          accent=(70, 45, 20), leg_len=0.14, antenna=0.25, texture="spots"),
    "Psocodea": Morph(  # bulbous head, roof-like wings
        ((-0.12, 0.2, 0.12), (0.12, 0.1, 0.09), (0.28, 0.1, 0.11)), (175, 150, 110),
        accent=(90, 70, 40), wings=2, wing_len=0.5, wing_width=0.16, wing_angle=18,
        wing_rgba=(205, 195, 165, 150), wing_pattern="veins", leg_len=0.25, antenna=0.45,
        eyes=True),
    "Thysanoptera": Morph(  # slender, dark, fringed strap wings
        ((-0.15, 0.3, 0.05), (0.18, 0.08, 0.05), (0.3, 0.05, 0.045)), (38, 32, 30),
        accent=(15, 10, 10), wings=2, wing_len=0.5, wing_width=0.035, wing_angle=8,
        wing_rgba=(80, 80, 80, 130), leg_len=0.1, leg_width=0.012, antenna=0.08,
        texture="rings"),
    "Trichoptera": Morph(  # hairy tent-like brown wings, very long antennae
        ((-0.12, 0.25, 0.07), (0.14, 0.1, 0.07), (0.28, 0.06, 0.06)), (110, 85, 60),
        accent=(70, 50, 30), wings=2, wing_len=0.62, wing_width=0.17, wing_angle=12,
        wing_rgba=(135, 105, 72, 235), wing_pattern="spots", leg_len=0.35, antenna=0.7),
    "Orthoptera": Morph(  # green, strong hind legs
        ((-0.15, 0.3, 0.1), (0.17, 0.12, 0.1), (0.32, 0.08, 0.09)), (120, 140, 60),
        accent=(70, 85, 30), wings=2, wing_len=0.45, wing_width=0.08, wing_angle=8,
        wing_rgba=(120, 140, 70, 220), leg_x=0.05, leg_len=0.5, leg_width=0.035, antenna=0.6),
    "Neuroptera": Morph(  # lacewing: green, big clear veined wings
        ((-0.15, 0.25, 0.05), (0.12, 0.09, 0.06), (0.25, 0.05, 0.06)), (110, 170, 90),
        accent=(40, 90, 40), wings=4, wing_len=0.6, wing_width=0.17, wing_angle=22,
        wing_rgba=(220, 245, 220, 80), wing_pattern="veins", leg_len=0.25, antenna=0.45,
        eyes=True),
    "Odonata": Morph(  # long blue abdomen, four wings held out
        ((-0.2, 0.32, 0.035), (0.17, 0.07, 0.06), (0.27, 0.06, 0.07)), (40, 110, 170),
        accent=(20, 40, 70), wings=4, wing_len=0.45, wing_width=0.07, wing_angle=85,
        wing_rgba=(225, 235, 240, 90), wing_pattern="veins", leg_len=0.15, antenna=0.03,
        texture="rings", eyes=True),
    "Blattodea": Morph(((-0.05, 0.36, 0.2), (0.3, 0.08, 0.12)), (130, 80, 40),
                       accent=(70, 40, 20), leg_x=0.0, leg_len=0.3, leg_width=0.02,
                       antenna=0.7, texture="gloss"),
    # Arachnids only synthetic Insects-1M has (wingless, eight legs; palps drawn as antennae)
    "Solifugae": Morph(  # camel spider: pale, segmented abdomen, big jaws
        ((-0.22, 0.25, 0.14), (0.12, 0.12, 0.1), (0.3, 0.09, 0.09)), (205, 175, 125),
        accent=(120, 90, 50), leg_pairs=4, leg_x=0.1, leg_len=0.55, leg_width=0.025,
        antenna=0.25, texture="rings"),
    "Amblypygi": Morph(  # whip spider: flat, very long thin legs
        ((-0.15, 0.22, 0.17), (0.15, 0.16, 0.2)), (85, 62, 45), accent=(40, 30, 20),
        leg_pairs=4, leg_x=0.1, leg_len=0.9, leg_width=0.012, antenna=0.4, texture="spots"),
    "Thelyphonida": Morph(  # whip scorpion: dark, glossy, a long thin tail
        ((-0.45, 0.15, 0.015), (-0.12, 0.22, 0.12), (0.22, 0.14, 0.1)), (45, 35, 30),
        accent=(20, 15, 10), leg_pairs=4, leg_x=0.15, leg_len=0.35, leg_width=0.02,
        antenna=0.35, texture="gloss"),
}
# fmt: on


def morph_for_order(order: str) -> Morph:
    """The look of an order: a hand-made preset, or a stable one derived from its name."""
    if order in MORPHS:
        return MORPHS[order]
    rng = np.random.default_rng(zlib.crc32(order.encode()))
    n_seg = int(rng.integers(1, 4))
    xs = np.linspace(-0.25, 0.3, n_seg) if n_seg > 1 else np.array([0.0])
    segments = tuple(
        (float(x), float(rng.uniform(0.08, 0.35 / n_seg + 0.1)), float(rng.uniform(0.05, 0.2)))
        for x in xs
    )
    r, g, b = (int(c) for c in rng.integers(40, 200, 3))
    return Morph(
        segments,
        (r, g, b),
        accent=(r // 2, g // 2, b // 2),
        wings=int(rng.choice([0, 2, 4])),
        wing_len=float(rng.uniform(0.3, 0.6)),
        wing_width=float(rng.uniform(0.05, 0.2)),
        wing_angle=float(rng.uniform(10, 60)),
        leg_pairs=int(rng.choice([3, 3, 4])),
        leg_len=float(rng.uniform(0.1, 0.5)),
        leg_width=float(rng.uniform(0.01, 0.03)),
        antenna=float(rng.uniform(0.0, 0.5)),
        texture=str(rng.choice(["", "stripes", "gloss", "spots", "rings"])),
    )


def specimen_shapes(
    order: str, bbox: tuple[int, int, int, int], rng: np.random.Generator
) -> list[Shape]:
    """The shapes of a specimen of `order`, back to front, in image pixels filling `bbox`."""
    return _place(_specimen(morph_for_order(order), rng), bbox, rng)


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 28):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _tone(colour: RGB, factor: float, alpha: int = 255) -> tuple[int, int, int, int]:
    r, g, b = (int(np.clip(c * factor, 0, 255)) for c in colour)
    return (r, g, b, alpha)


def _poly(points, fill, line=None) -> Shape:
    return ("poly", np.asarray(points, float), fill, line, 1.0)


def _line(points, colour, width: float) -> Shape:
    return ("line", np.asarray(points, float), None, colour, width)


def _specimen(m: Morph, rng: np.random.Generator) -> list[Shape]:
    """The specimen's shapes in the local frame, back to front."""
    colour: RGB = tuple(int(c) for c in np.clip(np.add(m.colour, rng.normal(0, 10, 3)), 0, 255))
    dark = _tone(colour, 0.5)
    shapes = _legs(m, rng, dark)
    wings = _wings(m, rng)
    opaque = m.wing_rgba[3] >= 200  # opaque wings lie under the body, clear ones over it
    if opaque:
        shapes += wings
    for i, (x, hl, hw) in enumerate(m.segments):
        jl, jw = rng.normal(1, 0.06, 2)
        fill = _tone(colour, 0.85 + 0.1 * i + rng.normal(0, 0.04))
        shapes.append(_poly(_ellipse(x, 0, hl * jl, hw * jw), fill, dark))
    if not opaque:
        shapes += wings
    return shapes + _texture(m, rng, colour) + _head(m, rng, dark)


def _legs(m: Morph, rng: np.random.Generator, dark: tuple) -> list[Shape]:
    shapes = []
    body_w = max(hw for _, _, hw in m.segments)
    for i in range(m.leg_pairs):
        t = i / (m.leg_pairs - 1) - 0.5 if m.leg_pairs > 1 else 0.0  # -0.5 hind .. +0.5 front
        for side in (-1, 1):
            phi = np.radians(95 - 100 * t + rng.normal(0, 8))  # front legs reach forwards
            length = m.leg_len * rng.normal(1, 0.08) * (1.3 if t < 0 and m.leg_len > 0.4 else 1)
            root = np.array([m.leg_x + 0.18 * t, side * body_w * 0.5])
            knee = root + 0.45 * length * np.array([np.cos(phi), side * np.sin(phi)])
            phi2 = phi + np.radians(30)
            foot = knee + 0.55 * length * np.array([np.cos(phi2), side * np.sin(phi2)])
            shapes.append(_line([root, knee, foot], dark, m.leg_width))
    return shapes


def _wings(m: Morph, rng: np.random.Generator) -> list[Shape]:
    shapes = []
    line = (*(int(c * 0.6) for c in m.wing_rgba[:3]), min(255, m.wing_rgba[3] + 80))
    accent = _tone(m.accent, 1.0, 225)
    root = np.array([m.leg_x + 0.08, 0.0])
    for pair in range(m.wings // 2):
        scale = 1.0 if pair == 0 else 0.75
        for side in (-1, 1):
            a = np.radians(m.wing_angle + 12 * pair + rng.normal(0, 5))
            d = np.array([-np.cos(a), side * np.sin(a)])  # along the wing, pointing backwards
            across = np.array([-d[1], d[0]])
            length, width = m.wing_len * scale, m.wing_width * scale
            c, angle = root + d * length / 2, np.arctan2(d[1], d[0])
            shapes.append(_poly(_ellipse(*c, length / 2, width / 2, angle), m.wing_rgba, line))
            if m.wing_pattern == "veins":
                for off in (-0.25, 0.0, 0.3):
                    tip = c + d * length * 0.4 + across * width * off
                    shapes.append(_line([root, tip], line, 0.006))
            elif m.wing_pattern == "bands":
                band = _ellipse(*(c + d * length * 0.15), length * 0.08, width * 0.45, angle)
                spot = _ellipse(*(c + d * length * 0.3), width * 0.12, width * 0.12)
                shapes += [_poly(band, accent), _poly(spot, accent)]
            elif m.wing_pattern == "spots":
                for k in range(3):
                    p = (
                        c
                        + d * length * (0.175 * k - 0.1)
                        + across * width * rng.uniform(-0.25, 0.25)
                    )
                    shapes.append(_poly(_ellipse(*p, width * 0.1, width * 0.1, n=10), accent))
    return shapes


def _texture(m: Morph, rng: np.random.Generator, colour: RGB) -> list[Shape]:
    x, hl, hw = m.segments[0]  # the abdomen (or the whole body)
    accent = _tone(m.accent, 1.0, 220)
    if m.texture == "stripes":
        return [_line([[x + t * hl, -hw * 0.85], [x + t * hl, hw * 0.85]], accent, hw * 0.3)
                for t in (-0.45, 0.0, 0.45)]  # fmt: skip
    if m.texture == "rings":
        ring = _tone(colour, 0.6)
        return [_line([[x + t * hl, -hw * 0.9], [x + t * hl + 0.02, 0], [x + t * hl, hw * 0.9]],
                      ring, 0.008) for t in (-0.6, -0.3, 0.0, 0.3, 0.6)]  # fmt: skip
    if m.texture == "spots":
        centres = rng.uniform(-0.5, 0.5, (4, 2)) * (hl, hw) + (x, 0)
        return [_poly(_ellipse(*p, hw * 0.15, hw * 0.15, n=12), accent) for p in centres]
    if m.texture == "shield":
        shield = [[x - hl, 0], [x - hl * 0.1, -hw], [x + hl, -hw * 0.85], [x + hl, hw * 0.85],
                  [x - hl * 0.1, hw]]  # fmt: skip
        scutellum = [[x + hl * 0.7, -hw * 0.45], [x + hl * 0.7, hw * 0.45], [x - hl * 0.3, 0]]
        return [_poly(shield, _tone(colour, 1.0), _tone(colour, 0.5)),
                _poly(scutellum, _tone(colour, 0.75))]  # fmt: skip
    shapes = []
    if m.texture == "shell":  # the elytral suture of a beetle
        shapes.append(_line([[x - hl, 0], [x + hl, 0]], _tone(colour, 0.4), 0.01))
    if m.texture in ("shell", "gloss"):
        highlight = _ellipse(x + hl * 0.25, -hw * 0.4, hl * 0.35, hw * 0.18)
        shapes.append(_poly(highlight, (255, 255, 255, 110)))
    return shapes


def _head(m: Morph, rng: np.random.Generator, dark: tuple) -> list[Shape]:
    x, hl, hw = m.segments[-1]
    tip = x + hl * 0.8
    shapes = []
    for side in (-1, 1) if m.antenna > 0 else ():
        a = np.radians(25 + rng.normal(0, 6))
        base = np.array([tip, side * hw * 0.3])
        mid = base + m.antenna * 0.5 * np.array([np.cos(a), side * np.sin(a)])
        end = mid + m.antenna * 0.5 * np.array([np.cos(a * 1.6), side * np.sin(a * 1.6)])
        shapes.append(_line([base, mid, end], dark, max(0.006, m.leg_width * 0.7)))
    for side in (-1, 1) if m.eyes else ():
        eye = _ellipse(x + hl * 0.2, side * hw * 0.6, hl * 0.55, hw * 0.45, n=16)
        shapes.append(_poly(eye, _tone(m.accent, 1.0)))
    return shapes


def _place(shapes: list[Shape], bbox: tuple[int, int, int, int], rng: np.random.Generator):
    """Rotate the specimen and stretch it so that its extent fills `bbox` (with a small margin)."""
    x0, y0, x1, y1 = bbox
    bw, bh = x1 - x0, y1 - y0
    angle = np.radians((0 if bw >= bh else 90) + rng.normal(0, 15) + 180 * rng.integers(0, 2))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    turned = [points @ rot.T for _, points, *_ in shapes]
    allpts = np.concatenate(turned)
    lo, hi = allpts.min(0), allpts.max(0)
    sx, sy = 0.94 * bw / (hi[0] - lo[0]), 0.94 * bh / (hi[1] - lo[1])
    sx, sy = min(sx, 1.6 * sy), min(sy, 1.6 * sx)  # cap the distortion; centre what is left
    centre_in, centre_out = (lo + hi) / 2, np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    scale = np.array([sx, sy])
    width_scale = float(np.sqrt(sx * sy))
    return [
        (kind, (pts - centre_in) * scale + centre_out, fill, line, width * width_scale)
        for (kind, _, fill, line, width), pts in zip(shapes, turned, strict=True)
    ]
