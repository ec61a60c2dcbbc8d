"""Bbox lookup and checks (`ingest/boxes.py`) and the scan's read-ahead cap, in isolation.

The whole plan is compared with its first version in test_plan.py; these pin the
cases a plan-level table rarely hits.
"""

from __future__ import annotations

import math
import os

import polars as pl

from bionas.ingest.boxes import lookup_boxes
from bionas.ingest.scan import BOX, FRAME, READ_AHEAD_CHUNKS, READ_AHEAD_ENV, bounded_read_ahead


def table(rows: list[tuple]) -> pl.DataFrame:
    schema = {"processid": pl.String, **dict.fromkeys((*FRAME, *BOX), pl.Float64)}
    return pl.DataFrame(rows, schema=schema, orient="row")


def values(boxes, column: str) -> list:
    return boxes.columns[column].to_list()


def test_boxes_are_looked_up_checked_and_clipped():
    bbox = table(
        [
            ("a", 1024.0, 768.0, -5.0, 10.0, 2000.0, 700.0),  # partly outside: clipped
            ("b", 512.0, 0.0, 10.0, 10.0, 100.0, 100.0),  # height 0: unknown, default used
            ("c", 1024.0, 768.0, 50.0, 50.0, 40.0, 60.0),  # degenerate: bad, kept as given
            ("d", 1024.0, 768.0, None, 1.0, 2.0, 3.0),  # partly empty: malformed
            ("e", 1024.0, 768.0, math.nan, math.nan, math.nan, math.nan),  # nan: malformed
            ("f", None, None, None, None, None, None),  # a bbox row without a box: bad
            ("a", 1024.0, 768.0, 1.0, 1.0, 2.0, 2.0),  # a later row for "a": ignored
        ]
    )
    ids = pl.Series(["a", "b", "c", "d", "e", "f", "missing", None])
    boxes = lookup_boxes(ids, bbox)
    assert boxes.bad.tolist() == [False, False, True, True, True, True, False, False]
    assert boxes.clipped.tolist() == [True, False, False, False, False, False, False, False]
    assert values(boxes, "x0")[:3] == [0.0, 10.0, 50.0]
    assert values(boxes, "x1")[:3] == [1024.0, 100.0, 40.0]
    assert values(boxes, "height_original")[:2] == [768.0, None]  # 0 is not a frame size
    assert values(boxes, "x0")[3] is None and math.isnan(values(boxes, "y0")[4])
    for c in (*FRAME, *BOX):
        assert values(boxes, c)[5:] == [None, None, None]
    assert bbox.width == 0  # consumed


def test_no_bbox_table_and_an_empty_one_give_no_boxes():
    ids = pl.Series(["a", "b"])
    for bbox in (None, table([])):
        boxes = lookup_boxes(ids, bbox)
        assert not boxes.bad.any() and not boxes.clipped.any()
        assert all(values(boxes, c) == [None, None] for c in (*FRAME, *BOX))


def test_read_ahead_is_capped_only_inside_and_a_user_setting_wins(monkeypatch):
    monkeypatch.delenv(READ_AHEAD_ENV, raising=False)
    with bounded_read_ahead():
        assert os.environ[READ_AHEAD_ENV] == str(READ_AHEAD_CHUNKS)
    assert READ_AHEAD_ENV not in os.environ
    monkeypatch.setenv(READ_AHEAD_ENV, "64")
    with bounded_read_ahead():
        assert os.environ[READ_AHEAD_ENV] == "64"
    assert os.environ[READ_AHEAD_ENV] == "64"
