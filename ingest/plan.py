"""The ingest plan (SPEC §4 step 1): which rows become samples, in which split and shard.

scan (only the needed columns; beside it, each row's field count: `ragged`) -> bbox lookup
and clip (`boxes`) -> split -> reject reasons -> sample order -> shard assignment. The result
says, for every row, either which shard it lands in or why it was rejected.

The scanned frame is never sorted, filtered or joined as a whole: at BIOSCAN-5M scale it
holds ~1.5 GB, and each such step would copy it. The plan works on the few columns it
decides on and lists the accepted rows by their `row` in the frame; each shard's rows are
gathered from the frame just before its task goes to a worker (`Plan.rows`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import polars as pl

from bionas.errors import BionasError
from bionas.ingest.boxes import DEFAULT_FRAME, Boxes, lookup_boxes
from bionas.ingest.config import IngestConfig
from bionas.ingest.keys import first_occurrence, safe_keys, spread, stable_argsort
from bionas.ingest.profiles import ID, OFFICIAL_SPLIT, DatasetProfile
from bionas.ingest.ragged import RaggedRows, check_rows, find_ragged_rows
from bionas.ingest.scan import BOX, FRAME, collect_tables, scan_bbox, scan_metadata
from bionas.ingest.stable_hash import stable_unit_hashes, string_buffers

log = logging.getLogger(__name__)

REJECT_SCHEMA = {
    "processid": pl.String,
    "split": pl.String,
    "stage": pl.String,
    "reason": pl.String,
    "detail": pl.String,
}


@dataclass(frozen=True)
class Plan:
    """Accepted samples (with split, order and shard) and plan-stage rejects.

    `frame`: every scanned row in file order, canonical column names, clipped bboxes.
    `samples`: the accepted rows in sample order: `row` (in `frame`), processid, split, shard.
    """

    frame: pl.DataFrame
    samples: pl.DataFrame
    rejects: pl.DataFrame
    shard_size: int
    excluded: int  # rows valid but in a split not asked for (`--splits`)
    clipped_bboxes: int

    def shard_groups(self) -> list[ShardGroup]:
        """The shards, in split then index order (`samples` is sorted that way)."""
        splits, shards = self.samples["split"], self.samples["shard"].to_numpy()
        change = np.r_[True, (shards[1:] != shards[:-1]) | (splits[1:] != splits[:-1]).to_numpy()]
        bounds = [*np.flatnonzero(change).tolist(), len(shards)]
        rows, keys = self.samples["row"].to_numpy(), self.samples[ID]
        return [
            ShardGroup(splits[lo], int(shards[lo]), rows[lo:hi], keys.slice(lo, hi - lo))
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ]

    def rows(self, frame_rows: np.ndarray) -> pl.DataFrame:
        """The given rows of the frame: every field a record needs."""
        return self.frame.gather(frame_rows)


@dataclass(frozen=True)
class ShardGroup:
    split: str
    index: int
    frame_rows: np.ndarray  # in sample order
    keys: pl.Series  # their processids


REASONS = (
    "ragged_row",  # first: every cell after a missing or extra separator is in the wrong column
    "unsafe_processid",
    "duplicate_processid",
    "empty_target",
    "missing_split",
    "bad_bbox",
)


def reject_reasons(
    frame: pl.DataFrame,
    ragged: np.ndarray,
    keys: KeyChecks,
    splits: Splits,
    bad_bbox: np.ndarray,
    cfg: IngestConfig,
) -> np.ndarray:
    """Per row, 0 for a good row or 1 + the index in REASONS of the first rule it breaks."""
    broken = [
        ragged,
        ~keys.safe,
        ~keys.first,
        (frame[cfg.target].is_null() | (frame[cfg.target] == "")).to_numpy(),  # blank: none
        splits.codes < 0,
        bad_bbox,
    ]
    return np.select(broken, np.arange(1, len(REASONS) + 1, dtype=np.int8), default=0)


def reject_details(
    rejected: pl.DataFrame, cfg: IngestConfig, widths: tuple[int, int]
) -> pl.DataFrame:
    """A human-readable `detail` per rejected row (computed for the rejects only).

    `widths`: the header's field count of the metadata and of the bbox table.
    """
    reason = pl.col("reason")
    detail = (
        pl.when(reason == "ragged_row")
        .then(
            pl.format(
                "{} fields where the header of {} has {} (data row {})",
                "_fields",
                pl.lit(cfg.metadata.name),
                pl.lit(widths[0]),
                "_data_row",
            )  # fmt: skip
        )
        .when((reason == "bad_bbox") & (pl.col("_bbox_fields") > 0))
        .then(
            pl.format(
                "its bbox row has {} fields where the header of {} has {}",
                "_bbox_fields",
                pl.lit(cfg.bbox.name if cfg.bbox else ""),
                pl.lit(widths[1]),
            )  # fmt: skip
        )
        .when(reason == "unsafe_processid")
        .then(pl.format("processid '{}' is not a safe file name", pl.col(ID).fill_null("")))
        .when(reason == "duplicate_processid")
        .then(pl.lit("processid already used by an earlier row"))
        .when(reason == "empty_target")
        .then(pl.lit(f"no {cfg.target} label"))
        .when(reason == "missing_split")
        .then(pl.format("split '{}' is not known", pl.col("_raw_split").fill_null("")))
        .otherwise(
            pl.format(
                "bbox ({}, {}, {}, {}) in a {}x{} frame",
                *(pl.col(c).cast(pl.String).fill_null("missing") for c in BOX),
                pl.col("width_original").fill_null(DEFAULT_FRAME[0]),
                pl.col("height_original").fill_null(DEFAULT_FRAME[1]),
            )  # fmt: skip
        )
    )
    return rejected.select(
        pl.col(ID).alias("processid"),
        pl.col("_split").alias("split"),
        pl.lit("plan").alias("stage"),
        "reason",
        detail.alias("detail"),
    )


@dataclass(frozen=True)
class KeyChecks:
    """Per row: whether its processid is a safe key, and whether no earlier row has it."""

    safe: np.ndarray
    first: np.ndarray


@dataclass(frozen=True)
class Splits:
    """Each row's split as a code into `names` (-1: none), and the raw value for messages."""

    names: tuple[str, ...]
    codes: np.ndarray
    raw: pl.Expr  # over the scanned frame

    def strings(self, rows: np.ndarray) -> pl.Series:
        """The split names of the given rows (null for none)."""
        codes = self.codes[rows]
        named = pl.Series("_split", self.names, dtype=pl.String)
        return named.gather(np.where(codes < 0, len(self.names), codes), null_on_oob=True)


def assign_split(
    frame: pl.DataFrame, split_unit: np.ndarray, cfg: IngestConfig, profile: DatasetProfile
) -> Splits:
    """The official split column, or the seeded hash of the processid into ratio buckets."""
    names = tuple(cfg.split_names)
    if cfg.split_source == "official":
        if not profile.split_column:
            raise BionasError(
                f"profile {profile.name} has no split column: use --split-source random"
            )
        raw = pl.col(OFFICIAL_SPLIT).cast(pl.String).str.strip_chars()
        known = frame.select(raw.cast(pl.Enum(names), strict=False).to_physical()).to_series()
        return Splits(names, known.fill_null(-1).to_numpy().astype(np.int64), raw)
    edges = np.cumsum(cfg.split_ratios)[:-1]
    return Splits(names, np.searchsorted(edges, split_unit, side="right"), pl.lit("random"))


def order_and_shard(
    ids: pl.Series, splits: Splits, order_unit: np.ndarray, rows: np.ndarray, size: int
) -> pl.DataFrame:
    """Seeded shuffled order within each split, then consecutive runs of `size` per shard.

    A sample's place comes from a seeded hash of its processid, so the order depends
    neither on the CSV's row order nor on which other rows are present. The key is one
    float, the split's dense rank by name plus the hash, as in the first version, so keys
    that round to equal values keep file order exactly as they did there.
    """
    codes = splits.codes[rows]
    counts = np.bincount(codes, minlength=len(splits.names))
    by_name = sorted(np.flatnonzero(counts), key=lambda c: splits.names[c])
    rank = np.zeros(len(splits.names), dtype=np.float64)
    rank[by_name] = np.arange(1, len(by_name) + 1)
    key = rank[codes] + order_unit[rows]
    rows = rows[stable_argsort(spread(key.view(np.uint64)))]
    # sorted by split name first: each split is one run, in name order
    sizes = counts[by_name]
    run = np.repeat(np.arange(len(by_name)), sizes)  # each sample's split, by rank
    names = pl.Series("split", [splits.names[c] for c in by_name], dtype=pl.String)
    return pl.DataFrame(
        {
            "row": rows,
            ID: ids.gather(rows),
            "split": names.gather(run),
            "shard": (np.arange(len(rows)) - np.repeat(np.cumsum(sizes) - sizes, sizes)) // size,
        }
    )


@dataclass(frozen=True)
class RaggedTables:
    """Each table's rows with a wrong number of fields."""

    metadata: RaggedRows
    bbox: RaggedRows | None

    @property
    def widths(self) -> tuple[int, int]:
        """The header's field count of the metadata and of the bbox table (0: none)."""
        return self.metadata.width, self.bbox.width if self.bbox else 0


@contextmanager
def counting_fields(
    cfg: IngestConfig, profile: DatasetProfile
) -> Iterator[tuple[Future[RaggedRows], Future[RaggedRows] | None]]:
    """Count each table's fields per row in a thread beside the plan's other work.

    Yields (metadata, bbox) futures; the bbox table (small, needed first) is counted first.
    If the plan fails, the count stops rather than finishing a 4 GB read first.
    """
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bionas-fields") as pool:
        bbox = pool.submit(find_ragged_rows, cfg.bbox, "\t", None, stop) if cfg.bbox else None
        metadata = pool.submit(find_ragged_rows, cfg.metadata, profile.delimiter, cfg.limit, stop)
        try:
            yield metadata, bbox
        except BaseException:  # an unreadable table or Ctrl-C
            stop.set()
            raise


def counted(count: Future[RaggedRows], table: pl.DataFrame) -> RaggedRows:
    """The finished count of a table's fields, checked against the rows Polars read."""
    ragged = count.result()
    check_rows(ragged, table.height)
    return ragged


def read_tables(
    cfg: IngestConfig, profile: DatasetProfile
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """The scanned metadata table, and the bbox table (None without --bbox)."""
    scans = [(scan_metadata(cfg, profile), cfg.metadata)]
    if cfg.bbox:
        scans.append((scan_bbox(cfg.bbox), cfg.bbox))
    frame, *bbox = collect_tables(scans)
    return frame, (bbox or [None])[0]


def plan_rejects(
    frame: pl.DataFrame,
    reason: np.ndarray,
    splits: Splits,
    ragged: RaggedTables,
    boxes: Boxes,
    cfg: IngestConfig,
) -> pl.DataFrame:
    """The rejected rows with their reason and detail, in file order."""
    rejected = np.flatnonzero(reason)
    bbox_fields = boxes.row_fields[rejected] if boxes.row_fields is not None else 0
    rejects = reject_details(
        frame.gather(rejected).with_columns(
            pl.Series("reason", REASONS, dtype=pl.String).gather(reason[rejected] - 1),
            splits.strings(rejected),
            splits.raw.alias("_raw_split"),
            pl.Series("_fields", ragged.metadata.fields_of(rejected)),
            pl.Series("_data_row", rejected + 1),
            pl.Series("_bbox_fields", np.broadcast_to(bbox_fields, len(rejected))),
        ),
        cfg,
        ragged.widths,
    )
    return rejects.cast(REJECT_SCHEMA)


def make_plan(cfg: IngestConfig, profile: DatasetProfile) -> Plan:
    """Scan, look up bboxes, validate, split, order and shard."""
    with counting_fields(cfg, profile) as (metadata_count, bbox_count):
        frame, bbox = read_tables(cfg, profile)
        bbox_ragged = counted(bbox_count, bbox) if bbox_count else None
        ids = frame[ID].rechunk()  # contiguous: hashed over its Arrow buffers, gathered at random
        frame = frame.with_columns(ids)
        salts = [f"bionas-split:{cfg.seed}:", f"bionas-order:{cfg.seed}:"]
        # independent whole-column passes, side by side: numpy and Polars release the GIL
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="bionas-plan") as pool:
            looked_up = pool.submit(lookup_boxes, ids, bbox, bbox_ragged)
            del bbox  # lookup_boxes frees its columns one by one
            first = pool.submit(first_occurrence, ids)
            buffers = string_buffers(ids)
            split_unit, order_unit = stable_unit_hashes(buffers, salts)
            keys = KeyChecks(safe_keys(ids, buffers), first.result())
            del buffers
            boxes = looked_up.result()
        ragged = RaggedTables(counted(metadata_count, frame), bbox_ragged)  # joined last
    frame = frame.with_columns(boxes.columns[c] for c in (*FRAME, *BOX))
    splits = assign_split(frame, split_unit, cfg, profile)
    ragged_rows = ragged.metadata.flags(frame.height)
    reason = reject_reasons(frame, ragged_rows, keys, splits, boxes.bad, cfg)
    rejects = plan_rejects(frame, reason, splits, ragged, boxes, cfg)
    asked = [i for i, name in enumerate(splits.names) if name in (cfg.splits or ())]
    good = reason == 0
    keep = good & np.isin(splits.codes, asked) if cfg.splits else good
    excluded = int((good & ~keep).sum())
    clipped = int((boxes.clipped & keep).sum())
    size = cfg.resolved_shard_size()
    samples = order_and_shard(ids, splits, order_unit, np.flatnonzero(keep), size)
    log.info("plan: %d samples, %d rejects, %d excluded", samples.height, rejects.height, excluded)
    return Plan(frame, samples, rejects, size, excluded, clipped)
