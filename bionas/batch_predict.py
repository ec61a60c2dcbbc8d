"""Batch prediction (`bionas predict --metadata …` / `--dataset …`): every input row through
the model in DataLoader batches, into one CSV or Parquet table in input order.

source (`predict_sources`: a table's photos or a split's shards) -> DataLoader (workers
read, crop, decode) -> normalise on the device -> calibrated probabilities (AMP on CUDA)
-> top-k, low-confidence flag, metadata known to the model -> one table, written atomically.

A table streams: it is read, predicted and appended to the output `CHUNK_ROWS` rows at a
time (`predict_sources`), so memory does not grow with its length. A split's rows are
sorted into shard order at the end (the workers' shards interleave), so its output frame
is held whole (Arrow columns, ~0.1-0.2 KB a row).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader

from bionas.errors import BionasError
from bionas.predict_sources import OK
from bionas.shards.atomic import fsync_dir, temp_path
from bionas.trainer.predict import normalize
from bionas.trainer.predictor import Predictor

if TYPE_CHECKING:
    from bionas.predict_sources import TableInput

# Without a threshold from `bionas calibrate` or --low-confidence: below 0.5 the model
# gives the other classes together more probability than its answer.
DEFAULT_LOW_CONFIDENCE = 0.5
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
WRITE_ROWS = 16_384  # output rows gathered per append (a Parquet row group)


@dataclass(frozen=True)
class BatchPredictConfig:
    """Options of `bionas predict --metadata …` and `--dataset …`, validated once."""

    model_dir: Path
    out: Path
    metadata: Path | None = None
    images: Path | None = None
    bbox: Path | None = None
    profile: str = "bioscan-5m"
    profile_file: Path | None = None
    dataset: Path | None = None
    split: str | None = None
    top_k: int = 5
    batch_size: int = 64
    workers: int | None = None  # None: all cores
    device: str = "auto"
    low_confidence: float | None = None
    limit: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if (self.metadata is None) == (self.dataset is None):
            raise BionasError("give either --metadata TABLE --images ROOT or --dataset DIR --split NAME")  # fmt: skip
        if self.metadata is not None and self.images is None:
            raise BionasError("--metadata needs --images ROOT, the folder its image paths are relative to")  # fmt: skip
        if self.dataset is not None:
            given = [f for f, v in (("--images", self.images), ("--bbox", self.bbox),
                     ("--limit", self.limit), ("--profile-file", self.profile_file)) if v]  # fmt: skip
            if given:
                raise BionasError(f"{given[0]} is for --metadata; a dataset's shards are cropped already")  # fmt: skip
            if not self.split:
                raise BionasError("--dataset needs --split NAME (e.g. test)")
        if self.out.suffix.lower() not in FORMATS:
            raise BionasError(f"--out {self.out}: name a .csv or .parquet file")
        if self.low_confidence is not None and not 0 <= self.low_confidence <= 1:
            raise BionasError("--low-confidence must be between 0 and 1")

    @property
    def worker_count(self) -> int:
        return (os.cpu_count() or 1) if self.workers is None else self.workers


@dataclass
class PredictSummary:
    """What a batch prediction did, for the summary on stderr."""

    out: Path
    network: str
    rows: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    low_confidence: int = 0
    threshold: float = DEFAULT_LOW_CONFIDENCE
    threshold_from: str = "the default"
    seconds: float = 0.0
    unmapped: tuple[str, ...] = ()
    reader: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        lines = [
            f"predicted {self.rows:,} rows in {self.seconds:.1f} s ({self.rate:,.1f} rows/s); "
            f"wrote {self.out}",
            f"  {OK:<24} {self.statuses.get(OK, 0):>8,}",
        ]
        lines += [f"  {s:<24} {n:>8,}" for s, n in sorted(self.statuses.items()) if s != OK]
        lines.append(
            f"  {'low confidence':<24} {self.low_confidence:>8,} (calibrated top-1 probability "
            f"< {self.threshold:g}, {self.threshold_from})"
        )
        lines += [f"  not in the output: {n:,} {what}" for what, n in self.reader.items() if n]
        if self.unmapped:
            lines.append(
                f"  fed as unknown: {', '.join(self.unmapped)} (the profile has no column for it)"
            )
        return "\n".join(lines)


def predict_to_file(cfg: BatchPredictConfig) -> PredictSummary:
    """Predict every input row of `cfg` and write the table to `cfg.out`, a chunk at a time."""
    from bionas.trainer.config import resolve_device
    from bionas.trainer.predictor import load_predictor

    check_writable(cfg.out)  # before the work, not after it
    device = resolve_device(cfg.device)
    predictor = load_predictor(cfg.model_dir, device)
    batches, total, unmapped = _loader(cfg, predictor, device)
    threshold, source = low_confidence_threshold(cfg.low_confidence, predictor)
    summary = PredictSummary(cfg.out, predictor.network, threshold=threshold,
                             threshold_from=source, unmapped=unmapped)  # fmt: skip
    start = time.perf_counter()
    empty = output_frame(Rows(min(cfg.top_k, len(predictor.class_names))), predictor, threshold)
    rows = predict_rows(predictor, batches, cfg.top_k, total=total, progress=cfg.progress,
                        reader=summary.reader)  # fmt: skip
    frames = (output_frame(r, predictor, threshold) for r in rows)
    if cfg.dataset is not None:  # the workers' shards interleave: sort them all at the end
        frames = iter([pl.concat([empty, *frames]).sort("order")])
    with TableWriter(cfg.out, empty.drop("order").schema) as writer:
        last = -1
        for frame in frames:  # a table's batches come in input order
            if frame.height and frame["order"][0] <= last:
                raise AssertionError("batches out of input order")
            last = frame["order"][-1] if frame.height else last
            writer.write(frame.drop("order"))
            summary.rows += frame.height
            summary.statuses.update(frame["status"].to_list())
            summary.low_confidence += int(frame["low_confidence"].sum() or 0)
    summary.seconds = time.perf_counter() - start
    return summary


def low_confidence_threshold(given: float | None, predictor: Predictor) -> tuple[float, str]:
    """--low-confidence, else the calibration's threshold, else DEFAULT_LOW_CONFIDENCE."""
    if given is not None:
        return given, "--low-confidence"
    if predictor.calibration.low_confidence is not None:
        return predictor.calibration.low_confidence, "chosen by `bionas calibrate`"
    return DEFAULT_LOW_CONFIDENCE, "the default"


def _loader(
    cfg: BatchPredictConfig, predictor: Predictor, device: torch.device
) -> tuple[Iterable[dict[str, Any]], int, tuple[str, ...]]:
    """The batches of the inputs (from DataLoaders), their count, and fields fed as unknown."""
    from bionas.predict_sources import ShardSamples

    workers, pin = cfg.worker_count, device.type == "cuda"
    if cfg.dataset is not None:
        from bionas.manifests.manifest import load_manifest
        from bionas.trainer.data import check_shards_exist

        try:
            manifest = load_manifest(cfg.dataset)
        except (FileNotFoundError, ValueError) as err:
            raise BionasError(str(err)) from err
        refs = check_shards_exist(manifest, cfg.split)
        stream = ShardSamples(refs, predictor.meta_fields, predictor.image_size, cfg.batch_size)
        total = sum(r.samples or 0 for r in refs)
        return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin), total, ()
    table = open_table_images(cfg, predictor)
    return table.batches(cfg.batch_size, workers, pin), table.table.height, table.table.unmapped


def open_table_images(cfg: BatchPredictConfig, predictor: Predictor) -> TableInput:
    """The table's rows, cropped with the model's dataset's ingest options (SPEC §4: box +
    margin, shorter side to its size, JPEG at its quality); --images checked on the first
    chunk's photos."""
    from bionas.ingest.images import ImageSpec
    from bionas.ingest.preflight import check_image_root
    from bionas.ingest.profiles import resolve_profile
    from bionas.predict_sources import CHUNK_ROWS, TableInput, check_table_inputs, open_table
    from bionas.safe_paths import real_root

    check_table_inputs(cfg.images, cfg.bbox)
    profile = resolve_profile(cfg.profile, cfg.profile_file)
    table = open_table(cfg.metadata, cfg.bbox, profile, predictor.meta_fields, cfg.limit)
    first = table.read(0, min(CHUNK_ROWS, table.height))
    ok = np.flatnonzero(first.status == OK)
    check_image_root(cfg.images, [str(first.paths[i]) for i in ok[:: max(1, len(ok) // 200)][:200]])  # fmt: skip
    prep = predictor.preprocessing
    spec = ImageSpec(quality=prep.quality, crop_margin=prep.crop_margin,
                     **({"size": prep.ingest_size} if prep.ingest_size else {}))  # fmt: skip
    return TableInput(table, real_root(cfg.images), spec, predictor.image_size)


@dataclass
class Rows:
    """Per input row of a batch; `top` is -1 where there is no answer."""

    k: int  # classes per row
    order: list[int] = field(default_factory=list)
    processid: list[str | None] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    detail: list[str | None] = field(default_factory=list)
    values: list[tuple[str | None, ...]] = field(default_factory=list)
    known: list[list[bool]] = field(default_factory=list)
    top: list[np.ndarray] = field(default_factory=list)  # [b, k] class indices
    prob: list[np.ndarray] = field(default_factory=list)  # [b, k] calibrated probabilities


def predict_rows(
    predictor: Predictor,
    batches: Iterable[dict[str, Any]],
    top_k: int,
    *,
    total: int | None = None,
    progress: bool = False,
    reader: dict[str, int] | None = None,
    window: int | None = None,
) -> Iterator[Rows]:
    """The top-k calibrated classes of each ok row; every row kept, with its status; in
    `Rows` of `window` (default `WRITE_ROWS`) rows or more (the batches' rows, as they
    came), the last one less.

    `reader`: filled, once every batch is through, with the shard readers' skip counts
    (summed over workers)."""
    from tqdm import tqdm

    k = min(top_k, len(predictor.class_names))
    rows, readers = Rows(k), {}
    amp = torch.autocast("cuda") if predictor.device.type == "cuda" else nullcontext()
    with tqdm(total=total, unit="img", desc="predict", disable=not progress,
              file=sys.stderr, dynamic_ncols=True) as bar:  # fmt: skip
        for batch in batches:
            if "reader" in batch:
                readers[batch["reader"]["worker"]] = batch["reader"]
            n = len(batch["order"])
            indices = [predictor.meta_row(dict(zip(predictor.meta_fields, v, strict=True)))
                       for v in batch["values"]]  # fmt: skip
            ok = np.array([s == OK for s in batch["status"]], dtype=bool)
            top, prob = np.full((n, k), -1, np.int64), np.full((n, k), np.nan, np.float32)
            if ok.any():
                pixels = batch["pixels"].to(predictor.device, non_blocking=True)
                meta = torch.tensor([indices[i] for i in np.flatnonzero(ok)], dtype=torch.long)
                meta = meta.reshape(len(pixels), len(predictor.meta_fields))
                with amp:
                    probs = predictor.probabilities(
                        normalize(pixels, predictor.preprocessing), meta
                    )
                best = torch.topk(probs, k, dim=1)
                top[ok], prob[ok] = best.indices.cpu().numpy(), best.values.cpu().numpy()
            rows.order += batch["order"]
            rows.processid += batch["processid"]
            rows.status += batch["status"]
            rows.detail += batch["detail"]
            rows.values += batch["values"]
            rows.known += [[i != 0 for i in row] for row in indices]
            rows.top.append(top)
            rows.prob.append(prob)
            bar.update(n)
            if len(rows.order) >= (window or WRITE_ROWS):
                yield rows
                rows = Rows(k)
    if reader is not None:
        for counts in readers.values():
            for what, n in counts.items():
                if what != "worker":
                    reader[what] = reader.get(what, 0) + n
    if rows.order:
        yield rows


def output_frame(rows: Rows, predictor: Predictor, threshold: float) -> pl.DataFrame:
    """The output table of `rows`, sorted into input order (see the README for its
    columns), with each row's place in the input (`order`, not written)."""
    order = np.argsort(np.asarray(rows.order, dtype=np.int64), kind="stable")
    k = rows.k
    top = np.concatenate([np.zeros((0, k), np.int64), *rows.top])[order]
    prob = np.concatenate([np.zeros((0, k), np.float32), *rows.prob])[order]
    names = pl.Series(predictor.class_names, dtype=pl.String)
    columns: dict[str, pl.Series] = {
        "order": pl.Series(np.asarray(rows.order, dtype=np.int64)[order], dtype=pl.Int64),
        "processid": pl.Series([rows.processid[i] for i in order], dtype=pl.String),
        "status": pl.Series([rows.status[i] for i in order], dtype=pl.String),
        "detail": pl.Series([rows.detail[i] for i in order], dtype=pl.String),
    }
    answered = top[:, 0] >= 0
    for j in range(k):
        columns[f"top{j + 1}"] = names.gather(np.where(answered, top[:, j], len(names)), null_on_oob=True)  # fmt: skip
        columns[f"top{j + 1}_prob"] = pl.Series(prob[:, j]).fill_nan(None)
    # a threshold of 1 flags every prediction, even one whose float32 probability is 1.0
    low = pl.Series((prob[:, 0] < threshold) | (threshold >= 1.0), dtype=pl.Boolean)
    columns["low_confidence"] = low.scatter(np.flatnonzero(~answered), None)
    for f, name in enumerate(predictor.meta_fields):
        columns[name] = pl.Series([rows.values[i][f] for i in order], dtype=pl.String)
        columns[f"{name}_known"] = pl.Series([rows.known[i][f] for i in order], dtype=pl.Boolean)
    return pl.DataFrame({name: s.alias(name) for name, s in columns.items()})


def check_writable(path: Path) -> None:
    """Create --out's folder and write a temporary file there, so that a path under a file
    or in a read-only folder fails at once instead of after every photo was predicted."""
    probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise BionasError(f"cannot write --out {path}: {err.strerror or err}") from None


class TableWriter:
    """The output table, appended to a temporary file beside `path` a frame at a time (CSV
    lines, a Parquet row group), fsynced and renamed into place on a clean exit of the
    `with` block; any failure removes the temporary and leaves `path` as it was."""

    def __init__(self, path: Path, schema: pl.Schema) -> None:
        self.path, self.tmp, self.schema = path, temp_path(path), schema
        self.written = 0
        self.handle: BinaryIO | None = None
        self.parquet: Any = None  # pyarrow.parquet.ParquetWriter

    def __enter__(self) -> TableWriter:
        try:
            self.handle = open(self.tmp, "xb")  # noqa: SIM115 (closed by __exit__)
        except OSError as err:
            raise BionasError(f"cannot write {self.path}: {err.strerror or err}") from err
        return self

    def write(self, frame: pl.DataFrame) -> None:
        """Append rows (in input order, with the columns of `schema`)."""
        try:
            if FORMATS[self.path.suffix.lower()] == "csv":
                frame.write_csv(self.handle, include_header=self.written == 0)
            else:
                import pyarrow.parquet as pq

                table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
                if self.parquet is None:
                    self.parquet = pq.ParquetWriter(self.handle, table.schema, compression="zstd")
                self.parquet.write_table(table)
        except OSError as err:
            raise BionasError(f"cannot write {self.path}: {err.strerror or err}") from err
        self.written += max(frame.height, 1)

    def __exit__(self, kind, value, traceback) -> None:
        assert self.handle is not None
        try:
            if kind is None and self.written == 0:  # no input rows: the header alone
                self.write(pl.DataFrame(schema=self.schema))
            if self.parquet is not None:
                self.parquet.close()
            if kind is None:
                self.handle.flush()
                os.fsync(self.handle.fileno())
            self.handle.close()
            if kind is None:
                os.replace(self.tmp, self.path)
                fsync_dir(self.path.parent)
        except OSError as err:
            raise BionasError(f"cannot write {self.path}: {err.strerror or err}") from err
        finally:
            self.tmp.unlink(missing_ok=True)
