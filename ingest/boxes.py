"""Each metadata row's bounding box: looked up by processid, checked and clipped to the frame.

Plain numpy, a block of rows at a time (a dozen vectorised passes over 5M floats), not
Polars expressions: at BIOSCAN-5M scale the expression form took ~0.6-1.1 s on 2 cores, this
~0.25 s. A processid without a bbox row has no box (the whole photo is used); a bbox row
always claims a box, so one whose coordinates are not four finite numbers (`n/a`, empty,
text, `nan`: all four or some) is a bad box, as is a row with a wrong number of fields.
A missing (empty or unreadable) cell is tracked apart from a `nan` cell for the detail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from bionas.ingest.keys import lookup_first
from bionas.ingest.ragged import RaggedRows
from bionas.ingest.scan import BOX, FRAME

DEFAULT_FRAME = (1024.0, 768.0)


@dataclass(frozen=True)
class Boxes:
    """Per metadata row: frame size and box columns (Float64, nulls kept) and two flags."""

    columns: dict[str, pl.Series]  # FRAME + BOX, the box clipped where it is good
    bad: np.ndarray  # malformed, degenerate, or wholly outside the frame: a reject
    clipped: np.ndarray  # a good box that was partly outside the frame
    row_fields: np.ndarray | None = None  # the bbox row's field count where it is wrong, else 0


_BLOCK = 1 << 20  # rows per pass of the checks: their temporaries stay small


def _series(name: str, values: np.ndarray, missing: np.ndarray) -> pl.Series:
    """Float64 values (nan stays nan), null where missing."""
    return pl.Series(name, values, dtype=pl.Float64).scatter(np.flatnonzero(missing), None)


def _check(
    values: dict[str, np.ndarray], missing: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(bad, clipped) per row; frame sizes normalised and good boxes clipped, in place.

    Each row of the bbox table claims a box: anything but four finite numbers (an empty
    or unreadable cell, `nan`, `inf`, in one coordinate or all four) is malformed. A frame
    size that is not a positive finite number counts as unknown (missing; the default
    frame is assumed for clipping and the image's own size is used when cropping). A box
    is bad when malformed, degenerate (x1 <= x0 or y1 <= y0) or under a pixel wide or high
    once clipped; only good boxes are clipped, bad ones are kept as given for the detail.
    """
    n = len(values["x0"])
    bad, clipped = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    for lo in range(0, n, _BLOCK):
        rows = slice(lo, lo + _BLOCK)
        v = {c: values[c][rows] for c in (*FRAME, *BOX)}  # views: writes land in `values`
        frame = []
        for name, default in zip(FRAME, DEFAULT_FRAME, strict=True):
            with np.errstate(invalid="ignore"):
                known = np.isfinite(v[name]) & (v[name] > 0)
            missing[name][rows] = ~known
            frame.append(np.where(known, v[name], default))
        x0, y0, x1, y1 = (v[c] for c in BOX)
        has_box = np.isfinite(x0) & np.isfinite(y0) & np.isfinite(x1) & np.isfinite(y1)
        with np.errstate(invalid="ignore"):
            limited = {  # np.where, not np.maximum: ~10x faster on columns with nan
                "x0": np.where(x0 < 0.0, 0.0, x0),
                "y0": np.where(y0 < 0.0, 0.0, y0),
                "x1": np.where(x1 > frame[0], frame[0], x1),
                "y1": np.where(y1 > frame[1], frame[1], y1),
            }
            degenerate = (x1 <= x0) | (y1 <= y0)
            empty = (limited["x1"] - limited["x0"] < 1) | (limited["y1"] - limited["y0"] < 1)
            moved = np.zeros(len(x0), dtype=bool)
            for c in BOX:
                moved |= limited[c] != v[c]
        bad[rows] = ~has_box | degenerate | empty
        good = has_box & ~bad[rows]
        clipped[rows] = good & moved
        for c in BOX:
            np.copyto(v[c], limited[c], where=good)
    return bad, clipped


def lookup_boxes(
    ids: pl.Series, bbox: pl.DataFrame | None, ragged: RaggedRows | None = None
) -> Boxes:
    """Per id, the frame size and box of its first row in `bbox` (none: all null), checked.

    The checks run over the bbox table's own rows, then each column is gathered to the
    ids' rows. `ragged`: the table's rows with a wrong number of fields (bad boxes).
    Consumes `bbox` (its columns are freed one by one).
    """
    if bbox is None or bbox.height == 0:
        bbox = pl.DataFrame(  # one row with every cell missing, which no id finds
            {"processid": [None], **{c: [None] for c in (*FRAME, *BOX)}},
            schema={"processid": pl.String, **dict.fromkeys((*FRAME, *BOX), pl.Float64)},
        )
    rows = lookup_first(ids, bbox.drop_in_place("processid"))
    absent = rows < 0
    values, missing = {}, {}
    for c in (*FRAME, *BOX):
        column = bbox.drop_in_place(c)
        values[c] = column.to_numpy(allow_copy=True).astype(np.float64, copy=False)
        if not values[c].flags.writeable:  # a view of the column: `_check` writes
            values[c] = values[c].copy()
        missing[c] = column.is_null().to_numpy()
        del column
    bad, clipped = _check(values, missing)
    table_fields = None
    if ragged is not None and len(ragged.rows):  # its cells may sit in the wrong columns
        bad[ragged.rows] = True
        clipped[ragged.rows] = False
        table_fields = np.zeros(len(bad), dtype=np.int64)
        table_fields[ragged.rows] = ragged.fields
    columns = {}
    for c in (*FRAME, *BOX):
        gathered = np.take(values.pop(c), rows, mode="clip")  # -1 reads a row, masked below
        columns[c] = _series(c, gathered, np.take(missing.pop(c), rows, mode="clip") | absent)
    flags = [np.take(f, rows, mode="clip") & ~absent for f in (bad, clipped)]
    if table_fields is not None:
        table_fields = np.where(absent, 0, np.take(table_fields, rows, mode="clip"))
    return Boxes(columns, *flags, row_fields=table_fields)
