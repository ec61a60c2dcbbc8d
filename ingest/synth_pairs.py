"""`bionas synth --task pairs`: a BIOSCAN-5M-shaped set on which the searched operations matter.

The orders task draws specimens whose colour and outline follow the class, so any network
separates them and a search cannot be shown to beat random operations there. Here every
photo shows one pair of identical dark dots, `PAIR_DISTANCE` apart, and the class is only
the pair's angle: `pair_000`, `pair_030`, `pair_060`, `pair_090` (degrees counter-clockwise
from the x axis as the photo is seen, +-`ANGLE_JITTER`), balanced, in the `order` column.

Why the operations matter: 3x3 average/max pooling, skip (factorized reduce at stride 2),
1x1 conv and squeeze-excitation all commute with transposing the image (swapping x and y),
and global average pooling removes position. On a stem that commutes with it too, a
network of only those ops gives a photo and its transpose the same output; the transpose
turns a pair at angle a into one at 90 - a, so it cannot tell pair_000 from pair_090 nor
pair_030 from pair_060: 50% at best. Learned kxk kernels (depthwise-separable or dilated
3x3/5x5) are not transpose-symmetric and solve it, so the right ops are known before the
search. Not 45/135 degrees: the transpose maps each onto itself and only a mirror maps one
onto the other, which the factorized reduce's one-pixel diagonal shift breaks.

Measured (5 fixed cells, 64 px, 8 epochs, 4,216 training photos): with a stem of two 3x3
convs whose kernels are made transpose-symmetric ((w + w^T) / 2), pool/skip/SE cells stay
at 50% (0 and 90, 30 and 60 confused) and separable/dilated conv cells reach 100%. With
the trainer's plain learned stem, pooling cells reach 100% as well, whatever the pair's
distance: its 3x3 kernels are themselves anisotropic filters. A benchmark on this task
needs a transpose-symmetric stem; 45/135-degree classes left pool/skip/SE cells at 75%.

Nothing else carries the class: the floor and the dots look the same in every class, the
bbox is a `BOX_SIDE` square at a random place, and the metadata rows are the orders task's
rows (same dna_bin pool, splits, countries, barcodes) with the ranks below `class` emptied
and the class drawn independently of them, so no dna_bin or other field predicts it.
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from bionas.ingest import synth
from bionas.ingest.profiles import BIOSCAN_5M_COLUMNS
from bionas.ingest.synth import (
    IMAGES_SUBDIR,
    REJECT_KINDS,
    VARIANT_KINDS,
    SynthConfig,
    SynthSummary,
    draw_images,
    guarantee_small_sets,
    image_pool,
    prepare_out_dir,
)
from bionas.ingest.synth_bioscan_rows import SPLITS, Rows, bbox_frame, metadata_frame, sample_rows
from bionas.ingest.synth_bioscan_tree import Taxonomy, build_taxonomy
from bionas.ingest.synth_images import HEIGHT, WIDTH
from bionas.ingest.synth_pairs_images import DOT_EDGE, DOT_RADIUS, PairTask, write_pair_image

# transpose pairs (a <-> 90 - a): 0 and 90, 30 and 60 (see above)
PAIR_ANGLES = {"pair_000": 0.0, "pair_030": 30.0, "pair_060": 60.0, "pair_090": 90.0}
PAIR_CLASSES = tuple(PAIR_ANGLES)
BOX_SIDE = 512  # the square bbox, in photo pixels
CROP_MARGIN = 0.1  # ingest's default --crop-margin: the box plus margin stays a square
# 0.3 of the box: ingest crops box + 2 x 10% margin, so at 32 px the centres are
# 0.3 / 1.2 x 32 = 8 px apart (16 px at 64), beyond the stem's 7-pixel receptive field:
# the cells, not the stem, must relate the two dots.
PAIR_DISTANCE = 0.3 * BOX_SIDE
DISTANCE_JITTER = 0.05  # the distance varies by +-5%
ANGLE_JITTER = 6.0  # degrees either side of the class's angle
INNER_PAD = 0.06 * BOX_SIDE  # clear floor between the dots' soft edges and the bbox


def generate_pairs(config: SynthConfig) -> SynthSummary:
    """Write the pairs task: metadata.csv, bbox.tsv, corruptions.json, the photos."""
    taxonomy = build_taxonomy(config.seed, config.n)
    folders = int(np.clip(config.n // 43_000, 3, 120))  # as the orders task
    out = prepare_out_dir(config.out_dir, config.overwrite)
    splits, labels = np.zeros(len(SPLITS), np.int64), np.zeros(len(PAIR_CLASSES), np.int64)
    bbox_rows = images = next_index_1m = 0
    n_chunks = -(-config.n // synth.CHUNK_ROWS)
    with ExitStack() as stack:
        csv = stack.enter_context((out / "metadata.csv").open("wb"))
        tsv = stack.enter_context((out / "bbox.tsv").open("wb"))
        pool = image_pool(stack, config)
        bar = stack.enter_context(tqdm(total=config.n, unit="row", desc="metadata", file=sys.stderr,
                                       disable=not config.progress or n_chunks == 1))  # fmt: skip
        for chunk in range(n_chunks):
            start, stop = chunk * synth.CHUNK_ROWS, min(config.n, (chunk + 1) * synth.CHUNK_ROWS)
            rows = sample_rows(taxonomy, config.seed, chunk, start, stop, folders, next_index_1m)
            if chunk == 0:
                guarantee_small_sets(rows, config.n, np.random.default_rng([config.seed, 0xC0FFEE]))
            label, dots = place_pairs(rows, config.seed, chunk)
            meta = pairs_metadata(taxonomy, rows, label, config.seed, chunk)
            bbox = bbox_frame(rows, meta["processid"])
            meta.write_csv(csv, include_header=chunk == 0)
            bbox.write_csv(tsv, separator="\t", include_header=chunk == 0)
            splits += np.bincount(rows["split"], minlength=len(SPLITS))
            labels += np.bincount(label, minlength=len(PAIR_CLASSES))
            bbox_rows += bbox.height
            next_index_1m += int((rows["index_1m"] >= 0).sum())
            bar.update(stop - start)
            if config.images:
                tasks = _image_tasks(out / IMAGES_SUBDIR, meta, dots, rows["row"], config.seed)
                images += draw_images(tasks, pool, config.progress, write=write_pair_image)
    _write_record(config, out)
    return _summary(config, out, splits, labels, bbox_rows, images)


def _summary(
    config: SynthConfig, out: Path, splits: np.ndarray, labels: np.ndarray, bbox_rows: int,
    images: int,
) -> SynthSummary:  # fmt: skip
    return SynthSummary(
        out_dir=out,
        metadata_csv=out / "metadata.csv",
        bbox_tsv=out / "bbox.tsv",
        corruptions_json=out / "corruptions.json",
        images_root=out / IMAGES_SUBDIR if config.images else None,
        n_specimens=config.n,
        n_metadata_rows=config.n,
        n_bbox_rows=bbox_rows,
        n_images=images,
        split_counts=dict(zip(SPLITS, splits.tolist(), strict=True)),
        order_counts=dict(zip(PAIR_CLASSES, labels.tolist(), strict=True)),
        natural_empty_order=[],  # every photo has a pair, so every row has a class
        corruptions={kind: [] for kind in REJECT_KINDS},
        accepted_variants={kind: [] for kind in VARIANT_KINDS},
    )


def place_pairs(rows: Rows, seed: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw each row's class and dots; set its square bbox in `rows`.

    Returns the class indices (m,) and the dot centres (m, 2 dots, x/y) in photo pixels.
    The class is a shuffled round-robin, so the classes are balanced and independent of
    every other column of the row.
    """
    rng = np.random.default_rng([seed, chunk, 0x9A1125])
    m = len(rows["row"])
    label = rng.permutation(rows["row"] % len(PAIR_CLASSES))
    angle = np.array(list(PAIR_ANGLES.values()))[label] + rng.uniform(-1, 1, m) * ANGLE_JITTER
    distance = PAIR_DISTANCE * (1 + rng.uniform(-1, 1, m) * DISTANCE_JITTER)
    # from the pair's centre to one dot; y points down in a photo, so "counter-clockwise" is -y
    radians = np.radians(angle)
    half = 0.5 * distance[:, None] * np.stack([np.cos(radians), -np.sin(radians)], 1)
    margin = math.ceil(CROP_MARGIN * BOX_SIDE) + 1  # ingest's crop margin stays inside the photo
    corner = np.stack([rng.integers(margin, size - BOX_SIDE - margin, m, endpoint=True)
                       for size in (WIDTH, HEIGHT)], 1)  # fmt: skip
    reach = np.abs(half) + DOT_RADIUS + DOT_EDGE / 2 + INNER_PAD  # centre to the box's edge
    centre = corner + reach + rng.random((m, 2)) * (BOX_SIDE - 2 * reach)
    rows["box"] = np.concatenate([corner, corner + BOX_SIDE], 1).astype(np.int64)
    rows["draw"] = rows["box"].copy()
    rows["fill"] = np.full(m, 2 * math.pi * DOT_RADIUS**2 / BOX_SIDE**2)  # dots' share of the box
    rows["has_bbox"] = np.ones(m, bool)
    return label, np.stack([centre - half, centre + half], 1)


def pairs_metadata(
    taxonomy: Taxonomy, rows: Rows, label: np.ndarray, seed: int, chunk: int
) -> pl.DataFrame:
    """The orders task's 23 columns with class Insecta, order = the pair class, no finer ranks."""
    finer = dict.fromkeys(("family", "subfamily", "genus", "species"), pl.lit(None, pl.String))
    ranks = {"class": pl.lit("Insecta"), "order": pl.Series(PAIR_CLASSES).gather(label), **finer}
    return (
        metadata_frame(taxonomy, rows, seed, chunk)
        .with_columns(**ranks)
        .with_columns(taxon=pl.col("order"))  # the most specific label, as in the release
        .select(BIOSCAN_5M_COLUMNS)
    )


def _image_tasks(
    root: Path, meta: pl.DataFrame, dots: np.ndarray, row: np.ndarray, seed: int
) -> list[PairTask]:
    folder = meta.select(pl.format("{}/{}", "split", pl.col("chunk").fill_null(""))).to_series()
    for name in folder.unique().sort():
        (root / name).mkdir(parents=True, exist_ok=True)
    centres = dots.tolist()
    return [
        PairTask(str(root / f / f"{pid}.jpg"), seed, int(r), (tuple(c[0]), tuple(c[1])))
        for f, pid, r, c in zip(folder, meta["processid"], row.tolist(), centres, strict=True)
    ]


def _write_record(config: SynthConfig, out: Path) -> None:
    """corruptions.json: none planted, and the geometry a benchmark or a test may check."""
    record = {
        "profile": config.profile,
        "task": "pairs",
        "seed": config.seed,
        "n": config.n,
        "images": config.images,
        "metadata_rows": config.n,
        "corrupt_per_kind": 0,
        "corruptions": {kind: [] for kind in REJECT_KINDS},
        "bad_bbox_flavours": {},
        "natural_empty_order": [],
        "accepted_variants": {kind: [] for kind in VARIANT_KINDS},
        "pairs": {
            "angles_degrees": PAIR_ANGLES,
            "angle_jitter_degrees": ANGLE_JITTER,
            "box_side": BOX_SIDE,
            "distance": PAIR_DISTANCE,
            "distance_jitter": DISTANCE_JITTER,
            "dot_radius": DOT_RADIUS,
        },
    }
    (out / "corruptions.json").write_text(json.dumps(record, indent=2) + "\n")
