"""Run an ingest plan (SPEC §4 steps 2-3): worker processes each write whole shards.

A shard's metadata rows are gathered from the plan's frame just before its task is sent
to a worker, a few tasks ahead of the workers, so the parent never holds a second copy
of all rows and the gathering overlaps the image work. Which shards an earlier run
already wrote is decided before, in `resume`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm import tqdm

from bionas import __version__
from bionas.ingest.config import IngestConfig
from bionas.ingest.images import ImageReject, ImageSpec, process_image, read_image
from bionas.ingest.plan import REJECT_SCHEMA, Plan
from bionas.ingest.profiles import ID, OFFICIAL_SPLIT, DatasetProfile
from bionas.ingest.scan import BOX, FRAME, PATH, path_expression, path_parts
from bionas.ingest.signals import STOP_WAIT_SECONDS, exit_with_parent, stop_workers
from bionas.ingest.transient import TransientReadError, raise_if_transient
from bionas.safe_paths import real_root
from bionas.shards.format import MAX_RECORD_BYTES, encode_record, shard_name
from bionas.shards.writer import Sample, ShardInfo, write_shard

log = logging.getLogger(__name__)
IN_FLIGHT_PER_WORKER = 2  # tasks sent ahead per worker, so none waits for its next shard

_progress: Any = None  # a shared counter of processed images, set in each worker


@dataclass(frozen=True)
class ShardTask:
    """What a worker needs to write one shard, besides the shard's rows; picklable."""

    split: str
    index: int
    path: Path
    frame_rows: np.ndarray  # the shard's rows in the plan's frame, in sample order
    recipe_sha256: str  # what decides its bytes (`recipe_sha256`): resume keeps it only if equal
    images_root: Path
    image_path: str  # the profile's path template ...
    path_parts: tuple[str, ...]  # ... and the rows' column for each of its fields
    spec: ImageSpec
    compression: str
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.frame_rows)


FetchRows = Callable[[np.ndarray], pl.DataFrame]  # frame rows -> their metadata


def run_fingerprint(cfg: IngestConfig, profile: DatasetProfile, inputs: dict) -> str:
    """Everything besides its processids that decides a shard's bytes, as canonical JSON.

    The input tables by sha256 (a label fixed in the CSV changes records), the image
    options, the record's fields and the profile's column mapping, the compression and the
    versions of bionas and of the codecs that encode the bytes (PIL and its libjpeg, zlib,
    zstd). Not the images' contents nor their root (5M files are not hashed for this, and a
    moved root keeps them valid): replaced photos or another image package need a fresh
    --out.
    """
    body = {
        "bionas": __version__,
        "codecs": codec_versions(cfg.compression),
        "columns": {
            "id": profile.id_column,
            "ranks": [list(pair) for pair in profile.ranks],
            "split": profile.split_column,
            "dna_bin": profile.dna_bin_column,
            "barcode": profile.barcode_column,
            "delimiter": profile.delimiter,
        },
        "inputs": {name: entry["sha256"] for name, entry in inputs.items() if "sha256" in entry},
        "spec": asdict(image_spec(cfg)),
        "compression": cfg.compression,
        "image_path": profile.image_path,
        "categorical": list(profile.categorical),
        "numeric": list(profile.numeric),
        "with_barcode": cfg.with_barcode,
    }
    return json.dumps(body, sort_keys=True)


def codec_versions(compression: str) -> dict[str, str | None]:
    """The libraries whose version changes a shard's bytes for the same inputs: a resume
    after an upgrade redoes its shards instead of mixing two encoders' output."""
    from PIL import __version__ as pil_version
    from PIL import features

    versions = {
        "PIL": pil_version,
        "libjpeg": features.version("jpg"),  # the ABI version; turbo's own below
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "zlib": features.version("zlib"),
    }
    if compression == "zstd":
        import zstandard

        versions["zstd"] = ".".join(map(str, zstandard.ZSTD_VERSION))
    return versions


def recipe_sha256(keys: pl.Series, fingerprint: str) -> str:
    """The sha256 of the run's fingerprint and the shard's processids in order."""
    digest = hashlib.sha256(fingerprint.encode())
    digest.update(b"\0" + "\n".join(keys.to_list()).encode())
    return digest.hexdigest()


def image_spec(cfg: IngestConfig) -> ImageSpec:
    return ImageSpec(size=cfg.size, quality=cfg.quality, crop_margin=cfg.crop_margin)


@dataclass(frozen=True)
class ShardResult:
    split: str
    index: int
    info: ShardInfo
    recipe_sha256: str
    rejects: list[dict]

    def to_json(self) -> dict:
        return {
            "split": self.split,
            "index": self.index,
            "info": self.info.to_json(),
            "recipe_sha256": self.recipe_sha256,
            "rejects": self.rejects,
        }

    @staticmethod
    def from_json(body: dict) -> ShardResult:
        return ShardResult(
            body["split"],
            body["index"],
            ShardInfo(**body["info"]),
            body["recipe_sha256"],
            body["rejects"],
        )


def make_record(row: dict, task: ShardTask) -> dict:
    """The sample's JSON record: raw strings of categorical fields, numbers, provenance."""
    record: dict[str, Any] = {"processid": row[ID], "split": task.split}
    for name in task.categorical:
        record[name] = row.get(name) or None  # a blank label ("") is no label
    for name in task.numeric:
        record[name] = row.get(name)
    if OFFICIAL_SPLIT in row:
        record[OFFICIAL_SPLIT] = row[OFFICIAL_SPLIT]
    box = [row.get(c) for c in BOX]
    record["bbox"] = box if all(v is not None for v in box) else None
    if "dna_barcode" in row:
        record["dna_barcode"] = row["dna_barcode"]
    return record


def _frame(row: Mapping[str, Any]) -> tuple[int, int] | None:
    w, h = (row.get(c) for c in FRAME)
    return (int(w), int(h)) if w and h else None


def row_image(root: str, row: Mapping[str, Any], spec: ImageSpec) -> bytes:
    """The sample JPEG of one plan row (`PATH`, the box and frame columns): read inside
    the resolved `root`, cropped and resized by `spec`. Raises what `read_image` and
    `process_image` raise. Shared by ingest and `bionas predict --metadata`."""
    data = read_image(root, row[PATH], spec)
    bbox = tuple(row[c] for c in BOX) if row.get("x0") is not None else None
    return process_image(data, bbox, spec, _frame(row))


def write_task(task: ShardTask, rows: pl.DataFrame) -> ShardResult:
    """Write one shard from its metadata `rows`; images that fail become rejects."""
    samples, rejects = [], []
    rows = rows.with_columns(path_expression(task.image_path, task.path_parts))
    root = real_root(task.images_root)  # every path must resolve to a file inside it
    for row in rows.iter_rows(named=True):
        key = row[ID]
        try:
            jpg = row_image(root, row, task.spec)
        except FileNotFoundError as exc:
            rejects.append(_reject(key, task.split, "missing_file", f"{exc.filename}"))
        except OSError as exc:
            raise_if_transient(exc, os.path.join(root, row[PATH]))  # EIO: fail the shard
            rejects.append(_reject(key, task.split, "unreadable_file", str(exc)))
        except ImageReject as exc:
            rejects.append(_reject(key, task.split, exc.reason, exc.detail))
        else:
            record = encode_record(make_record(row, task))
            if len(record) > MAX_RECORD_BYTES:  # the reader would refuse the whole shard
                detail = f"{len(record)} bytes, largest cell {_largest_cell(row)}"
                rejects.append(_reject(key, task.split, "record_too_large", detail))
            else:
                samples.append(Sample(key, jpg, record))
        if _progress is not None:
            with _progress.get_lock():
                _progress.value += 1
    info = write_shard(task.path, samples, task.compression)
    return ShardResult(task.split, task.index, info, task.recipe_sha256, rejects)


def _largest_cell(row: Mapping[str, Any]) -> str:
    name, value = max(row.items(), key=lambda item: len(str(item[1] or "")))
    return f"{name!r} ({len(str(value))} characters)"


def _reject(key: str, split: str, reason: str, detail: str) -> dict:
    return {"processid": key, "split": split, "stage": "image", "reason": reason, "detail": detail}


def _init_worker(counter: Any) -> None:
    global _progress
    _progress = counter


def _init_pool_worker(counter: Any, parent_pid: int) -> None:
    _init_worker(counter)
    exit_with_parent(parent_pid)  # a killed parent leaves no worker writing behind it


@dataclass(frozen=True)
class ShardFailure:
    """A shard not written because reading one of its images failed transiently."""

    split: str
    index: int
    error: TransientReadError


@dataclass(frozen=True)
class ExecuteResult:
    results: list[ShardResult]  # the shards written in this run, sorted by (split, index)
    failures: list[ShardFailure]  # shards left for a rerun, sorted by (split, index)
    processed: int  # images processed in this run (not kept from an earlier one)
    seconds: float


Finish = Callable[[ShardTask, ShardResult], None]  # records a shard as it lands
Settle = Callable[[ShardTask, Callable[[], ShardResult]], None]  # takes a shard's outcome


def execute(
    todo: list[ShardTask],
    fetch: FetchRows,
    finish: Finish,
    workers: int,
    progress: bool = True,
    executor: str = "local",
    ray_address: str | None = None,
    done_images: int = 0,
) -> ExecuteResult:
    """Write the shards of `todo`, calling `finish(task, result)` as each one lands.

    `fetch(task.frame_rows)` gives a task's metadata rows, called just before the task
    runs. A shard whose image read fails transiently becomes a failure (redone on a
    rerun) while the others go on; any other exception (an output error, an interrupt)
    stops the workers and propagates. `done_images`: images of shards kept from an
    earlier run, where the progress bar starts.
    """
    start = time.perf_counter()
    results: list[ShardResult] = []
    failures: list[ShardFailure] = []

    def settle(task: ShardTask, outcome: Callable[[], ShardResult]) -> None:
        try:
            result = outcome()
        except TransientReadError as err:
            log.info("shard %s-%06d left for a rerun: %s", task.split, task.index, err)
            failures.append(ShardFailure(task.split, task.index, err))
        else:
            finish(task, result)
            results.append(result)

    total = done_images + sum(t.size for t in todo)
    bar = tqdm(total=total, initial=done_images, unit="img", desc="ingest",
               disable=not progress, dynamic_ncols=True, smoothing=0.1)  # fmt: skip
    try:
        if executor == "ray":
            from bionas.ingest.execute_ray import run_ray

            processed = run_ray(todo, fetch, settle, bar.update, workers, ray_address)
        elif workers <= 1:
            processed = _run_inline(todo, fetch, settle, bar.update)
        else:
            processed = _run_pool(todo, fetch, settle, bar.update, workers)
    finally:
        bar.close()  # before an error message, which would otherwise share the bar's line
    results.sort(key=lambda r: (r.split, r.index))
    failures.sort(key=lambda f: (f.split, f.index))
    return ExecuteResult(results, failures, processed, time.perf_counter() - start)


def _run_inline(todo: list[ShardTask], fetch: FetchRows, settle: Settle, advance) -> int:
    counter = mp.get_context("spawn").Value("q", 0)
    _init_worker(counter)
    try:
        for task in todo:
            before = counter.value
            settle(task, partial(write_task, task, fetch(task.frame_rows)))
            advance(counter.value - before)
    finally:
        _init_worker(None)
    return int(counter.value)


def _run_pool(
    todo: list[ShardTask], fetch: FetchRows, settle: Settle, advance, workers: int
) -> int:
    # spawn, not fork: the parent holds Polars' thread pool, which fork can deadlock
    context = mp.get_context("spawn")
    counter = context.Value("q", 0)
    seen = 0
    queue = iter(todo)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_pool_worker,
                             initargs=(counter, os.getpid())) as pool:  # fmt: skip
        pending: dict = {}
        try:
            while True:
                for task in islice(queue, IN_FLIGHT_PER_WORKER * workers - len(pending)):
                    pending[pool.submit(write_task, task, fetch(task.frame_rows))] = task
                if not pending:
                    break
                finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    settle(pending.pop(future), future.result)
                now = counter.value
                advance(now - seen)
                seen = now
        except BaseException:
            # an output error or an interrupt: shards in flight are abandoned, not awaited
            manager = getattr(pool, "_executor_manager_thread", None)  # shutdown forgets it
            pool.shutdown(wait=False, cancel_futures=True)
            stop_workers()
            # Let the pool's manager thread see its dead workers and close its wakeup pipe
            # before the interpreter exits: CPython's exit hook (concurrent.futures
            # `_python_exit`) otherwise races that close and prints an ignored "Bad file
            # descriptor" traceback under the one-line error (seen under load, 3.11).
            if manager is not None:
                manager.join(STOP_WAIT_SECONDS)
            raise
    return int(counter.value)


def build_tasks(
    plan: Plan, cfg: IngestConfig, profile: DatasetProfile, shard_dir: Path, inputs: dict
) -> list[ShardTask]:
    """One task per shard of the plan, in split then index order.

    `inputs`: the input tables' entries (`record.input_entries`), for the fingerprint.
    """
    spec = image_spec(cfg)
    fingerprint = run_fingerprint(cfg, profile, inputs)
    return [
        ShardTask(
            split=group.split,
            index=group.index,
            path=shard_dir / group.split / shard_name(group.split, group.index, cfg.compression),
            frame_rows=group.frame_rows,
            recipe_sha256=recipe_sha256(group.keys, fingerprint),
            images_root=cfg.images,
            image_path=profile.image_path,
            path_parts=path_parts(profile),
            spec=spec,
            compression=cfg.compression,
            categorical=profile.categorical,
            numeric=profile.numeric,
        )
        for group in plan.shard_groups()
    ]


def rejects_frame(results: list[ShardResult]) -> pl.DataFrame:
    rows = [r for result in results for r in result.rejects]
    return pl.DataFrame(rows, schema=REJECT_SCHEMA)
