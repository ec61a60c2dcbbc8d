"""Resume (SPEC §4 step 3): which shards of an earlier run are kept, which are redone.

After each shard is renamed into place, a small state record (its ShardInfo, the sha256
of its recipe, its rejects) is written under `DATASET_DIR/.state/`. A rerun keeps a
shard whose file still hashes to its record and whose recipe is unchanged, unless a
file behind one of its `missing_file`/`unreadable_file` rejects is now there to read
(a restored photo lands on the next run instead of staying rejected forever). The rest
is redone, so the result is byte-identical to one clean run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import polars as pl

from bionas.ingest.execute import FetchRows, ShardResult, ShardTask
from bionas.ingest.profiles import ID
from bionas.ingest.scan import PATH, path_expression
from bionas.manifests.manifest import SHARD_DIR
from bionas.shards.atomic import write_atomic
from bionas.shards.writer import file_sha256

STATE_DIR = ".state"
RECHECKED_REASONS = ("missing_file", "unreadable_file")
_SHARD_FILE = re.compile(r"^[a-z_]+-\d{6}\.tar(\.zst)?$")


def state_path(out: Path, task: ShardTask) -> Path:
    return out / STATE_DIR / task.split / f"{task.path.name}.json"


def save_state(out: Path, task: ShardTask, result: ShardResult) -> None:
    """Record a finished shard (atomically, fsynced): the next run may keep it."""
    path = state_path(out, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result.to_json(), sort_keys=True).encode())


def kept_result(out: Path, task: ShardTask, fetch: FetchRows) -> ShardResult | None:
    """The recorded result of a shard from an earlier run, if it can be kept as it is."""
    path = state_path(out, task)
    if not path.exists() or not task.path.exists():
        return None
    try:
        result = ShardResult.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError):
        return None
    if result.recipe_sha256 != task.recipe_sha256 or result.info.bytes != task.path.stat().st_size:
        return None
    if file_sha256(task.path) != result.info.sha256:
        return None
    return None if rejected_file_is_back(task, result.rejects, fetch) else result


def rejected_file_is_back(task: ShardTask, rejects: list[dict], fetch: FetchRows) -> bool:
    """Whether an image rejected as missing or unreadable is now a readable file."""
    keys = [r["processid"] for r in rejects if r["reason"] in RECHECKED_REASONS]
    if not keys:
        return False
    rows = (
        fetch(task.frame_rows)
        .filter(pl.col(ID).is_in(keys))
        .with_columns(path_expression(task.image_path, task.path_parts))
    )
    for relative in rows[PATH]:
        path = task.images_root / relative
        if path.is_file() and os.access(path, os.R_OK):
            return True
    return False


def partition(
    tasks: list[ShardTask], out: Path, fetch: FetchRows
) -> tuple[list[ShardResult], list[ShardTask]]:
    """(results of the shards kept from an earlier run, tasks to do); reads, never writes."""
    kept, todo = [], []
    for task in tasks:
        result = kept_result(out, task, fetch)
        if result is not None:
            kept.append(result)
        else:
            todo.append(task)
    return kept, todo


def stale_files(out: Path, planned: set[Path]) -> list[Path]:
    """Shard files of ours, and their state records, that the current plan does not write."""
    shard_dir = out / SHARD_DIR
    stale = [
        path
        for path in sorted(shard_dir.glob("*/*"))
        if _SHARD_FILE.match(path.name) and path not in planned
    ]
    for path in sorted((out / STATE_DIR).glob("*/*.json")):
        if shard_dir / path.parent.name / path.name.removesuffix(".json") not in planned:
            stale.append(path)
    return stale
