"""The sample format of a shard: keys, member names and the JSON record (SPEC §4).

A sample is `<key>.jpg` (the image) and `<key>.json` (the record). The key is the
processid. The record holds raw strings for every categorical field and numbers for the
numeric ones; indices come from the vocabularies at load time.
"""

from __future__ import annotations

import json
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
SHARD_SUFFIX = {"none": ".tar", "zstd": ".tar.zst"}

# WebDataset splits a member name at the first dot, so keys must not contain one.
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_\-:+@=,]+$")


def is_safe_key(key: str) -> bool:
    """True when `key` can be a sample key and a file name: no dots, separators or `..`."""
    return bool(key) and len(key) <= 90 and _SAFE_KEY.match(key) is not None


def shard_name(split: str, index: int, compression: str) -> str:
    """`train-000003.tar` (or `.tar.zst`)."""
    return f"{split}-{index:06d}{SHARD_SUFFIX[compression]}"


def encode_record(record: dict[str, Any]) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, UTF-8 (deterministic)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def decode_record(data: bytes) -> dict[str, Any]:
    """Parse a record; JSON only, never pickle."""
    record = json.loads(data)
    if not isinstance(record, dict):
        raise ValueError("sample record is not a JSON object")
    return record
