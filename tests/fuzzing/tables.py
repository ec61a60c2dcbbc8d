"""Fuzz target 2: mutated metadata.csv and bbox.tsv rows through the real `bionas ingest`.

Each case mutates ~15% of the metadata rows and ~10% of the bbox rows (one kind each:
ragged rows, quote chaos, NUL bytes, invalid UTF-8, huge numbers, n/a or negative
coordinates, duplicated processids, blank lines, CRLF, ...), a third of the time with a
whole-file change on top, then ingests. The ingest must end in a clean error (no
traceback) or account for every row: rows in the shards + rows in rejects.parquet (each
with a known reason) = rows written; every row the case did not touch lands with the
same record and image as in the untouched baseline; the trainer's reader streams it all.
"""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from click.testing import CliRunner
from ingest_helpers import read_samples

from bionas.cli import main
from bionas.ingest.images import IMAGE_REASONS
from bionas.ingest.plan import REASONS

from .dataset import ingest_args, stream_dataset
from .runner import Outcome, crash_detail

NUMERIC = ("coord-lat", "coord-lon", "image_measurement_value", "area_fraction", "scale_factor")
LABELS = ("order", "family", "genus", "species", "country", "dna_bin", "taxon", "class")
BOX = ("x0", "y0", "x1", "y1")
MISSING = ("n/a", "NA", "", "nan", "-", "null", "None", "  ")
BAD_UTF8 = (b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xe2\x82")
# Cells stay under MAX_RECORD_BYTES (1 MiB): a bigger one makes ingest write a record the
# reader refuses, breaking its whole shard (test_fuzz.py has it as an xfail).
HUGE_CELLS = ("A" * 70_000, "A" * 300_000)

# kind -> (columns one cell is picked from, values it may get)
CELL_VALUES = {
    "odd_label": (LABELS, ("a,b", 'say "hi"', "two\nlines", "tab\there", " padded ",
                           "Díptera 🦟", "\u202eright-to-left", "carriage\rreturn",
                           "\ufeffDiptera", "<unk>", "Other")),
    "huge_number": ((*NUMERIC, *BOX), ("1e999", "-1e999", "9" * 400, "1e-400", "-0", "0x1F",
                                       "1_000", "+-1", "inf", "1e308", "NaN")),
    "negative_coords": (("coord-lat", "coord-lon", *BOX), ("-91", "-1e6", "-0.0", "-50", "-5")),
    "frame_size": (("width_original", "height_original"), ("0", "-1", "n/a", "1e9", "", "1")),
    "unsafe_processid": (("processid",), ("../evil", "a.b", "", "a/b", " ", "x" * 120, "é-ü",
                                          "a\tb", "<i>")),
    "empty_target": (("order",), ("", " ")),
    "path_cells": (("split", "chunk"), ("../../etc", "/abs", "", "..", "train/../..", "nowhere")),
    "huge_cell": ((*LABELS, "dna_barcode"), HUGE_CELLS),
}  # fmt: skip
QUOTES = {"bare_quote", "unbalanced_quote", "unbalanced_quote_last"}
# kinds after which refusing the whole table is a fine answer
HOSTILE = {*QUOTES, "nul_byte", "invalid_utf8"}
METADATA_KINDS = ("drop_field", "add_field", "odd_label", "bare_quote", "unbalanced_quote",
                  "nul_byte", "invalid_utf8", "huge_number", "missing_coords", "negative_coords",
                  "duplicate_row", "empty_line", "crlf", "unsafe_processid", "empty_target",
                  "path_cells", "huge_cell")  # fmt: skip
BBOX_KINDS = ("drop_field", "add_field", "missing_coords", "negative_coords", "huge_number",
              "frame_size", "degenerate_box", "duplicate_row", "crlf", "deleted_row",
              "nul_byte", "invalid_utf8", "bare_quote")  # fmt: skip
# whole-file changes: name -> hostile
FILE_KINDS = {"crlf_everywhere": False, "bom": False, "no_final_newline": False,
              "trailing_blank_lines": False, "truncate_last_row": False,
              "bbox_crlf_everywhere": False, "bbox_header_only": False,
              "drop_header_column": True, "duplicate_header_column": True, "header_only": True,
              "empty_file": True, "unbalanced_quote_last": True, "nul_in_header": True}  # fmt: skip


def csv_line(fields: list[str], sep: str) -> bytes:
    text = io.StringIO()
    # "\r\n" as terminator, cut after: a cell holding either character gets quoted
    csv.writer(text, delimiter=sep, lineterminator="\r\n").writerow(fields)
    return text.getvalue()[:-2].encode()


def _pick_cell(fields: list[str], rng: random.Random, columns: tuple, names: dict) -> int:
    usable = [names[c] for c in columns if c in names and names[c] < len(fields)]
    return rng.choice(usable) if usable else rng.randrange(len(fields))


def _row_change(kind: str, f: list[str], rng: random.Random, names: dict, sep: str) -> list[bytes]:
    """The structural kinds (not a cell set to a value): the lines replacing the row."""
    i = rng.randrange(len(f))
    if kind == "drop_field":
        del f[i]
    elif kind == "add_field":
        f.insert(i, rng.choice(["", "x", "1.5", '"']))
    elif kind in ("bare_quote", "unbalanced_quote"):
        at = rng.randrange(len(f[i]) + 1) if kind == "bare_quote" else 0
        f[i] = f[i][:at] + '"' + f[i][at:]
        return [sep.join(f).encode()]  # written raw: not RFC 4180
    elif kind == "nul_byte":
        f[i] = f[i][: len(f[i]) // 2] + "\0" + f[i][len(f[i]) // 2 :]
    elif kind == "invalid_utf8":
        return [
            csv_line([*f[:i], f[i] + "\1", *f[i + 1 :]], sep).replace(b"\1", rng.choice(BAD_UTF8))
        ]
    elif kind == "missing_coords":
        for column in rng.sample((*BOX, "coord-lat", "coord-lon"), 3):
            if column in names:
                f[names[column]] = rng.choice(MISSING)
    elif kind == "degenerate_box" and "x1" in names:
        f[names["x1"]] = f[names["x0"]]
    elif kind == "duplicate_row":  # a second row with the same processid, before or after
        twin = list(f)
        twin[_pick_cell(twin, rng, (*LABELS, *BOX), names)] = "changed"
        pair = [csv_line(f, sep), csv_line(twin, sep)]
        return pair if rng.random() < 0.5 else pair[::-1]
    elif kind == "empty_line":
        return [b"", csv_line(f, sep)]
    elif kind == "crlf":
        return [csv_line(f, sep) + b"\r"]
    elif kind == "deleted_row":
        return []
    return [csv_line(f, sep)]


def mutate_row(
    kind: str, fields: list[str], rng: random.Random, names: dict, sep: str
) -> list[bytes]:
    """The lines that replace one row (its header: `names`, column -> index) under `kind`."""
    f = list(fields)
    if kind not in CELL_VALUES:
        return _row_change(kind, f, rng, names, sep)
    columns, values = CELL_VALUES[kind]
    f[_pick_cell(f, rng, columns, names)] = rng.choice(values)
    return [csv_line(f, sep)]


@dataclass
class TableCase:
    metadata: bytes
    bbox: bytes
    rows: int  # data rows of the metadata table as written (blank lines included)
    mutated: set[str]  # processids whose metadata or bbox row changed
    notes: list[str]  # "<processid>:<kind>", "<processid>:bbox_<kind>", whole-file kinds
    hostile: bool  # a mutation after which refusing the whole table is a fine answer


def _read_table(path: Path, sep: str) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as handle:
        header, *rows = csv.reader(handle, delimiter=sep)
    return header, rows


def _mutate_rows(table: Path, sep: str, rate: float, kinds: list[str], rng, case: TableCase):
    """(header line, row lines) of `table` with a `rate` share of its rows mutated."""
    header, rows = _read_table(table, sep)
    names = {name: i for i, name in enumerate(header)}
    prefix = "bbox_" if sep == "\t" else ""
    lines = []
    for fields in rows:
        if rng.random() >= rate:
            lines.append(csv_line(fields, sep))
            continue
        kind = rng.choice(kinds)
        lines += mutate_row(kind, fields, rng, names, sep)
        case.mutated.add(fields[0])
        case.notes.append(f"{fields[0]}:{prefix}{kind}")
    return csv_line(header, sep), lines


def table_case(seed: int, index: int, synth: Path) -> TableCase:
    """Case `index`: rows of both tables mutated, a third of the cases with kinds that may
    spoil a whole table (HOSTILE), 30% with one whole-file change on top."""
    rng = random.Random(f"tables:{seed}:{index}")
    hostile = rng.random() < 0.35
    case = TableCase(b"", b"", 0, set(), [], hostile)
    allowed = [k for k in METADATA_KINDS if hostile or k not in HOSTILE]
    head, lines = _mutate_rows(synth / "metadata.csv", ",", 0.15, allowed, rng, case)
    allowed = [k for k in BBOX_KINDS if hostile or k not in HOSTILE]
    bbox_head, bbox_lines = _mutate_rows(synth / "bbox.tsv", "\t", 0.1, allowed, rng, case)
    case.rows = len(lines)
    if rng.random() < 0.3:
        kind = rng.choice([k for k, bad in FILE_KINDS.items() if hostile or not bad])
        case.hostile |= FILE_KINDS[kind]
        case.notes.append(kind)
        head, lines, bbox_lines = _file_change(kind, head, lines, bbox_lines, case, rng)
    case.metadata = b"\n".join([head, *lines]) + b"\n"
    case.bbox = b"\n".join([bbox_head, *bbox_lines]) + b"\n"
    _byte_changes(case)
    return case


def _file_change(kind: str, head: bytes, lines: list, bbox_lines: list, case, rng):
    """A whole-file change made on lines; the byte-level ones come in `_byte_changes`."""
    if kind == "trailing_blank_lines":
        blank = rng.randint(1, 3)
        lines, case.rows = [*lines, *[b""] * blank], case.rows + blank
    elif kind == "truncate_last_row":
        last = lines[-1]
        case.mutated.add(last.split(b",", 1)[0].decode(errors="replace"))  # its processid
        lines = [*lines[:-1], last[: rng.randrange(len(last) + 1)]]
    elif kind == "bbox_header_only":
        bbox_lines = []
        case.mutated.add("*")  # every row loses its box
    elif kind == "drop_header_column":
        head = b",".join(head.split(b",")[1:])
    elif kind == "duplicate_header_column":
        cells = head.split(b",")
        head = b",".join([*cells[:-1], rng.choice(cells)])
    elif kind == "header_only":
        lines, case.rows = [], 0
    elif kind == "unbalanced_quote_last":
        lines = [*lines[:-1], b'"' + lines[-1]]
    elif kind == "nul_in_header":
        head = head.replace(b",", b"\0,", 1)
    return head, lines, bbox_lines


def _byte_changes(case: TableCase) -> None:
    if "crlf_everywhere" in case.notes:
        case.metadata = case.metadata.replace(b"\n", b"\r\n")
    if "bbox_crlf_everywhere" in case.notes:
        case.bbox = case.bbox.replace(b"\n", b"\r\n")
    if "no_final_newline" in case.notes:
        case.metadata = case.metadata[:-1]
    if "bom" in case.notes:
        case.metadata = b"\xef\xbb\xbf" + case.metadata
    if "empty_file" in case.notes:
        case.metadata, case.rows = b"", 0


class Tables:
    """`bionas ingest` of mutated tables: a clean error, or every row accounted for."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.synth = workdir, workdir / "synth"
        self.baseline = read_samples(workdir / "ds-none")  # processid -> record and image
        self.reasons = set(REASONS) | set(IMAGE_REASONS)

    def run(self, seed: int, index: int) -> Outcome:
        case = table_case(seed, index, self.synth)
        where = self.workdir / "tables-case"
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        (where / "metadata.csv").write_bytes(case.metadata)
        (where / "bbox.tsv").write_bytes(case.bbox)
        args = ingest_args(where / "metadata.csv", where / "bbox.tsv", self.synth, where / "ds")
        result = CliRunner().invoke(main, args, catch_exceptions=True)
        notes = f"[{', '.join(case.notes)}]"
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            return Outcome(index, "crash", detail=f"{notes} {crash_detail(result.exception)}")
        if "Traceback" in result.output:
            return Outcome(index, "crash", detail=f"{notes} {result.output[-3000:]}")
        tally = {"ingests": 1, "rows": case.rows, "rows mutated": len(case.mutated)}
        if result.exit_code == 0:
            problem, counts = self.account(case, where / "ds")
            return Outcome(
                index, "failure" if problem else "ok", tally | counts, f"{notes} {problem}"
            )
        if not result.output.startswith("Error: "):
            return Outcome(index, "failure", tally, f"{notes} unclear exit: {result.output[:500]}")
        long_message = result.output.strip().count("\n") >= 3
        refused = "refused (hostile case)" if case.hostile else "refused (row-local case)"
        tally |= {refused: 1, "refusals of 4+ lines": int(long_message)}
        return Outcome(index, "ok", tally, detail=result.output[:300])

    def account(self, case: TableCase, out: Path) -> tuple[str, dict[str, int]]:
        """What is wrong with a finished ingest ("" when nothing), and its counts."""
        landed = read_samples(out)
        rejects = pl.read_parquet(out / "rejects.parquet")
        manifest = json.loads((out / "manifest.json").read_text())
        counts = Counter(
            {"ingested": 1, "rows landed": len(landed), "rows rejected": rejects.height}
        )
        counts.update(f"rejected {r}" for r in rejects["reason"].to_list())
        untouched = (
            [] if "*" in case.mutated else [p for p in self.baseline if p not in case.mutated]
        )
        lost = [pid for pid in untouched if landed.get(pid) != self.baseline[pid]]  # or changed
        rows = case.rows
        if any(note.rpartition(":")[2].removeprefix("bbox_") in QUOTES for note in case.notes):
            # A stray quote opens a quoted cell that runs on to the next quote, rows and all
            # (RFC 4180), and both of ingest's readers agree: those rows are not rows.
            counts["untouched rows swallowed by a stray quote"] = len(lost)
            counts["rows swallowed by a stray quote"] = rows - len(landed) - rejects.height
            lost, rows = [], len(landed) + rejects.height
        counts["good rows lost"] = len(lost)
        streamed = stream_dataset(out)
        unknown = set(rejects["reason"].fill_null("<null>")) - self.reasons
        problems = [
            (len(landed) + rejects.height != rows,
             f"{len(landed)} landed + {rejects.height} rejected != {rows} rows"),
            (bool(lost), f"untouched rows lost or changed: {lost[:5]}"),
            (bool(unknown), f"rejects without a known reason: {unknown}"),
            (manifest["rejects"]["total"] != rejects.height, "manifest's reject total differs"),
            (sum(s["samples"] for s in manifest["splits"].values()) != len(landed),
             "manifest's sample count differs from the shards"),
            (streamed != (len(landed), 0), f"the trainer's reader streams {streamed} "
             f"(samples, broken shards) of {len(landed)} samples"),
        ]  # fmt: skip
        return "; ".join(text for broken, text in problems if broken), dict(counts)
