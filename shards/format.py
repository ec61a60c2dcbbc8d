"""The sample format of a shard: keys, member names and the JSON record (SPEC §4).

A sample is `<key>.jpg` (the image) and `<key>.json` (the record). The key is the
processid. The record holds raw strings for every categorical field and numbers for the
numeric ones; indices come from the vocabularies at load time.

Records are strict JSON (RFC 8259): a non-finite number (NaN, ±Infinity, as Polars reads
"nan" or "inf" from a CSV cell) is written as null, like an empty cell. Shards written
before this rule may hold the bare tokens `NaN`/`Infinity`; `decode_record` still reads
them (re-ingesting millions of images to fix a number would be out of proportion) and
gives None for them, so old and new shards decode alike.

Members have size caps (`MAX_IMAGE_BYTES`, `MAX_RECORD_BYTES`): ingest never writes more
(a 256 px JPEG is ~30 KB, a record ~1 KB), so a bigger member is damage or a bomb (a 9 KB
.tar.zst can declare a 300 MB member) and the reader never reads it whole.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Canonical categorical fields of a BIOSCAN-5M record, coarse to fine where taxonomic.
TAXONOMY_RANKS = ("phylum", "class", "order", "family", "subfamily", "genus", "species")
CATEGORICAL_FIELDS = (*TAXONOMY_RANKS, "taxon", "dna_bin", "country", "province_state")
NUMERIC_FIELDS = (
    "coord-lat",
    "coord-lon",
    "image_measurement_value",
    "area_fraction",
    "scale_factor",
)
IMAGE_EXT = "jpg"
RECORD_EXT = "json"
MAX_IMAGE_BYTES = 64 << 20  # 64 MiB: far above any photo ingest writes (even 1024 px, q100)
MAX_RECORD_BYTES = 1 << 20  # 1 MiB: a record is ~1 KB (a 660 nt barcode and some labels)
MEMBER_CAPS = {IMAGE_EXT: MAX_IMAGE_BYTES, RECORD_EXT: MAX_RECORD_BYTES}
# What PIL may decode a shard's image as: ingest writes JPEG only, and PIL's other openers
# (EPS runs Ghostscript, for one) have no business reading shard bytes.
IMAGE_FORMATS = ("JPEG",)
SHARD_SUFFIX = {"none": ".tar", "zstd": ".tar.zst"}

# WebDataset splits a member name at the first dot, so keys must not contain one.
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_\-:+@=,]+$")


def is_safe_key(key: str) -> bool:
    """True when `key` can be a sample key and a file name: no dots, separators or `..`."""
    return bool(key) and len(key) <= 90 and _SAFE_KEY.match(key) is not None


def shard_name(split: str, index: int, compression: str) -> str:
    """`train-000003.tar` (or `.tar.zst`)."""
    return f"{split}-{index:06d}{SHARD_SUFFIX[compression]}"


def member_key(name: str) -> tuple[str, str]:
    """(key, extension) of a tar member name, as WebDataset splits it: at the first dot of
    the base name; the extension lower-cased."""
    key, _, ext = name.rpartition("/")[2].partition(".")
    return key, ext.lower()


def encode_record(record: dict[str, Any]) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, UTF-8 (deterministic); a
    non-finite float becomes null."""
    return json.dumps(
        _finite(record), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
        allow_nan=False,
    ).encode()  # fmt: skip


def _finite(value: Any) -> Any:
    """`value` with every NaN/±inf float, however deep, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _finite_float(text: str) -> float | None:
    value = float(text)  # "1e999" parses to inf: null, as NaN/Infinity tokens are
    return value if math.isfinite(value) else None


def decode_record(data: bytes) -> dict[str, Any]:
    """Parse a record; JSON only, never pickle. Non-finite numbers (old shards) read as
    None; any failure, nesting too deep for the parser included, is a ValueError."""
    if len(data) > MAX_RECORD_BYTES:
        raise ValueError(f"sample record of {len(data)} bytes is over {MAX_RECORD_BYTES}")
    try:
        record = json.loads(data, parse_constant=lambda _: None, parse_float=_finite_float)
    except RecursionError:  # "[[[[…" nested past the interpreter's recursion limit
        raise ValueError("sample record is nested too deeply to parse") from None
    if not isinstance(record, dict):
        raise ValueError("sample record is not a JSON object")
    return record
