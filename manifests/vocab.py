"""Vocabularies: one JSON file per categorical field (SPEC §4).

Index 0 is reserved for unknown/missing. For the target field, values with fewer than
`min_count` records fold into `Other` (a value with exactly `min_count` stays). For
feature fields, values below `min_count` map to unknown. Values are ordered by count
(descending) then name, so the file is deterministic; `Other` comes last.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bionas.shards.atomic import write_atomic

UNKNOWN = "<unk>"
OTHER = "Other"
SCHEMA = "bionas.vocab/1"


@dataclass(frozen=True)
class Vocab:
    """An ordered value list with counts; index 0 is unknown."""

    field: str
    role: str  # "target" or "feature"
    values: tuple[str, ...]
    counts: tuple[int, ...]
    min_count: int
    counted_splits: tuple[str, ...]
    folded: Mapping[str, int] = field(default_factory=dict)  # value -> count, into Other
    _index: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {v: i for i, v in enumerate(self.values)})

    def __len__(self) -> int:
        return len(self.values)

    @property
    def has_other(self) -> bool:
        return self.role == "target" and OTHER in self._index

    def lookup(self, value: str | None) -> int:
        """Index of a raw string: folded values -> Other, anything unseen or empty -> 0."""
        if value is None or value == "":
            return 0
        index = self._index.get(value)
        if index is not None:
            return index
        if value in self.folded and self.has_other:
            return self._index[OTHER]
        return 0

    def to_json(self) -> dict:
        body = {
            "schema": SCHEMA,
            "field": self.field,
            "role": self.role,
            "unknown_index": 0,
            "other": OTHER if self.has_other else None,
            "min_count": self.min_count,
            "counted_splits": list(self.counted_splits),
            "values": list(self.values),
            "counts": list(self.counts),
            "folded": dict(sorted(self.folded.items())),
        }
        body["sha256"] = content_sha256(body)
        return body

    @property
    def sha256(self) -> str:
        return self.to_json()["sha256"]


def content_sha256(body: Mapping) -> str:
    """sha256 of the canonical JSON of `body` without its own `sha256` key."""
    canonical = {k: v for k, v in body.items() if k != "sha256"}
    data = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()


def build_vocab(
    field_name: str,
    counts: Mapping[str, int],
    *,
    role: str = "feature",
    min_count: int = 1,
    counted_splits: Sequence[str] = (),
) -> Vocab:
    """Build a vocabulary from value counts (empty/None keys are ignored)."""
    if role not in ("target", "feature"):
        raise ValueError(f"role must be 'target' or 'feature', not {role!r}")
    items = [(v, int(n)) for v, n in counts.items() if v not in (None, "") and n > 0]

    def stays(value: str, n: int) -> bool:
        # for the target, a real class literally named "Other" joins the bucket
        return n >= min_count and not (role == "target" and value == OTHER)

    kept = sorted(((v, n) for v, n in items if stays(v, n)), key=lambda vn: (-vn[1], vn[0]))
    values = [UNKNOWN] + [v for v, _ in kept]
    value_counts = [0] + [n for _, n in kept]
    folded: dict[str, int] = {}
    if role == "target":
        folded = {v: n for v, n in items if not stays(v, n)}
        if folded:
            values.append(OTHER)
            value_counts.append(sum(folded.values()))
    return Vocab(
        field=field_name,
        role=role,
        values=tuple(values),
        counts=tuple(value_counts),
        min_count=min_count,
        counted_splits=tuple(counted_splits),
        folded=folded,
    )


def vocab_filename(field_name: str) -> str:
    return f"vocab_{field_name}.json"


def write_vocab(vocab: Vocab, directory: Path) -> Path:
    """Write `vocab_<field>.json` (atomically, fsynced) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / vocab_filename(vocab.field)
    text = json.dumps(vocab.to_json(), indent=1, ensure_ascii=False) + "\n"
    write_atomic(path, text.encode())
    return path


def load_vocab(path: Path) -> Vocab:
    """Read a vocab file; refuses a file whose content does not match its sha256."""
    body = json.loads(Path(path).read_text())
    if body.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a bionas vocabulary (schema {body.get('schema')!r})")
    if content_sha256(body) != body.get("sha256"):
        raise ValueError(f"{path}: content does not match its sha256; the file was edited")
    return Vocab(
        field=body["field"],
        role=body["role"],
        values=tuple(body["values"]),
        counts=tuple(body["counts"]),
        min_count=body["min_count"],
        counted_splits=tuple(body["counted_splits"]),
        folded=dict(body.get("folded", {})),
    )
