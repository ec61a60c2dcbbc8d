"""The dataset manifest: `DATASET_DIR/manifest.json` (SPEC §4).

It records the inputs (size, sha256), the options, library versions, each split's
shard list (samples, bytes, sha256, first/last key), class counts, reject counts and
the vocabulary files in force. The file has no timestamp, so the same inputs and
options give a byte-identical manifest.

`manifest.json` is the mark of a finished dataset: ingest writes it last and, before it
touches any file of a finished dataset, replaces it with `manifest.incomplete.json` (the
run's recipe and the command that resumes it), so no reader takes a half-rewritten
dataset for a finished one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bionas.manifests.vocab import Vocab, load_vocab, vocab_filename
from bionas.shards.atomic import fsync_dir, write_atomic

SCHEMA = "bionas.manifest/1"
MANIFEST_NAME = "manifest.json"
INCOMPLETE_NAME = "manifest.incomplete.json"  # an ingest into the folder has not finished
INCOMPLETE_SCHEMA = "bionas.ingest-incomplete/1"
VOCAB_DIR = "manifests"
SHARD_DIR = "shards"
REJECTS_NAME = "rejects.parquet"


@dataclass(frozen=True)
class Manifest:
    """A read-only view of a dataset's manifest."""

    root: Path
    body: Mapping[str, Any]

    @property
    def target(self) -> str:
        return self.body["target"]

    @property
    def splits(self) -> list[str]:
        return list(self.body["splits"])

    @property
    def categorical_fields(self) -> list[str]:
        return list(self.body["categorical_fields"])

    def shards(self, split: str) -> list[dict[str, Any]]:
        """The shard records of a split (name, samples, bytes, sha256, first/last key)."""
        if split not in self.body["splits"]:
            known = ", ".join(self.splits) or "none"
            raise KeyError(f"split {split!r} is not in {self.root} (splits: {known})")
        return list(self.body["splits"][split]["shards"])

    def shard_paths(self, split: str) -> list[Path]:
        return [self.root / SHARD_DIR / split / s["name"] for s in self.shards(split)]

    def num_samples(self, split: str) -> int:
        return int(self.body["splits"][split]["samples"])

    def class_counts(self, split: str) -> dict[str, int]:
        return dict(self.body["class_counts"].get(split, {}))

    def vocab_path(self, field: str) -> Path:
        return self.root / VOCAB_DIR / vocab_filename(field)

    def vocab(self, field: str) -> Vocab:
        """Load a field's vocabulary (the file in force, which may have been regenerated)."""
        path = self.vocab_path(field)
        if not path.exists():
            raise FileNotFoundError(f"no vocabulary for field {field!r}: {path} is missing")
        return load_vocab(path)


def manifest_path(dataset_dir: Path) -> Path:
    return Path(dataset_dir) / MANIFEST_NAME


def load_manifest(dataset_dir: Path) -> Manifest:
    """Read `manifest.json` of a dataset; a clear error when it is not a bionas dataset."""
    path = manifest_path(dataset_dir)
    if not path.exists() and (marker := read_incomplete(dataset_dir)) is not None:
        raise FileNotFoundError(
            f"{dataset_dir} is not a finished bionas dataset: the ingest into it did not "
            f"finish; rerun it to resume: {marker.get('command', 'bionas ingest ...')}"
        )
    if not path.exists():
        above = [d for d in Path(dataset_dir).resolve().parents[:2] if manifest_path(d).exists()]
        hint = (
            f"; {above[0]} is one: did you mean it?"
            if above
            else " (create one with `bionas ingest`)"
        )
        raise FileNotFoundError(
            f"{dataset_dir} is not a bionas dataset: {path.name} is missing{hint}"
        )
    body = json.loads(path.read_text())
    if body.get("schema") != SCHEMA:
        raise ValueError(f"{path}: unknown manifest schema {body.get('schema')!r}")
    return Manifest(root=Path(dataset_dir), body=body)


def write_manifest(dataset_dir: Path, body: Mapping[str, Any]) -> Path:
    """Write the manifest atomically (fsynced with its folder) with canonical formatting."""
    path = manifest_path(dataset_dir)
    text = json.dumps({"schema": SCHEMA, **body}, indent=1, sort_keys=True, ensure_ascii=False)
    write_atomic(path, (text + "\n").encode())
    return path


def read_incomplete(dataset_dir: Path) -> dict[str, Any] | None:
    """The marker of an unfinished ingest (its recipe and resume command), if any."""
    path = Path(dataset_dir) / INCOMPLETE_NAME
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # a marker is never half-written; an edited one still says "unfinished"
    return body if isinstance(body, dict) and body.get("schema") == INCOMPLETE_SCHEMA else {}


def mark_incomplete(dataset_dir: Path, body: Mapping[str, Any]) -> None:
    """Write the unfinished-ingest marker, then set aside a finished dataset's manifest.

    In that order, so at every instant the folder holds one of the two."""
    text = json.dumps({"schema": INCOMPLETE_SCHEMA, **body}, indent=1, sort_keys=True)
    write_atomic(Path(dataset_dir) / INCOMPLETE_NAME, (text + "\n").encode())
    path = manifest_path(dataset_dir)
    if path.exists():
        path.unlink()
        fsync_dir(path.parent)


def clear_incomplete(dataset_dir: Path) -> None:
    """Remove the marker once `manifest.json` is written (it wins while both exist)."""
    path = Path(dataset_dir) / INCOMPLETE_NAME
    if path.exists():
        path.unlink()
        fsync_dir(path.parent)
