"""Rows with more or fewer fields than the header line, found before any work (SPEC §4, §8).

Polars cannot say which rows those are: it pads a short row with nulls, and when only some
columns are read (always, here) it drops a long row's extra fields without a word. Either
way every field after the missing or extra separator sits in the wrong column, so every
label of the row may be wrong. So each table is read once more as bytes, block by block:
`bytes.translate` deletes every byte but the separator, the newline and the quote (~0.6 s
per GB on one core, in a thread beside the Polars scan), which leaves ~25 bytes per row.
Separators and newlines inside quotes are dropped by quote parity (RFC 4180: a doubled
quote inside a quoted field counts twice), the rest is compared with the header's shape
in one `==`; only a block that differs is split into rows.

The rows counted here are the rows Polars reads (a blank line is a row of one empty field
to both), which `check_row_count` confirms before the numbers are used. A quote in the
middle of an unquoted cell (`5" long`, not RFC 4180) is literal to Polars but opens a
quote here: one such quote makes Polars refuse the file anyway ("CSV malformed"), two on
one row hide the separators between them here, so that row is a `ragged_row` reject
although Polars could split it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bionas.errors import BionasError

log = logging.getLogger(__name__)
NEWLINE, QUOTE = ord("\n"), ord('"')
_BLOCK = 1 << 20  # bytes read at a time (translate holds the GIL for ~0.6 ms a block)


@dataclass(frozen=True)
class RaggedRows:
    """The data rows (0-based, the header not counted) whose field count is not the header's."""

    path: Path
    width: int  # fields in the header line
    rows: np.ndarray  # int64, ascending
    fields: np.ndarray  # int64, the field count of each of `rows`
    total: int  # data rows read (all of them, or the first `max_rows`)
    # newlines inside quoted cells: legal CSV, but in a table whose cells never hold a line
    # break it is the mark of a stray quote, which merges the rows up to the next one
    quoted_line_breaks: int = 0

    def fields_of(self, rows: np.ndarray) -> np.ndarray:
        """The field count of each of `rows` (any rows; `width` where it is right)."""
        at = np.searchsorted(self.rows, rows)
        found = at < len(self.rows)
        found[found] = self.rows[at[found]] == rows[found]
        out = np.full(len(rows), self.width, dtype=np.int64)
        out[found] = self.fields[at[found]]
        return out

    def flags(self, n: int) -> np.ndarray:
        """Per data row of the first `n`, whether it is ragged."""
        flags = np.zeros(n, dtype=bool)
        flags[self.rows[self.rows < n]] = True
        return flags


def find_ragged_rows(
    path: Path, delimiter: str, max_rows: int | None = None, stop: threading.Event | None = None
) -> RaggedRows:
    """Every data row of `path` whose number of fields differs from its header line's.

    `max_rows`: read only that many data rows. `stop`: set, it ends the read early (the
    result is then incomplete: for a plan that failed anyway).
    """
    structural = bytes([ord(delimiter), NEWLINE, QUOTE])
    others = bytes(b for b in range(256) if b not in structural)
    counter = _RowCounter(ord(delimiter), max_rows)
    with open(path, "rb") as handle:
        while not counter.done and (block := handle.read(_BLOCK)):
            if stop is not None and stop.is_set():
                break
            counter.add(block.translate(None, others))
    return counter.finish(path)


class _RowCounter:
    """Fields per row over a stream of separators, newlines and quotes, block by block."""

    def __init__(self, separator: int, max_rows: int | None) -> None:
        self.separator, self.max_rows = separator, max_rows
        self.quoted = False  # inside a quoted field at the end of the last block
        self.tail = b""  # separators of the row in progress
        self.records = 0  # complete rows so far, the header included
        self.quoted_line_breaks = 0
        self.width = 0
        self.rows: list[np.ndarray] = []
        self.fields: list[np.ndarray] = []

    @property
    def done(self) -> bool:
        return self.max_rows is not None and self.records > self.max_rows

    def add(self, kept: bytes) -> None:
        if self.quoted or QUOTE in kept:
            kept = self._outside_quotes(kept)
        text = self.tail + kept
        end = text.rfind(b"\n") + 1
        complete, self.tail = text[:end], text[end:]
        self._count(complete)

    def _count(self, complete: bytes) -> None:
        """Count whole rows (each ending in a newline); note those of the wrong shape."""
        if not complete:
            return
        if self.records == 0:  # the header line sets the shape
            self.width = complete.index(b"\n") + 1
        row = bytes([self.separator]) * (self.width - 1) + b"\n"
        count = len(complete) // len(row)
        if len(complete) % len(row) or complete != row * count:
            self._split(complete)
        else:
            self.records += count

    def _outside_quotes(self, kept: bytes) -> bytes:
        """Drop separators and newlines inside quoted fields, and the quotes themselves."""
        values = np.frombuffer(kept, dtype=np.uint8)
        quote = values == QUOTE
        inside = (np.cumsum(quote) + self.quoted) % 2 == 1  # after each byte
        if len(values):
            self.quoted = bool(inside[-1])
        self.quoted_line_breaks += int(np.count_nonzero(inside & (values == NEWLINE)))
        return values[~quote & ~inside].tobytes()

    def _split(self, complete: bytes) -> None:
        """Record the rows of `complete` (whole rows) whose field count is not the header's."""
        ends = np.flatnonzero(np.frombuffer(complete, dtype=np.uint8) == NEWLINE)
        fields = np.diff(ends, prepend=-1)  # separators + 1: the bytes up to each newline
        records = self.records + np.arange(len(ends))
        wrong = (fields != self.width) & (records > 0)  # record 0: the header
        self.rows.append(records[wrong] - 1)
        self.fields.append(fields[wrong])
        self.records += len(ends)

    def finish(self, path: Path) -> RaggedRows:
        if self.tail and not self.done:  # a last row without a newline
            self._count(self.tail + b"\n")
        total = max(self.records - 1, 0)
        rows = np.concatenate([np.zeros(0, dtype=np.int64), *self.rows]).astype(np.int64)
        fields = np.concatenate([np.zeros(0, dtype=np.int64), *self.fields]).astype(np.int64)
        if self.max_rows is not None:
            keep = rows < self.max_rows
            rows, fields, total = rows[keep], fields[keep], min(total, self.max_rows)
        return RaggedRows(path, self.width, rows, fields, total, self.quoted_line_breaks)


def check_rows(ragged: RaggedRows, height: int) -> None:
    """`check_row_count`, and a warning when quoted cells hold line breaks."""
    check_row_count(ragged, height)
    if ragged.quoted_line_breaks:
        log.warning(
            "%s: %d line break(s) inside quoted cells, so some rows span several lines. If "
            "no cell of this table should hold a line break, a stray quote has merged the "
            "rows up to the next quote into one (look for ragged_row rejects with many "
            "fields): fix the quoting and rerun",
            ragged.path,
            ragged.quoted_line_breaks,
        )


def check_row_count(ragged: RaggedRows, height: int) -> None:
    """Refuse to use row numbers that do not line up with the rows Polars read."""
    if ragged.total != height:
        raise BionasError(
            f"{ragged.path}: {height} rows were read but the file has {ragged.total} by its "
            "line ends and quotes, so rows with a wrong number of fields cannot be named: "
            "check its quoting (a quote inside a cell must be doubled, the cell quoted)"
        )
