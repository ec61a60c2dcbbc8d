"""The ingest plan (SPEC §4 step 1): one lazy Polars query, collected once.

scan (only the needed columns) -> join bbox -> validate (reject reasons) -> split ->
sample order -> shard assignment. The result says, for every row, either which shard
it lands in or why it was rejected.
"""

from __future__ import annotations

import csv
import logging
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from bionas.errors import BionasError
from bionas.ingest.config import IngestConfig
from bionas.ingest.profiles import BBOX_COLUMNS, ID, OFFICIAL_SPLIT, DatasetProfile
from bionas.shards.format import shard_name

log = logging.getLogger(__name__)

BOX = ("x0", "y0", "x1", "y1")
FRAME = ("width_original", "height_original")
DEFAULT_FRAME = (1024.0, 768.0)
PATH = "_path"
SAFE_KEY_PATTERN = r"^[A-Za-z0-9_\-:+@=,]{1,90}$"  # shards.format.is_safe_key, vectorised
REJECT_SCHEMA = {
    "processid": pl.String,
    "split": pl.String,
    "stage": pl.String,
    "reason": pl.String,
    "detail": pl.String,
}


@dataclass(frozen=True)
class Plan:
    """Accepted samples (with split, order and shard) and plan-stage rejects."""

    samples: pl.DataFrame
    rejects: pl.DataFrame
    shard_size: int
    excluded: int  # rows valid but in a split not asked for (`--splits`)
    clipped_bboxes: int

    def shard_groups(self, compression: str) -> list[tuple[str, int, str, pl.DataFrame]]:
        """(split, index, file name, rows) per shard, in split then index order."""
        groups = []
        for (split, index), rows in self.samples.group_by(["split", "shard"], maintain_order=True):
            groups.append((split, int(index), shard_name(split, int(index), compression), rows))
        return sorted(groups, key=lambda g: (g[0], g[1]))


def read_header(path: Path, delimiter: str) -> list[str]:
    """The first line of a delimited file; a clear error when it is not one."""
    if not path.is_file():
        raise BionasError(f"{path}: no such file")
    with open(path, "rb") as handle:
        head = handle.read(65536)
    if b"\x00" in head:
        raise BionasError(f"{path} is not a CSV/TSV text file (it contains binary data)")
    try:
        first = head.decode("utf-8").splitlines()[0] if head else ""
    except UnicodeDecodeError as exc:
        raise BionasError(f"{path} is not a UTF-8 CSV/TSV text file ({exc.reason})") from exc
    header = next(csv.reader([first], delimiter=delimiter), [])
    if len(header) < 2:
        kind = "tab-separated" if delimiter == "\t" else "comma-separated"
        raise BionasError(f"{path} is not a {kind} table with a header line (got {first[:80]!r})")
    return header


def require_columns(
    path: Path, header: list[str], needed: list[str], owner: str = "bionas"
) -> None:
    missing = [c for c in needed if c not in header]
    if missing:
        shown = ", ".join(header[:30]) + (" ..." if len(header) > 30 else "")
        raise BionasError(
            f"{owner} needs column(s) {', '.join(missing)}, which {path} does not have "
            f"(it has: {shown})"
        )


def path_expression(template: str) -> pl.Expr:
    """The image path from the template over raw columns; empty parts collapse."""
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    pattern = re.sub(r"\{[^}]*\}", "{}", template)
    joined = pl.format(pattern, *(pl.col(n).fill_null("").str.strip_chars() for n in names))
    # an empty part leaves "//" (BIOSCAN's empty chunk) or a leading "/"
    return joined.str.replace_all("//", "/", literal=True).str.strip_prefix("/").alias(PATH)


def scan_metadata(cfg: IngestConfig, profile: DatasetProfile) -> pl.LazyFrame:
    """Lazy scan of only the needed columns as strings, renamed to canonical names."""
    if cfg.target not in profile.categorical:
        raise BionasError(
            f"--target {cfg.target} is not a field of profile {profile.name!r} "
            f"(fields: {', '.join(profile.categorical)})"
        )
    header = read_header(cfg.metadata, profile.delimiter)
    columns = profile.raw_columns(with_barcode=cfg.with_barcode)
    require_columns(
        cfg.metadata, header, columns, owner=f"profile {profile.name!r} ({profile.source})"
    )
    lf = pl.scan_csv(cfg.metadata, separator=profile.delimiter, infer_schema=False).select(columns)
    if cfg.limit is not None:
        lf = lf.head(cfg.limit)
    kept = set(profile.raw_columns(with_barcode=cfg.with_barcode, with_path=False))
    lf = lf.with_columns(path_expression(profile.image_path))
    lf = lf.drop([c for c in profile.path_columns() if c not in kept])
    lf = lf.rename(profile.rename_map()).with_row_index("row")
    return lf.with_columns(
        pl.col(c).str.strip_chars().cast(pl.Float64, strict=False) for c in profile.numeric
    ).with_columns(  # the CSV reader gives null for empty cells; blank ones become null too
        pl.when(pl.col(c).str.len_bytes() > 0).then(pl.col(c)) for c in profile.categorical
    )


def scan_bbox(path: Path) -> pl.LazyFrame:
    header = read_header(path, "\t")
    require_columns(path, header, list(BBOX_COLUMNS[:7]))
    lf = pl.scan_csv(path, separator="\t", infer_schema=False).select(BBOX_COLUMNS[:7])
    return lf.with_columns(
        pl.col(c).str.strip_chars().cast(pl.Float64, strict=False) for c in (*FRAME, *BOX)
    ).filter(pl.col("processid").is_first_distinct())


def join_bbox(lf: pl.LazyFrame, bbox: pl.LazyFrame | None) -> pl.LazyFrame:
    if bbox is None:
        return lf.with_columns(pl.lit(None, pl.Float64).alias(c) for c in (*FRAME, *BOX))
    return lf.join(bbox.rename({"processid": ID}), on=ID, how="left")


def clip_bbox(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Clip boxes to the frame; flag boxes that are degenerate or wholly outside (kept as is)."""
    w = pl.col("width_original").fill_null(DEFAULT_FRAME[0])
    h = pl.col("height_original").fill_null(DEFAULT_FRAME[1])
    has_box = pl.all_horizontal(pl.col(c).is_not_null() for c in BOX)
    clipped = {
        "x0": pl.max_horizontal(pl.col("x0"), 0.0),
        "y0": pl.max_horizontal(pl.col("y0"), 0.0),
        "x1": pl.min_horizontal(pl.col("x1"), w),
        "y1": pl.min_horizontal(pl.col("y1"), h),
    }
    was_clipped = pl.any_horizontal(clipped[c] != pl.col(c) for c in BOX)
    degenerate = (pl.col("x1") <= pl.col("x0")) | (pl.col("y1") <= pl.col("y0"))
    empty_after_clip = ((clipped["x1"] - clipped["x0"]) < 1) | ((clipped["y1"] - clipped["y0"]) < 1)
    bad = has_box & (degenerate | empty_after_clip)
    return lf.with_columns(
        bad.alias("_bad_bbox"), (has_box & was_clipped & ~bad).alias("_clipped")
    ).with_columns(
        pl.when(has_box & ~pl.col("_bad_bbox")).then(expr).otherwise(pl.col(c)).alias(c)
        for c, expr in clipped.items()
    )


def reject_reasons(lf: pl.LazyFrame, cfg: IngestConfig) -> pl.LazyFrame:
    """Add `reason` (null for a good row); the first matching rule wins."""
    pid = pl.col(ID)
    rules = [
        (pid.is_null() | ~pid.str.contains(SAFE_KEY_PATTERN), "unsafe_processid"),
        (~pid.is_first_distinct(), "duplicate_processid"),
        (pl.col(cfg.target).is_null(), "empty_target"),
        (pl.col("_split").is_null(), "missing_split"),
        (pl.col("_bad_bbox"), "bad_bbox"),
    ]
    reason = pl.when(rules[0][0]).then(pl.lit(rules[0][1]))
    for cond, name in rules[1:]:
        reason = reason.when(cond).then(pl.lit(name))
    return lf.with_columns(reason.otherwise(None).alias("reason"))


def reject_details(rejected: pl.DataFrame, cfg: IngestConfig) -> pl.DataFrame:
    """A human-readable `detail` per rejected row (computed for the rejects only)."""
    reason = pl.col("reason")
    detail = (
        pl.when(reason == "unsafe_processid")
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
                *BOX,
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


_FNV_OFFSET, _FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


def stable_unit_hash(values: pl.Series, salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per string, stable across machines and library versions.

    64-bit FNV-1a over the salted UTF-8 bytes, then the splitmix64 finaliser, vectorised
    over byte positions with numpy (Polars' own hash may change between versions).
    """
    state = _FNV_OFFSET
    for byte in salt.encode():
        state = ((state ^ byte) * _FNV_PRIME) % (1 << 64)
    strings = values.fill_null("").to_list()
    try:
        raw = np.array(strings, dtype=bytes) if strings else np.zeros(0, dtype="S1")
    except UnicodeEncodeError:
        raw = np.array([v.encode() for v in strings], dtype=bytes)
    width = raw.dtype.itemsize
    matrix = raw.view(np.uint8).reshape(len(raw), width)
    lengths = np.char.str_len(raw)
    h = np.full(len(raw), state, dtype=np.uint64)
    prime = np.uint64(_FNV_PRIME)
    with np.errstate(over="ignore"):
        for j in range(width):
            live = lengths > j
            h[live] = (h[live] ^ matrix[live, j].astype(np.uint64)) * prime
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_split(df: pl.DataFrame, cfg: IngestConfig, profile: DatasetProfile) -> pl.DataFrame:
    """`_split`: the official split column, or a seeded hash of the id into ratio buckets."""
    if cfg.split_source == "official":
        if not profile.split_column:
            raise BionasError(
                f"profile {profile.name} has no split column: use --split-source random"
            )
        raw = pl.col(OFFICIAL_SPLIT).str.strip_chars()
        return df.with_columns(
            raw.alias("_raw_split"),
            pl.when(raw.is_in(list(cfg.split_names))).then(raw).otherwise(None).alias("_split"),
        )
    u = stable_unit_hash(df[ID], salt=f"bionas-split:{cfg.seed}:")
    edges = np.cumsum(cfg.split_ratios)[:-1]
    names = np.array(cfg.split_names)
    split = names[np.searchsorted(edges, u, side="right")]
    return df.with_columns(
        pl.Series("_split", split, dtype=pl.String), pl.lit("random").alias("_raw_split")
    )


def order_and_shard(accepted: pl.DataFrame, cfg: IngestConfig) -> pl.DataFrame:
    """Seeded shuffled order within each split, then consecutive runs of `shard_size`.

    A sample's place comes from a seeded hash of its processid, so the order depends
    neither on the CSV's row order nor on which other rows are present.
    """
    unit = stable_unit_hash(accepted[ID], salt=f"bionas-order:{cfg.seed}:")
    # one float key (split rank by name + the unit hash): a single-key Polars sort is far
    # faster than a gather of the wide frame or a sort on string columns
    key = accepted["split"].rank("dense").to_numpy().astype(np.float64) + unit
    ordered = accepted.with_columns(pl.Series("_key", key)).sort("_key", maintain_order=True)
    ordered = ordered.drop("_key")
    size = cfg.resolved_shard_size()
    return ordered.with_columns(
        (pl.int_range(pl.len()).over("split") // size).cast(pl.Int64).alias("shard")
    )


def make_plan(cfg: IngestConfig, profile: DatasetProfile) -> Plan:
    """Scan, join, validate, split, order and shard: one lazy query, collected once."""
    bbox = scan_bbox(cfg.bbox) if cfg.bbox else None
    lf = scan_metadata(cfg, profile).pipe(join_bbox, bbox).pipe(clip_bbox)
    try:
        df = lf.collect()
    except pl.exceptions.ComputeError as exc:
        raise BionasError(f"cannot read {cfg.metadata} as a table: {exc}") from exc
    df = assign_split(df, cfg, profile)
    df = reject_reasons(df.lazy(), cfg).collect()
    rejects = reject_details(df.filter(pl.col("reason").is_not_null()), cfg)
    good = df.filter(pl.col("reason").is_null())
    wanted = good["_split"].is_in(list(cfg.splits)) if cfg.splits else None
    excluded = 0 if wanted is None else int((~wanted).sum())
    if wanted is not None:
        good = good.filter(wanted)
    clipped = int(good["_clipped"].sum())
    good = good.rename({"_split": "split"}).drop(
        [c for c in ("_raw_split", "_bad_bbox", "_clipped", "reason") if c in good.columns]
    )
    samples = order_and_shard(good, cfg)
    log.info("plan: %d samples, %d rejects, %d excluded", samples.height, rejects.height, excluded)
    return Plan(samples, rejects.cast(REJECT_SCHEMA), cfg.resolved_shard_size(), excluded, clipped)
