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
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from bionas.errors import BionasError
from bionas.ingest.boxes import DEFAULT_FRAME, lookup_boxes
from bionas.ingest.execute import row_image
from bionas.ingest.images import ImageReject, ImageSpec
from bionas.ingest.keys import safe_keys
from bionas.ingest.profiles import ID, DatasetProfile
from bionas.ingest.ragged import check_rows, find_ragged_rows
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


@dataclass(frozen=True)
class TableRows:
    """Every row of a metadata table as prediction needs it, in file order (plain lists:
    DataLoader workers read them without touching Polars)."""

    processids: list[str | None]
    paths: list[str]
    boxes: list[tuple[float, ...] | None]  # (x0, y0, x1, y1), clipped; None: whole photo
    frames: list[tuple[float | None, float | None]]  # the bbox table's photo size
    values: list[tuple[str | None, ...]]  # the model's metadata fields, per row
    status: list[str]
    detail: list[str | None]
    unmapped: tuple[str, ...]  # metadata fields the profile has no column for

    def __len__(self) -> int:
        return len(self.paths)


def field_columns(profile: DatasetProfile, fields: Sequence[str]) -> dict[str, str | None]:
    """Each canonical metadata field's raw column in the profile's table (None: it has none)."""
    raw = {canonical: column for column, canonical in profile.rename_map().items()}
    return {f: raw.get(f, f) if f in profile.categorical else None for f in fields}


def read_table_rows(
    table: Path,
    bbox: Path | None,
    profile: DatasetProfile,
    fields: Sequence[str],
    limit: int | None = None,
) -> TableRows:
    """The table's rows with ingest's column mapping, image paths, bbox join and the
    plan-stage checks that apply (`PLAN_REASONS`); only the needed columns are read."""
    mapped = field_columns(profile, fields)
    parts = tuple(template_columns(profile.image_path))
    needed = [profile.id_column, *parts, *(c for c in mapped.values() if c)]
    lf = scan_columns(table, profile, list(dict.fromkeys(needed)), limit)
    frame = collect_table(
        lf.select(
            pl.col(profile.id_column).alias(ID),
            path_expression(profile.image_path, parts),
            *(pl.col(c).alias(f"_field_{f}") for f, c in mapped.items() if c),
        ),
        table,
    )
    ragged = find_ragged_rows(table, profile.delimiter, limit)
    check_rows(ragged, frame.height)
    ids = frame[ID].rechunk()
    bbox_frame, bbox_ragged = None, None
    if bbox is not None:
        bbox_frame = collect_table(scan_bbox(bbox), bbox)
        bbox_ragged = find_ragged_rows(bbox, "\t")
        check_rows(bbox_ragged, bbox_frame.height)
    boxes = lookup_boxes(ids, bbox_frame, bbox_ragged)
    columns = {c: boxes.columns[c].to_list() for c in (*FRAME, *BOX)}
    reason = np.select(
        [ragged.flags(frame.height), ~safe_keys(ids), boxes.bad],
        np.arange(1, len(PLAN_REASONS) + 1),
        default=0,
    )
    status = [PLAN_REASONS[r - 1] if r else OK for r in reason.tolist()]
    detail = [None] * frame.height
    for row in np.flatnonzero(reason).tolist():
        detail[row] = _plan_detail(status[row], row, ids[row], columns, ragged, table)
    empty: list[None] = [None] * frame.height
    by_field = [frame[f"_field_{f}"].to_list() if c else empty for f, c in mapped.items()]
    # a blank cell is no value, as in ingest's records
    values = [tuple(v or None for v in row) for row in zip(*by_field, strict=True)]
    return TableRows(
        processids=ids.to_list(),
        paths=frame[PATH].to_list(),
        boxes=[None if b[0] is None else b for b in zip(*(columns[c] for c in BOX), strict=True)],
        frames=list(zip(*(columns[c] for c in FRAME), strict=True)),
        values=values if by_field else [()] * frame.height,
        status=status,
        detail=detail,
        unmapped=tuple(f for f, c in mapped.items() if c is None),
    )


def _plan_detail(reason: str, row: int, key: str | None, columns, ragged, table: Path) -> str:
    """The reject detail ingest would give (`ingest.plan.reject_details`), for one row."""
    if reason == "ragged_row":
        fields = int(ragged.fields_of(np.array([row]))[0])
        return f"{fields} fields where the header of {table.name} has {ragged.width} (data row {row + 1})"  # fmt: skip
    if reason == "unsafe_processid":
        return f"processid '{key or ''}' is not a safe file name"
    box, frame = ([columns[c][row] for c in names] for names in (BOX, FRAME))
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
        item = {"order": i, "processid": rows.processids[i], "values": rows.values[i],
                "status": rows.status[i], "detail": rows.detail[i], "pixels": None}  # fmt: skip
        if item["status"] == OK:
            box = rows.boxes[i] or (None,) * 4
            row = {PATH: rows.paths[i], **dict(zip(BOX, box, strict=True)),
                   **dict(zip(FRAME, rows.frames[i], strict=True))}  # fmt: skip
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
