"""The first version of the ingest plan (bionas 14e3a73), kept as the specification.

Plain, slow Polars: one wide frame, string scans cast afterwards, a left join on the
processid, a per-string hash. The fast plan must give the same samples in the same
order, the same rejects and the same record fields. The reject details are written out
here row by row in plain Python (`reference_reject_details`), not taken from the plan.
"""

from __future__ import annotations

import math
import re
import string

import numpy as np
import polars as pl

from bionas.ingest.boxes import DEFAULT_FRAME
from bionas.ingest.config import IngestConfig
from bionas.ingest.plan import BOX, FRAME
from bionas.ingest.profiles import BBOX_COLUMNS, ID, OFFICIAL_SPLIT, DatasetProfile

SAFE_KEY_PATTERN = r"^[A-Za-z0-9_\-:+@=,]{1,90}$"
_FNV_OFFSET, _FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


def reference_unit_hash(values: pl.Series, salt: str) -> np.ndarray:
    """FNV-1a + splitmix64 over numpy `bytes` values, as first written."""
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


def _path(template: str) -> pl.Expr:
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    pattern = re.sub(r"\{[^}]*\}", "{}", template)
    joined = pl.format(pattern, *(pl.col(n).fill_null("").str.strip_chars() for n in names))
    return joined.str.replace_all("//", "/", literal=True).str.strip_prefix("/").alias("_path")


def _scan(cfg: IngestConfig, profile: DatasetProfile) -> pl.LazyFrame:
    columns = profile.raw_columns(with_barcode=cfg.with_barcode)
    lf = pl.scan_csv(cfg.metadata, separator=profile.delimiter, infer_schema=False).select(columns)
    if cfg.limit is not None:
        lf = lf.head(cfg.limit)
    kept = set(profile.raw_columns(with_barcode=cfg.with_barcode, with_path=False))
    lf = lf.with_columns(_path(profile.image_path))
    lf = lf.drop([c for c in profile.path_columns() if c not in kept]).rename(profile.rename_map())
    return lf.with_columns(
        pl.col(c).str.strip_chars().cast(pl.Float64, strict=False) for c in profile.numeric
    ).with_columns(
        pl.when(pl.col(c).str.len_bytes() > 0).then(pl.col(c)) for c in profile.categorical
    )


def clip_bbox(boxes: pl.DataFrame) -> pl.DataFrame:
    """Clip boxes to the frame; flag boxes that are malformed, degenerate or wholly outside
    (kept as is, for the reject detail).

    A bbox row claims a box: anything but four finite numbers (an empty or unreadable
    cell, `nan`, `inf`, in some coordinates or all four) is malformed; a processid without
    a bbox row has no box (since issue 11; before, four missing coordinates were no box
    either). A frame size that is not a positive finite number counts as unknown (null;
    the default frame is assumed for clipping and the image's own size is used when
    cropping).
    """
    boxes = boxes.with_columns(
        pl.when(pl.col(c).is_finite() & (pl.col(c) > 0)).then(pl.col(c)).alias(c) for c in FRAME
    )
    w = pl.col("width_original").fill_null(DEFAULT_FRAME[0])
    h = pl.col("height_original").fill_null(DEFAULT_FRAME[1])
    has_box = pl.all_horizontal(pl.col(c).is_finite().fill_null(False) for c in BOX)
    malformed = pl.col("_bbox_row").fill_null(False) & ~has_box
    clipped = {
        "x0": pl.max_horizontal(pl.col("x0"), 0.0),
        "y0": pl.max_horizontal(pl.col("y0"), 0.0),
        "x1": pl.min_horizontal(pl.col("x1"), w),
        "y1": pl.min_horizontal(pl.col("y1"), h),
    }
    was_clipped = pl.any_horizontal(clipped[c] != pl.col(c) for c in BOX)
    degenerate = (pl.col("x1") <= pl.col("x0")) | (pl.col("y1") <= pl.col("y0"))
    empty_after_clip = ((clipped["x1"] - clipped["x0"]) < 1) | ((clipped["y1"] - clipped["y0"]) < 1)
    bad = malformed | (has_box & (degenerate | empty_after_clip))
    return boxes.with_columns(
        bad.alias("_bad_bbox"), (has_box & was_clipped & ~bad).alias("_clipped")
    ).with_columns(
        pl.when(has_box & ~pl.col("_bad_bbox")).then(expr).otherwise(pl.col(c)).alias(c)
        for c, expr in clipped.items()
    )


def _join_bbox(lf: pl.LazyFrame, cfg: IngestConfig) -> pl.LazyFrame:
    if cfg.bbox is None:
        return lf.with_columns(
            *(pl.lit(None, pl.Float64).alias(c) for c in (*FRAME, *BOX)),
            pl.lit(None, pl.Boolean).alias("_bbox_row"),
        )
    bbox = pl.scan_csv(cfg.bbox, separator="\t", infer_schema=False).select(BBOX_COLUMNS[:7])
    bbox = (
        bbox.with_columns(
            pl.col(c).str.strip_chars().cast(pl.Float64, strict=False) for c in (*FRAME, *BOX)
        )
        .filter(pl.col("processid").is_first_distinct())
        .with_columns(pl.lit(True).alias("_bbox_row"))
    )
    return lf.join(bbox, on=ID, how="left", maintain_order="left")


def _split(df: pl.DataFrame, cfg: IngestConfig) -> pl.DataFrame:
    if cfg.split_source == "official":
        raw = pl.col(OFFICIAL_SPLIT).str.strip_chars()
        known = pl.when(raw.is_in(list(cfg.split_names))).then(raw)
        return df.with_columns(raw.alias("_raw_split"), known.alias("_split"))
    u = reference_unit_hash(df[ID], salt=f"bionas-split:{cfg.seed}:")
    names = np.array(cfg.split_names)
    split = names[np.searchsorted(np.cumsum(cfg.split_ratios)[:-1], u, side="right")]
    return df.with_columns(
        pl.Series("_split", split, dtype=pl.String), pl.lit("random").alias("_raw_split")
    )


def _reasons(df: pl.DataFrame, cfg: IngestConfig) -> pl.DataFrame:
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
    return df.with_columns(reason.otherwise(None).alias("reason"))


def _coordinate(value: float | None) -> str:
    """A box coordinate or frame size as a reject detail writes it (Polars' Float64 text)."""
    if value is None:
        return "missing"
    return "NaN" if math.isnan(value) else repr(value)  # 10.0, -0.0, inf, 1e+16


def _detail(row: dict, target: str) -> str:
    reason = row["reason"]
    if reason == "unsafe_processid":
        return f"processid '{row[ID] or ''}' is not a safe file name"
    if reason == "duplicate_processid":
        return "processid already used by an earlier row"
    if reason == "empty_target":
        return f"no {target} label"
    if reason == "missing_split":
        return f"split '{row['_raw_split'] or ''}' is not known"
    assert reason == "bad_bbox", reason
    box = ", ".join(_coordinate(row[c]) for c in BOX)
    frame = [row[c] if row[c] is not None else d for c, d in zip(FRAME, DEFAULT_FRAME, strict=True)]
    return f"bbox ({box}) in a {_coordinate(frame[0])}x{_coordinate(frame[1])} frame"


def reference_reject_details(rejected: pl.DataFrame, cfg: IngestConfig) -> pl.DataFrame:
    """processid, split, stage, reason and a readable detail per rejected row, in order."""
    rows = [
        {"processid": row[ID], "split": row["_split"], "stage": "plan", "reason": row["reason"],
         "detail": _detail(row, cfg.target)}
        for row in rejected.iter_rows(named=True)
    ]  # fmt: skip
    names = ("processid", "split", "stage", "reason", "detail")
    return pl.DataFrame(rows, schema=dict.fromkeys(names, pl.String))


def reference_plan(cfg: IngestConfig, profile: DatasetProfile) -> dict:
    """samples (wide rows in sample order, with split and shard), rejects, counts."""
    df = _join_bbox(_scan(cfg, profile), cfg).collect()
    df = clip_bbox(df)
    df = _reasons(_split(df, cfg), cfg)
    rejects = reference_reject_details(df.filter(pl.col("reason").is_not_null()), cfg)
    good = df.filter(pl.col("reason").is_null())
    excluded = 0
    if cfg.splits:
        wanted = good["_split"].is_in(list(cfg.splits))
        excluded = int((~wanted).sum())
        good = good.filter(wanted)
    clipped = int(good["_clipped"].sum())
    unit = reference_unit_hash(good[ID], salt=f"bionas-order:{cfg.seed}:")
    key = good["_split"].rank("dense").to_numpy().astype(np.float64) + unit
    ordered = good.with_columns(pl.Series("_key", key)).sort("_key", maintain_order=True)
    size = cfg.resolved_shard_size()
    samples = ordered.rename({"_split": "split"}).with_columns(
        (pl.int_range(pl.len()).over("split") // size).cast(pl.Int64).alias("shard")
    )
    return {"samples": samples, "rejects": rejects, "excluded": excluded, "clipped": clipped}
