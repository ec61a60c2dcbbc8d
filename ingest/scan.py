"""Read the metadata table and the bbox table (SPEC §4 step 1): only the needed columns.

Both scans run in Polars' streaming engine, so numbers are parsed batch by batch while
the file is read and the full string columns of the numeric fields never exist. A blank
label (a quoted empty cell) stays "" here and counts as missing where labels are used
(the target check, the records, the vocabularies), rather than rewriting 11 columns of
5M cells for a handful of blanks. Image paths are not built here (5M strings): each worker
formats the paths of its own shard from the path parts (`path_parts`).
"""

from __future__ import annotations

import codecs
import csv
import os
import re
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from bionas.errors import BionasError
from bionas.ingest.config import IngestConfig
from bionas.ingest.profiles import BBOX_COLUMNS, OFFICIAL_SPLIT, DatasetProfile

BOX = ("x0", "y0", "x1", "y1")
FRAME = ("width_original", "height_original")
PART_PREFIX = "_part_"  # a path-only (or numeric) column, kept raw for the path
PATH = "_path"
# Polars' streaming CSV reader reads ahead in 32 MB chunks, by default 2 per thread: on
# 16 threads ~1 GB of raw text in flight (a 5.15M-row plan peaked at 3.44 GB there). From
# the page cache a few chunks keep every decoder fed.
READ_AHEAD_ENV = "POLARS_CSV_CHUNK_PREFETCH_LIMIT"
READ_AHEAD_CHUNKS = 4


HEAD_BYTES = 65536  # read to find the header line and check the text is UTF-8

# BIOSCAN-5M's metadata is also distributed zipped; say what to do rather than "binary"
ARCHIVES = (
    (b"PK\x03\x04", "zip archive", "unzip"),
    (b"\x1f\x8b", "gzip file", "gunzip"),
    (b"(\xb5/\xfd", "zstd file", "unzstd"),
    (b"\xfd7zXZ\x00", "xz file", "unxz"),
)


def read_header(path: Path, delimiter: str) -> list[str]:
    """The first line of a delimited file; a clear error when it is not one."""
    if not path.is_file():
        raise BionasError(f"{path}: no such file")
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    for magic, kind, how in ARCHIVES:
        if head.startswith(magic):
            raise BionasError(f"{path} is a {kind}, not a CSV/TSV text file: {how} it first")
    if b"\x00" in head:
        raise BionasError(f"{path} is not a CSV/TSV text file (it contains binary data)")
    # utf-8-sig: a byte-order mark (a spreadsheet's export) is not part of a name; the
    # incremental decoder keeps a character cut by the end of the read for later (none comes)
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    try:
        text = decoder.decode(head, final=len(head) < HEAD_BYTES)
        first = text.splitlines()[0] if text else ""
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


def require_unique_columns(path: Path, header: list[str], needed: list[str]) -> None:
    """Refuse a header that names a needed column twice: which copy is meant is unknowable.

    Polars would read the first and rename the second `<name>_duplicated_0`, so every value
    might come from the wrong copy. Repeated names among columns bionas does not read are
    left alone.
    """
    repeated = [name for name in dict.fromkeys(needed) if header.count(name) > 1]
    if repeated:
        where = "; ".join(
            f"'{name}' is columns "
            + ", ".join(str(i + 1) for i, column in enumerate(header) if column == name)
            for name in repeated
        )
        raise BionasError(
            f"{path}: its header names a column bionas reads more than once ({where}), so "
            "which copy holds the values is unknown: rename or remove the extra copies"
        )


def template_columns(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def path_parts(profile: DatasetProfile) -> tuple[str, ...]:
    """The scanned frame's column for each field of the profile's path template.

    A raw column the frame keeps as a label (string or categorical) is used under its
    canonical name; any other one is kept as `_part_<raw>`.
    """
    rename = profile.rename_map()
    kept = set(profile.raw_columns(with_path=False)) - set(profile.numeric)
    return tuple(
        rename.get(raw, raw) if raw in kept else PART_PREFIX + raw
        for raw in template_columns(profile.image_path)
    )


def path_expression(template: str, parts: tuple[str, ...]) -> pl.Expr:
    """The image path from the template, its fields read from `parts`; empty parts collapse."""
    pattern = re.sub(r"\{[^}]*\}", "{}", template)
    texts = (pl.col(p).cast(pl.String).fill_null("").str.strip_chars() for p in parts)
    joined = pl.format(pattern, *texts)
    # an empty part leaves "//" (BIOSCAN's empty chunk) or a leading "/"
    return joined.str.replace_all("//", "/", literal=True).str.strip_prefix("/").alias(PATH)


@contextmanager
def bounded_read_ahead(chunks: int = READ_AHEAD_CHUNKS) -> Iterator[None]:
    """Cap the CSV read-ahead of the queries run inside (unless the user set it).

    Polars reads the variable when a query starts, so only the scans run here are capped.
    """
    if READ_AHEAD_ENV in os.environ:
        yield
        return
    os.environ[READ_AHEAD_ENV] = str(chunks)
    try:
        yield
    finally:
        os.environ.pop(READ_AHEAD_ENV, None)


def collect_table(lf: pl.LazyFrame, path: Path) -> pl.DataFrame:
    """Run a scan in the streaming engine; a file Polars cannot parse is a user error."""
    try:
        with bounded_read_ahead():
            return lf.collect(engine="streaming")
    except pl.exceptions.ComputeError as exc:
        raise BionasError(f"cannot read {path} as a table: {_first_line(exc)}") from exc


def _first_line(exc: Exception, limit: int = 300) -> str:
    """Polars quotes the offending rows verbatim (kilobytes over many lines): keep the
    first line, cut to `limit` characters."""
    line = (str(exc).strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def collect_tables(scans: list[tuple[pl.LazyFrame, Path]]) -> list[pl.DataFrame]:
    """Run scans at once (one file alone leaves a core idle part of the time)."""
    try:
        with bounded_read_ahead():
            return pl.collect_all([lf for lf, _ in scans], engine="streaming")
    except pl.exceptions.ComputeError:
        for lf, path in scans:  # which file is it? (only on this error path)
            collect_table(lf, path)
        raise


def categorical_fields(profile: DatasetProfile) -> list[str]:
    """Label fields held as pl.Categorical: 4 bytes a row instead of a 16-byte string view.

    Every rank, the extra labels (country, ...) and the split: at BIOSCAN-5M scale this
    cuts the scanned frame by ~0.55 GB for ~0.5 s more of reading on 2 cores (measured
    4.53 -> 5.02 s, 2.09 -> 1.55 GB). Not `dna_bin` (~300k values: the cast costs more)
    nor the ids (unique).
    """
    split = [OFFICIAL_SPLIT] if profile.split_column else []
    return [*profile.rank_names, *profile.extra_categorical, *split]


def scan_columns(
    path: Path, profile: DatasetProfile, columns: list[str], limit: int | None = None
) -> pl.LazyFrame:
    """Lazy scan of the raw `columns` of a table in the profile's layout, as strings.

    The header is checked first: each column present, and named once. `limit`: the first
    rows only. Shared by ingest and `bionas predict --metadata`.
    """
    header = read_header(path, profile.delimiter)
    require_columns(path, header, columns, owner=f"profile {profile.name!r} ({profile.source})")
    require_unique_columns(path, header, columns)
    # a row with too many fields is kept (and rejected by the plan: `ragged`), not an error
    lf = pl.scan_csv(
        path, separator=profile.delimiter, infer_schema=False, truncate_ragged_lines=True
    ).select(columns)
    return lf if limit is None else lf.head(limit)


def scan_metadata(cfg: IngestConfig, profile: DatasetProfile) -> pl.LazyFrame:
    """Lazy scan of only the needed columns, renamed to canonical names.

    Numeric fields become Float64 (blank or malformed cells null), `categorical_fields`
    pl.Categorical; path parts the frame would not keep as labels stay as `_part_<column>`.
    """
    if cfg.target not in profile.categorical:
        raise BionasError(
            f"--target {cfg.target} is not a field of profile {profile.name!r} "
            f"(fields: {', '.join(profile.categorical)})"
        )
    columns = profile.raw_columns(with_barcode=cfg.with_barcode)
    lf = scan_columns(cfg.metadata, profile, columns, cfg.limit)
    raw_parts = [
        p.removeprefix(PART_PREFIX) for p in path_parts(profile) if p.startswith(PART_PREFIX)
    ]
    kept = set(profile.raw_columns(with_barcode=cfg.with_barcode, with_path=False))
    lf = lf.with_columns(pl.col(c).alias(PART_PREFIX + c) for c in raw_parts)
    lf = lf.drop([c for c in raw_parts if c not in kept]).rename(profile.rename_map())
    return lf.with_columns(
        *(pl.col(c).str.strip_chars().cast(pl.Float64, strict=False) for c in profile.numeric),
        *(pl.col(c).cast(pl.Categorical) for c in categorical_fields(profile)),
    )


def scan_bbox(path: Path) -> pl.LazyFrame:
    """Lazy scan of the bbox table: processid, the frame size and the box, as Float64."""
    header = read_header(path, "\t")
    require_columns(path, header, list(BBOX_COLUMNS[:7]))
    require_unique_columns(path, header, list(BBOX_COLUMNS[:7]))
    lf = pl.scan_csv(path, separator="\t", infer_schema=False, truncate_ragged_lines=True)
    lf = lf.select(BBOX_COLUMNS[:7])
    return lf.with_columns(
        pl.col(c).str.strip_chars().cast(pl.Float64, strict=False) for c in (*FRAME, *BOX)
    )
