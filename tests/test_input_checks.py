"""The metadata and bbox tables are checked before any work (issue 11, item 2).

A header naming a needed column twice is refused; a row with the wrong number of fields
and a bbox row without a readable box are rejects with a reason; a valid UTF-8 file is
never refused because of where its first 64 KiB end.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from ingest_helpers import run_cli

from bionas.errors import BionasError
from bionas.ingest import ragged
from bionas.ingest.config import IngestConfig
from bionas.ingest.plan import make_plan
from bionas.ingest.profiles import BIOSCAN_5M, ID
from bionas.ingest.ragged import find_ragged_rows
from bionas.ingest.scan import HEAD_BYTES, read_header

COLUMNS = list(BIOSCAN_5M.columns)
BBOX_HEADER = ["processid", "width_original", "height_original", "x0", "y0", "x1", "y1"]


def metadata_line(pid: str, order: str = "Diptera", split: str = "train", **cells: str) -> str:
    row = {**dict.fromkeys(COLUMNS, ""), "processid": pid, "order": order, "split": split,
           "phylum": "Arthropoda", "class": "Insecta", **cells}  # fmt: skip
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow([row[c] for c in COLUMNS])
    return text.getvalue()


def write_metadata(path: Path, lines: list[str], header: list[str] = COLUMNS) -> Path:
    path.write_text(",".join(header) + "\n" + "".join(lines))
    return path


def write_bbox(path: Path, rows: list[list[str]], header: list[str] = BBOX_HEADER) -> Path:
    path.write_text("\n".join("\t".join(row) for row in [header, *rows]) + "\n")
    return path


def plan_of(tmp_path: Path, metadata: Path, bbox: Path | None = None, **options):
    cfg = IngestConfig(metadata=metadata, images=tmp_path, out=tmp_path / "out", bbox=bbox,
                       split_source="official", **options)  # fmt: skip
    return make_plan(cfg, BIOSCAN_5M)


def rejects_by_id(plan) -> dict[str, tuple[str, str]]:
    return {pid: (reason, detail) for pid, _, _, reason, detail in plan.rejects.rows()}


# --- duplicate column names ----------------------------------------------------------


def ingest_refused(tmp_path: Path, metadata: Path, *extra: str) -> str:
    (tmp_path / "images").mkdir(exist_ok=True)
    result = run_cli("ingest", metadata, "--images", tmp_path / "images",
                     "--out", tmp_path / "ds", *extra, ok=False)  # fmt: skip
    assert result.exit_code != 0 and "Traceback" not in result.output
    return " ".join(result.output.split())  # click wraps long messages


def test_two_order_columns_in_the_metadata_are_refused_naming_file_column_and_fix(tmp_path):
    # Polars would read the first `order` and call the second `order_duplicated_0`
    header = [*COLUMNS, "order"]
    metadata = write_metadata(
        tmp_path / "metadata.csv", [metadata_line("P1").rstrip("\n") + ",Coleoptera\n"], header
    )
    message = ingest_refused(tmp_path, metadata)
    assert str(metadata) in message
    assert "'order' is columns 6, 24" in message
    assert "rename or remove the extra copies" in message


def test_a_repeated_bbox_coordinate_column_is_refused(tmp_path):
    metadata = write_metadata(tmp_path / "metadata.csv", [metadata_line("P1")])
    bbox = write_bbox(tmp_path / "bbox.tsv", [["P1", "1024", "768", "1", "2", "3", "4", "9"]],
                      [*BBOX_HEADER, "x0"])  # fmt: skip
    message = ingest_refused(tmp_path, metadata, "--bbox", bbox)
    assert str(bbox) in message and "'x0' is columns 4, 8" in message


def test_a_repeated_column_that_bionas_does_not_read_is_tolerated(tmp_path):
    header = [*COLUMNS, "dna_barcode"]  # read only with --with-barcode
    line = metadata_line("P1").rstrip("\n") + ",ACGT\n"
    plan = plan_of(tmp_path, write_metadata(tmp_path / "metadata.csv", [line], header))
    assert plan.samples[ID].to_list() == ["P1"]


# --- bbox rows without a readable box ------------------------------------------------


def test_a_bbox_row_with_no_readable_coordinate_is_bad_and_no_row_means_no_box(tmp_path):
    ids = ["NA", "EMPTY", "TEXT", "ONE", "GOOD", "NOROW"]
    metadata = write_metadata(tmp_path / "metadata.csv", [metadata_line(pid) for pid in ids])
    bbox = write_bbox(tmp_path / "bbox.tsv", [
        ["NA", "1024", "768", "n/a", "n/a", "n/a", "n/a"],
        ["EMPTY", "1024", "768", "", "", "", ""],
        ["TEXT", "1024", "768", "left", "top", "right", "bottom"],
        ["ONE", "1024", "768", "n/a", "10", "200", "300"],  # one bad coordinate (as before)
        ["GOOD", "1024", "768", "10", "10", "200", "300"],
    ])  # fmt: skip
    plan = plan_of(tmp_path, metadata, bbox)
    rejects = rejects_by_id(plan)
    for pid in ("NA", "EMPTY", "TEXT", "ONE"):
        assert rejects[pid][0] == "bad_bbox", pid
    assert rejects["NA"][1] == "bbox (missing, missing, missing, missing) in a 1024.0x768.0 frame"
    assert sorted(plan.samples[ID].to_list()) == ["GOOD", "NOROW"]
    rows = plan.rows(plan.samples["row"].to_numpy())
    boxes = {r[ID]: (r["x0"], r["y1"]) for r in rows.iter_rows(named=True)}
    assert boxes == {"GOOD": (10.0, 300.0), "NOROW": (None, None)}  # no row: whole photo


# --- ragged rows ---------------------------------------------------------------------


def test_rows_with_more_or_fewer_fields_than_the_header_are_rejects_naming_the_row(tmp_path):
    good = metadata_line("P1")
    lines = [
        good,
        good.replace("P1", "LONG").replace("Arthropoda", "Arthro,poda"),  # unquoted comma
        good.replace("P1", "SHORT").replace("Diptera,", "Diptera", 1),  # a separator lost
        good.replace("P1", "TRAIL").rstrip("\n") + ",\n",  # one empty field too many
        "\n",  # a blank line: one empty field
        metadata_line("QUOTED", phylum="Arthro,poda", country="line\nbreak"),  # quoted: fine
        metadata_line("P2"),
    ]
    plan = plan_of(tmp_path, write_metadata(tmp_path / "metadata.csv", lines))
    rejects = rejects_by_id(plan)
    of_23 = "fields where the header of metadata.csv has 23"
    assert rejects["LONG"] == ("ragged_row", f"24 {of_23} (data row 2)")
    assert rejects["SHORT"] == ("ragged_row", f"22 {of_23} (data row 3)")
    assert rejects["TRAIL"] == ("ragged_row", f"24 {of_23} (data row 4)")
    assert ("ragged_row", f"1 {of_23} (data row 5)") in rejects.values()  # the blank line
    assert sorted(plan.samples[ID].to_list()) == ["P1", "P2", "QUOTED"]
    quoted = plan.rows(plan.samples["row"].to_numpy()).filter(plan.samples[ID] == "QUOTED")
    assert quoted["phylum"].cast(pl.String).to_list() == ["Arthro,poda"]


def test_a_ragged_bbox_row_is_a_bad_box_and_limit_reads_only_its_rows(tmp_path):
    lines = [metadata_line(pid) for pid in ("A", "B", "C")]
    lines.append(metadata_line("LATE").replace("Arthropoda", "Arthro,poda"))  # after --limit
    metadata = write_metadata(tmp_path / "metadata.csv", lines)
    bbox = write_bbox(tmp_path / "bbox.tsv", [
        ["A", "1024", "768", "10", "10", "200", "300"],
        ["B", "1024", "768", "", "10", "10", "200", "300"],  # a stray tab: cells shifted
        ["C", "1024", "768", "10", "10", "200"],
    ])  # fmt: skip
    plan = plan_of(tmp_path, metadata, bbox, limit=3)
    rejects = rejects_by_id(plan)
    detail = "its bbox row has 8 fields where the header of bbox.tsv has 7"
    assert rejects["B"] == ("bad_bbox", detail)
    assert rejects["C"][0] == "bad_bbox"
    assert plan.samples[ID].to_list() == ["A"] and "LATE" not in rejects


def reference_field_counts(text: str) -> list[int]:
    """Fields per data row as Python's csv module reads them (a blank line: one field)."""
    rows = list(csv.reader(io.StringIO(text, newline="")))
    return [max(len(row), 1) for row in rows[1:]]


@pytest.mark.parametrize("block", [1, 5, 64, 1 << 20])
def test_field_counts_match_the_csv_module_whatever_the_block_size(tmp_path, monkeypatch, block):
    # blocks that end inside a row, a quoted cell or a doubled quote must not change a count
    rng = np.random.default_rng(block)
    pieces = ["a", "", '"x,y"', '"say ""hi"""', '"two\nlines"', "b c"]
    lines = ["h1,h2,h3,h4"]
    for _ in range(300):
        width = int(rng.choice([4, 4, 4, 3, 5, 1]))
        lines.append(",".join(pieces[int(rng.integers(len(pieces)))] for _ in range(width)))
    text = "\n".join(lines) + ("\n" if block % 2 else "")  # with and without a last newline
    path = tmp_path / "table.csv"
    path.write_text(text)
    monkeypatch.setattr(ragged, "_BLOCK", block)
    found = find_ragged_rows(path, ",")
    expected = reference_field_counts(text)
    wrong = [i for i, n in enumerate(expected) if n != 4]
    assert found.width == 4 and found.total == len(expected)
    assert found.rows.tolist() == wrong
    assert found.fields.tolist() == [expected[i] for i in wrong]


def test_row_numbers_that_do_not_line_up_with_the_rows_read_are_refused(tmp_path):
    counts = ragged.RaggedRows(
        tmp_path / "t.csv", 4, np.zeros(0, np.int64), np.zeros(0, np.int64), 5
    )
    ragged.check_row_count(counts, 5)
    with pytest.raises(BionasError, match="t.csv: 4 rows were read but the file has 5"):
        ragged.check_row_count(counts, 4)


# --- the UTF-8 check of the header read ----------------------------------------------


def test_a_character_cut_by_the_end_of_the_header_read_is_still_utf8(tmp_path):
    header = "processid,order\n"
    filler = "P1," + "x" * (HEAD_BYTES - len(header) - 4)
    assert len((header + filler).encode()) == HEAD_BYTES - 1
    path = tmp_path / "metadata.csv"
    path.write_text(header + filler + "é\n", encoding="utf-8")  # é's 2 bytes straddle the read
    assert read_header(path, ",") == ["processid", "order"]
    path.write_bytes((header + filler).encode() + b"\xff\n")  # a byte no UTF-8 has: refused
    with pytest.raises(BionasError, match="not a UTF-8"):
        read_header(path, ",")


def test_a_table_polars_cannot_parse_is_refused_in_one_short_line(tmp_path):
    """Polars quotes the offending rows verbatim, kilobytes over many lines (found by the
    tables fuzz); the refusal keeps its first line, cut short."""
    from bionas.ingest.scan import _first_line

    error = ValueError("could not parse row 7\n\n" + "A" * 5000 + "\nmore\n")
    assert _first_line(error) == "could not parse row 7"
    long = _first_line(ValueError("x" * 1000))
    assert len(long) == 300 and long.endswith("…")


def test_line_breaks_inside_quotes_are_counted_and_warned_of(tmp_path, caplog):
    """Two stray quotes make every row between them one quoted cell: legal CSV, so both
    readers agree and no count differs (found by the tables fuzz). The plan says so."""
    from concurrent.futures import Future

    from bionas.ingest.plan import counted
    from bionas.ingest.ragged import find_ragged_rows

    table = tmp_path / "t.csv"
    table.write_text('a,b,c\n1,2,3\n4,"5,6\n7,8,9\n10,11",12\n13,14,15\n')
    ragged = find_ragged_rows(table, ",")
    assert ragged.quoted_line_breaks == 2
    assert find_ragged_rows(_write(tmp_path, 'a,b\n"x",y\n'), ",").quoted_line_breaks == 0
    count: Future = Future()
    count.set_result(ragged)
    with caplog.at_level("WARNING"):
        counted(count, pl.read_csv(table, infer_schema=False))
    assert "2 line break(s) inside quoted cells" in caplog.text


def _write(folder, text):
    path = folder / "u.csv"
    path.write_text(text)
    return path
