"""Synthetic datasets in the layout of a real release: `bionas synth --profile NAME`.

`generate` dispatches on the profile: `bioscan-5m` (this module, with the tree of life in
`synth_bioscan_tree` and the rows in `synth_bioscan_rows`) or `insects-1m` (`synth_insects`). The shared parts live here:
the options, the summary, the output folder and the process pool that draws the images.

BIOSCAN-5M: OUT_DIR/metadata.csv, bbox.tsv, images/original_full/<split>/[<chunk>/]
<processid>.jpg and corruptions.json, which names every planted bad input (that ingest must
reject) and every real-world variant (that ingest must accept). Rows are drawn in chunks with
numpy and written with polars, so 5M rows fit in memory. The same seed gives byte-identical
files whatever the worker count.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from bionas.errors import BionasError
from bionas.ingest.synth_bioscan_rows import SPLITS, Rows, bbox_frame, metadata_frame, sample_rows
from bionas.ingest.synth_bioscan_tree import ORDERS, Taxonomy, build_taxonomy
from bionas.ingest.synth_images import WIDTH, ImageTask, write_image

log = logging.getLogger(__name__)

CHUNK_ROWS = 250_000
MAX_ROWS = 90_000 * 96  # processids are plate-well codes: 90,000 plates of 96 wells
# Bad inputs ingest must reject (K of each with --corrupt K) ...
REJECT_KINDS = (
    "missing_file", "truncated_jpeg", "not_an_image", "bad_bbox", "duplicate_processid",
    "empty_target",
)  # fmt: skip
# ... and real-world variants it must accept (one of each whenever n >= 200).
VARIANT_KINDS = (
    "png_named_jpg", "grayscale_jpeg", "cmyk_jpeg", "exif_orientation_6",
    "bbox_partly_outside", "no_bbox_row",
)  # fmt: skip
FILE_KINDS = ("missing_file", "truncated_jpeg", "not_an_image", "png_named_jpg",
              "grayscale_jpeg", "cmyk_jpeg", "exif_orientation_6")  # fmt: skip
BAD_BBOX_FLAVOURS = ("x1<=x0", "zero_area", "outside_image")
MIN_ROWS_FOR_VARIANTS = 200
# orders: specimens whose look follows their order; pairs: a task where the architecture's
# operations matter (bionas.ingest.synth_pairs), for evaluating architecture search.
TASKS = ("orders", "pairs")
IMAGES_SUBDIR = Path("images") / "original_full"
OUTPUT_NAMES = ("metadata.csv", "bbox.tsv", "corruptions.json", "images")

Plan = dict[str, np.ndarray]  # kind -> positions in the chunk of the rows planted as that kind


@dataclass(frozen=True)
class SynthConfig:
    """Options of `bionas synth`; validated on construction."""

    out_dir: Path
    n: int = 2000
    seed: int = 0
    corrupt: int = 0
    images: bool = True
    workers: int | None = None  # None: all cores
    profile: str = "bioscan-5m"
    overwrite: bool = False
    progress: bool = True
    task: str = "orders"  # see TASKS

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            known = ", ".join(sorted(PROFILES))
            raise BionasError(f"unknown --profile {self.profile!r}; known profiles: {known}")
        if not 1 <= self.n <= MAX_ROWS:
            raise BionasError(f"--n must be between 1 and {MAX_ROWS:,}, got {self.n:,}")
        if self.corrupt < 0:
            raise BionasError(f"--corrupt must be >= 0, got {self.corrupt}")
        if self.workers is not None and self.workers < 1:
            raise BionasError(f"--workers must be >= 1, got {self.workers}")
        if self.task not in TASKS:
            raise BionasError(f"unknown --task {self.task!r}; known tasks: {', '.join(TASKS)}")
        if self.task == "pairs" and self.profile != "bioscan-5m":
            raise BionasError(f"--task pairs draws only the bioscan-5m layout, not --profile "
                              f"{self.profile}; drop --profile or use --task orders")  # fmt: skip
        if self.task == "pairs" and self.corrupt:
            raise BionasError("--task pairs plants no bad inputs (--corrupt is for testing "
                              "ingest's rejects); drop --corrupt or use --task orders")  # fmt: skip


@dataclass(frozen=True)
class SynthSummary:
    """What `generate` wrote, with the counts a caller (or a test) needs."""

    out_dir: Path
    metadata_csv: Path
    bbox_tsv: Path | None  # None: the profile has no bbox table
    corruptions_json: Path | None  # None: the profile plants no corruptions
    images_root: Path | None  # the --images argument of ingest; None with --no-images
    n_specimens: int  # distinct sample ids
    n_metadata_rows: int  # specimens + duplicated rows
    n_bbox_rows: int
    n_images: int  # files under images_root, corrupt ones included
    split_counts: dict[str, int]  # metadata rows per split (empty: no split column)
    order_counts: dict[str, int]  # metadata rows per labelled order, most frequent first
    natural_empty_order: list[str]  # processids whose order is empty by nature, not planted
    corruptions: dict[str, list[str]]  # REJECT_KINDS -> processids
    accepted_variants: dict[str, list[str]]  # VARIANT_KINDS -> processids


def generate(config: SynthConfig) -> SynthSummary:
    """Write a synthetic dataset for `config.profile` and `config.task` into `config.out_dir`."""
    if config.task == "pairs":
        from bionas.ingest.synth_pairs import generate_pairs  # it imports this module

        return generate_pairs(config)
    return PROFILES[config.profile](config)


def prepare_out_dir(out: Path, overwrite: bool, names: Iterable[str] = OUTPUT_NAMES) -> Path:
    """Create OUT_DIR; replace what an earlier run wrote (`names`) only with `overwrite`."""
    if out.exists() and not out.is_dir():
        raise BionasError(f"{out} exists and is not a folder; choose another OUT_DIR")
    ours = [out / name for name in names if (out / name).exists()]
    if ours and not overwrite:
        shown = ", ".join(p.name for p in ours)
        raise BionasError(f"{out} already holds {shown}; pass --overwrite or choose a new OUT_DIR")
    for path in ours:  # only what an earlier run wrote, never anything else in OUT_DIR
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def image_pool(stack: ExitStack, config: SynthConfig) -> Pool | None:
    """A process pool for the images, or None to draw them in this process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = config.workers or cores or 1
    if not config.images or workers == 1 or config.n < 64:
        return None
    # spawn, not fork: polars runs threads in this process and fork would copy their locks
    return stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))


def draw_images(
    tasks: list, pool: Pool | None, progress: bool, write: Callable = write_image
) -> int:
    """Write the images (in any order: each file depends only on its task); returns the count."""
    done = pool.imap_unordered(write, tasks, chunksize=8) if pool else map(write, tasks)
    for _ in tqdm(done, total=len(tasks), unit="img", desc="images", file=sys.stderr,
                  disable=not progress or len(tasks) < 100):  # fmt: skip
        pass
    return len(tasks)


@dataclass
class _Tally:
    """Counts and planted processids gathered chunk by chunk."""

    split_counts: np.ndarray
    order_counts: np.ndarray
    planted: dict[str, list[str]] = field(default_factory=dict)
    natural_empty_order: list[str] = field(default_factory=list)
    metadata_rows: int = 0
    bbox_rows: int = 0
    images: int = 0
    next_index_1m: int = 0

    def add(self, rows: Rows, plan: Plan, meta: pl.DataFrame, bbox: pl.DataFrame) -> None:
        """Count a chunk; `meta` includes the duplicated rows appended at its end."""
        pids = meta["processid"]
        for kind, positions in plan.items():
            self.planted[kind] = pids.gather(positions).to_list()
        natural = (rows["depth"] < 2) & ~_mask(len(rows["row"]), plan.get("empty_target"))
        self.natural_empty_order += pids.head(len(natural)).filter(pl.Series(natural)).to_list()
        every = np.concatenate([np.arange(len(rows["row"])), plan.get("duplicate_processid", [])])
        every = every.astype(np.int64)
        self.split_counts += np.bincount(rows["split"][every], minlength=len(SPLITS))
        labelled = every[rows["depth"][every] >= 2]
        self.order_counts += np.bincount(rows["order"][labelled], minlength=len(ORDERS))
        self.metadata_rows += meta.height
        self.bbox_rows += bbox.height
        self.next_index_1m += int((rows["index_1m"] >= 0).sum())


def generate_bioscan5m(config: SynthConfig) -> SynthSummary:
    """BIOSCAN-5M: 23-column metadata, bbox TSV, 1024x768 JPEGs, corruptions.json."""
    taxonomy = build_taxonomy(config.seed, config.n)
    folders = int(np.clip(config.n // 43_000, 3, 120))  # image sub-folders ("chunk") per split
    first = _first_chunk(taxonomy, config, folders)  # fails on a bad --corrupt before any write
    out = prepare_out_dir(config.out_dir, config.overwrite)
    tally = _Tally(np.zeros(len(SPLITS), np.int64), np.zeros(len(ORDERS), np.int64))
    n_chunks = -(-config.n // CHUNK_ROWS)
    with ExitStack() as stack:
        csv = stack.enter_context((out / "metadata.csv").open("wb"))
        tsv = stack.enter_context((out / "bbox.tsv").open("wb"))
        pool = image_pool(stack, config)
        bar = stack.enter_context(tqdm(total=config.n, unit="row", desc="metadata", file=sys.stderr,
                                       disable=not config.progress or n_chunks == 1))  # fmt: skip
        for chunk in range(n_chunks):
            start, stop = chunk * CHUNK_ROWS, min(config.n, (chunk + 1) * CHUNK_ROWS)
            rows, plan = first
            if chunk > 0:
                index_1m = tally.next_index_1m  # index_bioscan_1M_insect runs on across chunks
                rows = sample_rows(taxonomy, config.seed, chunk, start, stop, folders, index_1m)
                plan = {}
            meta = metadata_frame(taxonomy, rows, config.seed, chunk)
            bbox = bbox_frame(rows, meta["processid"])
            if "duplicate_processid" in plan:  # the copies go at the end of the chunk
                meta = pl.concat([meta, meta[plan["duplicate_processid"]]])
            meta.write_csv(csv, include_header=chunk == 0)
            bbox.write_csv(tsv, separator="\t", include_header=chunk == 0)
            tally.add(rows, plan, meta, bbox)
            bar.update(stop - start)
            if config.images:
                tasks = _image_tasks(out / IMAGES_SUBDIR, taxonomy, rows, meta, plan, config.seed)
                tally.images += draw_images(tasks, pool, config.progress)
    return _finish(config, out, tally)


def _first_chunk(taxonomy: Taxonomy, config: SynthConfig, folders: int) -> tuple[Rows, Plan]:
    """The first chunk's rows, where the small-set guarantees and every planted row live."""
    rows = sample_rows(taxonomy, config.seed, 0, 0, min(config.n, CHUNK_ROWS), folders, 0)
    rng = np.random.default_rng([config.seed, 0xC0FFEE])
    guarantee_small_sets(rows, config.n, rng)
    plan = _plan_special_rows(rows, config.corrupt, config.n, rng)
    _apply_special_rows(rows, plan)
    return rows, plan


def _finish(config: SynthConfig, out: Path, tally: _Tally) -> SynthSummary:
    """Write corruptions.json and sum up."""
    planted = dict(tally.planted)
    if not config.images:  # no files, so nothing file-level was planted
        planted |= {kind: [] for kind in FILE_KINDS}
    corruptions = {kind: planted.get(kind, []) for kind in REJECT_KINDS}
    variants = {kind: planted.get(kind, []) for kind in VARIANT_KINDS}
    flavours = {pid: BAD_BBOX_FLAVOURS[i % 3] for i, pid in enumerate(corruptions["bad_bbox"])}
    record = {
        "profile": config.profile,
        "seed": config.seed,
        "n": config.n,
        "images": config.images,
        "metadata_rows": tally.metadata_rows,
        "corrupt_per_kind": config.corrupt,
        "corruptions": corruptions,
        "bad_bbox_flavours": flavours,
        "natural_empty_order": tally.natural_empty_order,
        "accepted_variants": variants,
    }
    (out / "corruptions.json").write_text(json.dumps(record, indent=2) + "\n")
    by_count = np.argsort(-tally.order_counts, kind="stable")
    log.info("wrote %d metadata rows, %d images to %s", tally.metadata_rows, tally.images, out)
    return SynthSummary(
        out_dir=out,
        metadata_csv=out / "metadata.csv",
        bbox_tsv=out / "bbox.tsv",
        corruptions_json=out / "corruptions.json",
        images_root=out / IMAGES_SUBDIR if config.images else None,
        n_specimens=config.n,
        n_metadata_rows=tally.metadata_rows,
        n_bbox_rows=tally.bbox_rows,
        n_images=tally.images,
        split_counts=dict(zip(SPLITS, tally.split_counts.tolist(), strict=True)),
        order_counts={
            ORDERS[i][0]: int(tally.order_counts[i]) for i in by_count if tally.order_counts[i]
        },  # fmt: skip
        natural_empty_order=tally.natural_empty_order,
        corruptions=corruptions,
        accepted_variants=variants,
    )


def _mask(size: int, positions: np.ndarray | None) -> np.ndarray:
    mask = np.zeros(size, bool)
    if positions is not None:
        mask[positions] = True
    return mask


def guarantee_small_sets(rows: Rows, n: int, rng: np.random.Generator) -> None:
    """Give train/val/test a few specimens and one row an empty order, even for a small n."""
    minimum = int(np.clip(n // 100, 1, 10))
    for split in (1, 2, 3):  # train, val, test
        short = minimum - int((rows["split"] == split).sum())
        pool = np.flatnonzero((rows["split"] == 0) & (rows["depth"] >= 2) & (rows["group"] == 0))
        chosen = rng.permutation(pool)[: max(short, 0)]
        rows["depth"][chosen], rows["split"][chosen] = 6, split  # species-labelled, seen
    if n >= 300 and not (rows["depth"] < 2).any():
        pool = np.flatnonzero((rows["split"] == 0) & (rows["depth"] >= 2))
        rows["depth"][rng.permutation(pool)[:1]] = 1  # class known, order not


def _plan_special_rows(rows: Rows, corrupt: int, n: int, rng: np.random.Generator) -> Plan:
    """Distinct labelled pretrain rows for each variant and corruption; no order loses all rows."""
    kinds = list(VARIANT_KINDS) if n >= MIN_ROWS_FOR_VARIANTS else []
    kinds += [kind for kind in REJECT_KINDS for _ in range(corrupt)]
    if not kinds:
        return {}
    candidates = rng.permutation(np.flatnonzero((rows["split"] == 0) & (rows["depth"] >= 2)))
    spare = np.bincount(rows["order"], minlength=len(ORDERS)) - 1  # rows an order can lose
    picked: dict[str, list[int]] = {}
    todo = iter(kinds)
    kind = next(todo)
    for row in candidates.tolist():
        if kind in REJECT_KINDS:
            if spare[rows["order"][row]] <= 0:
                continue
            spare[rows["order"][row]] -= 1
        picked.setdefault(kind, []).append(row)
        kind = next(todo, None)
        if kind is None:
            return {kind: np.array(sorted(positions)) for kind, positions in picked.items()}
    raise BionasError(
        f"--corrupt {corrupt} needs {len(kinds)} distinct labelled pretrain rows but --n {n} "
        f"has too few; lower --corrupt or raise --n"
    )


def _apply_special_rows(rows: Rows, plan: Plan) -> None:
    """Change the metadata of the planted rows; file-level kinds change only the image files."""
    box = rows["box"]  # what bbox.tsv records; rows["draw"] keeps where the specimen really is
    for i, row in enumerate(plan.get("bad_bbox", [])):
        x0, y0, x1, y1 = box[row]
        box[row] = [
            (x1, y0, x0, y1),  # x1 <= x0
            (x0, y0, x0, y0),  # zero area
            (WIDTH + 40, y0, WIDTH + 40 + x1 - x0, y1),  # entirely right of the image
        ][i % 3]
    for row in plan.get("bbox_partly_outside", []):
        box[row, 0] = -min(60, int(box[row, 2]) // 3)  # the left edge lies beyond the image
        rows["draw"][row, 0] = 0
    rows["depth"][plan.get("empty_target", [])] = 1  # class known, order not
    rows["has_bbox"][plan.get("no_bbox_row", [])] = False


def _image_tasks(
    root: Path, taxonomy: Taxonomy, rows: Rows, meta: pl.DataFrame, plan: Plan, seed: int
) -> list[ImageTask]:
    """One task per image file of the chunk; none for rows planted as missing_file."""
    m = len(rows["row"])
    variant = np.full(m, "", dtype=object)
    for kind in FILE_KINDS:
        variant[plan.get(kind, [])] = kind
    skip = _mask(m, plan.get("missing_file"))
    folder = meta.head(m).select(pl.format("{}/{}", "split", pl.col("chunk").fill_null("")))
    folders = folder.to_series().to_list()
    for name in sorted(set(folders)):
        (root / name).mkdir(parents=True, exist_ok=True)
    pids = meta["processid"].head(m).to_list()
    draw = rows["draw"].tolist()
    return [
        ImageTask(
            str(root / folders[i] / f"{pids[i]}.jpg"),
            seed,
            int(rows["row"][i]),
            taxonomy.orders[rows["order"][i]],
            tuple(draw[i]),
            variant[i],
        )  # fmt: skip
        for i in range(m)
        if not skip[i]
    ]


def _generate_insects1m(config: SynthConfig) -> SynthSummary:
    from bionas.ingest.synth_insects import generate_insects1m  # it imports this module

    return generate_insects1m(config)


PROFILES: dict[str, Callable[[SynthConfig], SynthSummary]] = {
    "bioscan-5m": generate_bioscan5m,
    "insects-1m": _generate_insects1m,
}
