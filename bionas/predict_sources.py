"""Where batch prediction's inputs come from: a metadata table with its photos, or one split
of an ingested dataset. Each gives items (one per input row) that collate into batches:

    order      the row's place in the input (file row, or shard and member position)
    processid  the row's id
    values     the raw strings of the model's metadata fields (None: empty or absent)
    status     "ok", or the reason the row has no image (ingest's reject reasons)
    detail     what went wrong, for a human (None when ok)
    pixels     the model's uint8 pixels [3, S, S] (ok rows only)

A table row becomes pixels exactly as ingest, then the trainer, would make them: ingest's
path rule and bbox join (`ingest.scan`, `ingest.boxes`), its safe read, crop, resize and
JPEG encode (`ingest.execute.row_image`), then the trainer's decode (`decode_image`). This
module composes ingest and the trainer, so it lives in `bionas/` (SPEC §2).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from bionas.errors import BionasError
from bionas.ingest.boxes import DEFAULT_FRAME, Boxes, lookup_boxes
from bionas.ingest.execute import row_image
from bionas.ingest.images import ImageReject, ImageSpec
from bionas.ingest.keys import lookup_first, safe_keys
from bionas.ingest.profiles import ID, DatasetProfile
from bionas.ingest.ragged import RaggedRows, check_rows, find_ragged_rows
from bionas.ingest.scan import (
    BOX,
    FRAME,
    PATH,
    collect_table,
    path_expression,
    scan_bbox,
    scan_columns,
    template_columns,
)
from bionas.shards.format import IMAGE_FORMATS, decode_record
from bionas.shards.reader import ReadStats, read_samples
from bionas.shards.tario import ShardRef
from bionas.trainer.encoding import record_text
from bionas.trainer.transforms import DECODE_ERRORS, decode_image

OK = "ok"
# the plan-stage reasons of ingest that apply to prediction (a duplicate id, an empty
# target or an unknown split does not stop a photo from being classified)
PLAN_REASONS = ("ragged_row", "unsafe_processid", "bad_bbox")


# Table rows read, predicted and written at a time: what prediction holds of a table at
# once (the arrays below, ~0.2 KB a row), whatever its length (BIOSCAN-5M: 5.15M rows).
CHUNK_ROWS = 131_072
# numpy strings in one buffer, None for a missing value: no Python object per row
STRINGS = np.dtypes.StringDType(na_object=None)


@dataclass(frozen=True)
class TableRows:
    """A run of rows of a metadata table as prediction needs it, in file order.

    numpy arrays, not lists: DataLoader workers are forked, and reading a list's items
    touches their reference counts, which copies every page they sit on into each worker.
    """

    start: int  # the first row's place in the table (0-based, the header not counted)
    processids: np.ndarray  # STRINGS
    paths: np.ndarray  # STRINGS
    boxes: np.ndarray  # float64 [n, 4] (x0, y0, x1, y1), clipped; nan: the whole photo
    frames: np.ndarray  # float64 [n, 2], the bbox table's photo size; nan: unknown
    values: np.ndarray  # STRINGS [n, fields], the model's metadata fields (None: blank)
    status: np.ndarray  # STRINGS
    detail: np.ndarray  # STRINGS (None when ok)

    def __len__(self) -> int:
        return len(self.paths)


def field_columns(profile: DatasetProfile, fields: Sequence[str]) -> dict[str, str | None]:
    """Each canonical metadata field's raw column in the profile's table (None: it has none)."""
    raw = {canonical: column for column, canonical in profile.rename_map().items()}
    return {f: raw.get(f, f) if f in profile.categorical else None for f in fields}


@dataclass(frozen=True)
class BboxIndex:
    """The bbox table, checked once: per bbox row, the first row of its processid (what
    `lookup_boxes` gives a metadata row), looked up again for each chunk of the table."""

    ids: pl.Series
    boxes: Boxes

    @classmethod
    def read(cls, bbox: Path) -> BboxIndex | None:
        frame = collect_table(scan_bbox(bbox), bbox)
        ragged = find_ragged_rows(bbox, "\t")
        check_rows(ragged, frame.height)
        if frame.height == 0:
            return None
        ids = frame["processid"].rechunk()
        return cls(ids, lookup_boxes(ids, frame, ragged))

    def lookup(self, ids: pl.Series) -> tuple[dict[str, pl.Series], np.ndarray]:
        """Per id, its frame and box columns (null when absent) and whether the box is bad."""
        rows = lookup_first(ids, self.ids)
        at = np.where(rows >= 0, rows, len(self.ids))
        columns = {c: s.gather(at, null_on_oob=True) for c, s in self.boxes.columns.items()}
        return columns, np.take(self.boxes.bad, rows, mode="clip") & (rows >= 0)


@dataclass(frozen=True)
class MetadataTable:
    """A metadata table opened for prediction: checked once (its header, row count, ragged
    rows and bbox table), then read `CHUNK_ROWS` rows at a time (`read`)."""

    path: Path
    query: pl.LazyFrame  # processid, image path, `_field_<f>` for each mapped field
    height: int
    ragged: RaggedRows
    bbox: BboxIndex | None
    mapped: dict[str, str | None]  # field -> its raw column (None: fed as unknown)

    @property
    def unmapped(self) -> tuple[str, ...]:
        """Metadata fields the profile has no column for."""
        return tuple(f for f, c in self.mapped.items() if c is None)

    def chunks(self, start: int = 0, rows: int | None = None) -> Iterator[TableRows]:
        """The rows from `start` on, `rows` (default `CHUNK_ROWS`) at a time."""
        step = rows or CHUNK_ROWS
        for lo in range(start, self.height, step):
            yield self.read(lo, min(lo + step, self.height))

    def read(self, start: int, stop: int) -> TableRows:
        """Rows [start, stop) with ingest's bbox join and the plan-stage checks that apply
        (`PLAN_REASONS`)."""
        frame = collect_table(self.query.slice(start, stop - start), self.path)
        if frame.height != stop - start:
            raise BionasError(f"{self.path} changed while it was read: predict it again")
        ids = frame[ID].rechunk()
        if self.bbox is None:
            columns, bad = lookup_boxes(ids, None).columns, np.zeros(frame.height, dtype=bool)
        else:
            columns, bad = self.bbox.lookup(ids)
        ragged = np.zeros(frame.height, dtype=bool)
        ragged[self.ragged.rows[(self.ragged.rows >= start) & (self.ragged.rows < stop)] - start] = True  # fmt: skip
        reason = np.select([ragged, ~safe_keys(ids), bad],
                           np.arange(1, len(PLAN_REASONS) + 1), default=0)  # fmt: skip
        status = np.array([PLAN_REASONS[r - 1] if r else OK for r in reason.tolist()], STRINGS)
        detail = np.full(frame.height, None, dtype=STRINGS)
        for row in np.flatnonzero(reason).tolist():
            detail[row] = _plan_detail(
                str(status[row]), start + row, ids[row], [s[row] for s in columns.values()],
                self.ragged, self.path,
            )  # fmt: skip
        values = np.full((frame.height, len(self.mapped)), None, dtype=STRINGS)
        for j, (f, c) in enumerate(self.mapped.items()):
            if c:  # a blank cell is no value, as in ingest's records
                values[:, j] = [v or None for v in frame[f"_field_{f}"].to_list()]
        return TableRows(
            start=start,
            processids=np.array(ids.to_list(), STRINGS),
            paths=np.array(frame[PATH].to_list(), STRINGS),
            boxes=np.column_stack([_floats(columns[c]) for c in BOX]),
            frames=np.column_stack([_floats(columns[c]) for c in FRAME]),
            values=values,
            status=status,
            detail=detail,
        )


def _floats(column: pl.Series) -> np.ndarray:
    return column.fill_null(np.nan).to_numpy().astype(np.float64, copy=True)


def open_table(
    table: Path,
    bbox: Path | None,
    profile: DatasetProfile,
    fields: Sequence[str],
    limit: int | None = None,
) -> MetadataTable:
    """Check a table (and its bbox table) and make it ready to be read in chunks, with
    ingest's column mapping and image paths; only the needed columns are ever read."""
    mapped = field_columns(profile, fields)
    parts = tuple(template_columns(profile.image_path))
    needed = [profile.id_column, *parts, *(c for c in mapped.values() if c)]
    query = scan_columns(table, profile, list(dict.fromkeys(needed)), limit).select(
        pl.col(profile.id_column).alias(ID),
        path_expression(profile.image_path, parts),
        *(pl.col(c).alias(f"_field_{f}") for f, c in mapped.items() if c),
    )
    # counted by reading the ids, not with pl.len(): Polars counts a CSV's rows on a memory
    # map of the whole file, which then counts in full in this process's resident memory
    rows = pl.col(ID).count() + pl.col(ID).null_count()
    height = collect_table(query.select(rows), table).item()
    ragged = find_ragged_rows(table, profile.delimiter, limit)
    check_rows(ragged, height)
    index = BboxIndex.read(bbox) if bbox is not None else None
    return MetadataTable(table, query, height, ragged, index, mapped)


def read_table_rows(
    table: Path,
    bbox: Path | None,
    profile: DatasetProfile,
    fields: Sequence[str],
    limit: int | None = None,
) -> TableRows:
    """Every row of a table at once (`open_table` reads a large one in chunks)."""
    opened = open_table(table, bbox, profile, fields, limit)
    return opened.read(0, opened.height)


def _plan_detail(
    reason: str, row: int, key: str | None, cells: list, ragged: RaggedRows, table: Path
) -> str:
    """The reject detail ingest would give (`ingest.plan.reject_details`), for one row;
    `cells`: its frame then box values (FRAME + BOX, None where missing)."""
    if reason == "ragged_row":
        fields = int(ragged.fields_of(np.array([row]))[0])
        return f"{fields} fields where the header of {table.name} has {ragged.width} (data row {row + 1})"  # fmt: skip
    if reason == "unsafe_processid":
        return f"processid '{key or ''}' is not a safe file name"
    frame, box = cells[: len(FRAME)], cells[len(FRAME) :]
    shown = ", ".join("missing" if v is None else f"{v:g}" for v in box)
    width, height = (
        f"{d if v is None else v:g}" for v, d in zip(frame, DEFAULT_FRAME, strict=True)
    )
    return f"bbox ({shown}) in a {width}x{height} frame"


class TableImages(Dataset):
    """One item per table row: its photo read inside `root`, cropped as ingest crops
    (`spec`), decoded as the trainer decodes (`image_size`); failures become the status."""

    def __init__(self, rows: TableRows, root: str, spec: ImageSpec, image_size: int) -> None:
        self.rows, self.root, self.spec, self.image_size = rows, root, spec, image_size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rows = self.rows
        item = {"order": rows.start + i, "processid": rows.processids[i],
                "values": tuple(rows.values[i]), "status": str(rows.status[i]),
                "detail": rows.detail[i], "pixels": None}  # fmt: skip
        if item["status"] == OK:
            row = {PATH: rows.paths[i], **dict(zip(BOX, _cells(rows.boxes[i]), strict=True)),
                   **dict(zip(FRAME, _cells(rows.frames[i]), strict=True))}  # fmt: skip
            item["status"], item["detail"], item["pixels"] = self._pixels(row)
        return item

    def _pixels(self, row: dict) -> tuple[str, str | None, torch.Tensor | None]:
        """Read and crop as `ingest.execute.write_task` does; its reasons for failures."""
        try:
            jpg = row_image(self.root, row, self.spec)
        except FileNotFoundError as exc:
            return "missing_file", str(exc.filename), None
        except OSError as exc:  # ingest retries transient errors on a rerun; here: a status
            return "unreadable_file", str(exc), None
        except ImageReject as exc:
            return exc.reason, exc.detail, None
        try:
            return OK, None, decode_image(jpg, self.image_size, IMAGE_FORMATS)
        except DECODE_ERRORS as exc:
            return "corrupt_image", f"cannot decode the crop: {type(exc).__name__}: {exc}", None


def _cells(values: np.ndarray) -> tuple[float | None, ...]:
    """Floats as ingest's row dicts hold them: None where missing (nan here)."""
    return tuple(None if v != v else v for v in values.tolist())  # nan != nan


@dataclass(frozen=True)
class TableInput:
    """A metadata table opened for prediction, with how its photos are read and cropped."""

    table: MetadataTable
    root: str
    spec: ImageSpec
    image_size: int

    def batches(self, batch_size: int, workers: int, pin: bool) -> Iterator[dict[str, Any]]:
        """Every row's item in input order, one DataLoader per chunk of the table: only a
        chunk's rows are ever held, by this process and by its forked workers."""
        for rows in self.table.chunks():
            images = TableImages(rows, self.root, self.spec, self.image_size)
            yield from DataLoader(images, batch_size=batch_size, num_workers=workers,
                                  collate_fn=collate_items, pin_memory=pin)  # fmt: skip


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch: the items' fields as lists, and the ok items' pixels stacked."""
    pixels = [item["pixels"] for item in items if item["pixels"] is not None]
    batch = {key: [item[key] for item in items] for key in ("order", "processid", "values")}
    batch["status"] = [item["status"] for item in items]
    batch["detail"] = [item["detail"] for item in items]
    batch["pixels"] = torch.stack(pixels) if pixels else torch.zeros(0, dtype=torch.uint8)
    return batch


class ShardSamples(IterableDataset):
    """Batches of every sample of one split's shards, each in its (shard, member) place;
    DataLoader workers take every num_workers-th shard. Each batch also carries the
    worker's reader counts so far (`reader`: broken shards, incomplete samples)."""

    def __init__(
        self, shards: Sequence[ShardRef], fields: Sequence[str], image_size: int, batch_size: int
    ) -> None:
        super().__init__()
        self.shards, self.fields = list(shards), tuple(fields)
        self.image_size, self.batch_size = image_size, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        stats = ReadStats()
        items: list[dict[str, Any]] = []
        for index in range(worker, len(self.shards), workers):
            samples = read_samples([self.shards[index]], shuffle_shards=False, stats=stats)
            for position, sample in enumerate(samples):
                items.append(self._item((index << 32) + position, sample.key, sample))
                if len(items) == self.batch_size:
                    yield {**collate_items(items), "reader": _counts(worker, stats)}
                    items = []
        yield {**collate_items(items), "reader": _counts(worker, stats)}

    def _item(self, order: int, key: str, sample) -> dict[str, Any]:
        item = {"order": order, "processid": key, "values": (None,) * len(self.fields),
                "status": OK, "detail": None, "pixels": None}  # fmt: skip
        try:
            record = decode_record(sample.json)
        except DECODE_ERRORS as exc:
            item.update(status="corrupt_record", detail=f"{type(exc).__name__}: {exc}")
            return item
        item["processid"] = str(record.get("processid") or key)
        item["values"] = tuple(record_text(record.get(f)) for f in self.fields)
        try:  # as evaluation decodes a shard image (`split_predictions`)
            item["pixels"] = decode_image(sample.jpg, self.image_size, IMAGE_FORMATS)
        except DECODE_ERRORS as exc:
            item.update(status="corrupt_image", detail=f"{type(exc).__name__}: {exc}")
        return item


def _counts(worker: int, stats: ReadStats) -> dict[str, int]:
    return {"worker": worker, "broken shards": stats.broken_shards,
            "incomplete samples": stats.incomplete_samples,
            "samples lost in broken shards": stats.lost_samples}  # fmt: skip


def check_table_inputs(images: Path, bbox: Path | None) -> None:
    """Refuse --bbox with BIOSCAN's cropped package, as ingest does (`IngestConfig`)."""
    from bionas.ingest.config import CROPPED_PACKAGE

    if bbox is not None and CROPPED_PACKAGE.fullmatch(Path(images).name):
        raise BionasError(
            f"{images} looks like BIOSCAN's {Path(images).name} image package, whose photos "
            "are already cropped to the specimen: --bbox would crop them a second time. "
            "Leave out --bbox for it, or point --images at original_full."
        )
