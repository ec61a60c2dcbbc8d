"""The fast plan gives exactly what the first, plain version gave, on awkward tables.

Samples in the same order with the same split and shard, the same rejects (reason,
detail, order), the same counts, and the same record fields for every sample.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from plan_reference import reference_plan

from bionas.ingest.config import IngestConfig
from bionas.ingest.plan import BOX, FRAME, REJECT_SCHEMA, make_plan
from bionas.ingest.profiles import BIOSCAN_5M, ID, OFFICIAL_SPLIT
from bionas.ingest.scan import path_expression, path_parts

COLUMNS = BIOSCAN_5M.columns
QUOTED_EMPTY = "\x00quoted-empty\x00"  # written as "" (an empty string, not a missing cell)


def awkward_ids(n: int, rng: np.random.Generator) -> list[str]:
    ids = [f"BIOUG{i:05d}-{'ABCDEFGH'[i % 8]}{i % 12:02d}" for i in range(n)]
    ids[3:12] = [
        "a/b",
        "",
        " BIOUG1-A01",
        "BIOUGé-1",
        "x" * 95,
        "x" * 90,
        "BIOUG:1+2@3=4,5",
        "..",
        "ok",
    ]
    for i in rng.choice(np.arange(20, n), size=12, replace=False):
        ids[i] = ids[int(rng.integers(0, 20))]  # duplicates, some of unsafe ids
    return ids


def write_tables(folder: Path, n: int = 400, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    pick = lambda pool: pool[int(rng.integers(0, len(pool)))]  # noqa: E731
    ids = awkward_ids(n, rng)
    orders = ["Diptera", "Hymenoptera", "Coleoptera", "", QUOTED_EMPTY, "  ", "Lepidoptera"]
    numbers = ["12.5", " 12.5 ", "abc", "", "nan", "1e3", "-0.0", "7\t", "+4"]
    splits = ["train", "val", "test", "pretrain", " train ", "TRAIN", QUOTED_EMPTY, "key_unseen"]
    rows = []
    for pid in ids:
        row = dict.fromkeys(COLUMNS, "")
        row.update(
            processid=pid, phylum="Arthropoda", order=pick(orders), family=pick(["Phoridae", "", "Sciaridae", QUOTED_EMPTY]),
            taxon=pick(["Phoridae", "Diptera"]), dna_bin=pick(["BOLD:A1", "", "BOLD:B2", "BOLD:C3"]),
            country=pick(["Canada", "", "Costa Rica"]), split=pick(splits), chunk=pick(["1", "2", "", " 3 "]),
            dna_barcode="ACGT" * 5,
        )  # fmt: skip
        row["class"] = pick(["Insecta", "Arachnida", ""])
        for name in BIOSCAN_5M.numeric:
            row[name] = pick(numbers)
        rows.append(row)
    metadata = folder / "metadata.csv"
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    metadata.write_text(text.getvalue().replace(QUOTED_EMPTY, '""'))

    boxes = ["10", " 20 ", "x", "", "1e2", "-5", "2000", "nan", "inf", "-0.0", "0"]
    bbox = folder / "bbox.tsv"
    with open(bbox, "w", newline="") as handle:
        out = csv.writer(handle, delimiter="\t", lineterminator="\n")
        out.writerow(["processid", "width_original", "height_original", "x0", "y0", "x1", "y1"])
        for k, pid in enumerate(rng.permutation(np.array(ids, dtype=object))):
            if k % 17 == 0:
                continue  # no bbox for this row
            x0, y0 = int(rng.integers(-40, 900)), int(rng.integers(-40, 700))
            box = [x0, y0, x0 + int(rng.integers(-5, 300)), y0 + int(rng.integers(-5, 200))]
            if k % 11 == 0:
                box = [pick(boxes)] * 4
            elif k % 7 == 0:
                box[k % 4] = pick(boxes)  # one odd coordinate: partly empty, nan, inf, -0.0
            frame = [pick(["1024", "", " 1024 ", "512", "0", "nan", "-1"]), pick(["768", "inf"])]
            out.writerow([pid, *frame, *box])
            if k % 23 == 0:
                out.writerow([pid, "1024", "768", 1, 1, 2, 2])  # a later duplicate: ignored
        out.writerow(["NOT-IN-METADATA", "1024", "768", 1, 1, 50, 50])
    return metadata, bbox


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    return write_tables(tmp_path_factory.mktemp("awkward"))


CASES = {
    "random": {},
    "official": {"split_source": "official"},
    "official, some splits": {"split_source": "official", "splits": ("train", "val", "nope")},
    "random, seed, ratios": {"seed": 7, "split_ratios": (0.5, 0.3, 0.2), "shard_size": 13},
    "limit": {"limit": 150, "shard_size": 9},
    "family target": {"target": "family", "split_source": "official", "shard_size": 20},
    "no bbox": {"bbox": None},
}


@pytest.mark.parametrize("case", CASES)
def test_plan_matches_the_first_version(tables, tmp_path, case):
    metadata, bbox = tables
    options = {"bbox": bbox, **CASES[case]}
    cfg = IngestConfig(metadata=metadata, images=tmp_path, out=tmp_path / "out", **options)
    plan = make_plan(cfg, BIOSCAN_5M)
    ref = reference_plan(cfg, BIOSCAN_5M)

    key = [ID, "split", "shard"]
    assert plan.samples.select(key).equals(ref["samples"].select(key))
    assert plan.rejects.equals(ref["rejects"].cast(REJECT_SCHEMA))
    assert (plan.excluded, plan.clipped_bboxes) == (ref["excluded"], ref["clipped"])
    assert plan.rejects.height > 10 and plan.samples.height > 50  # the table is awkward enough

    rows = plan.rows(plan.samples["row"].to_numpy())
    rows = rows.with_columns(path_expression(BIOSCAN_5M.image_path, path_parts(BIOSCAN_5M)))
    fields = [*BIOSCAN_5M.numeric, OFFICIAL_SPLIT, *FRAME, *BOX, "_path"]
    assert rows.select(fields).equals(ref["samples"].select(fields))
    for name in BIOSCAN_5M.categorical:  # records hold blank labels as missing
        labels = [value or None for value in rows[name].cast(pl.String).to_list()]
        assert labels == ref["samples"][name].to_list(), name


def test_each_reject_names_its_row_and_says_why(tmp_path):
    table = [  # processid, order, official split, bbox (x0, y0, x1, y1, width, height)
        ("a/b", "Diptera", "train", None),
        ("P1", "Diptera", "train", None),
        ("P1", "Diptera", "val", None),
        ("P2", "", "train", None),
        ("P3", "Diptera", "holdout", None),
        ("P4", "Diptera", "test", ("50", "50", "10", "60", "", "")),  # x1 < x0
        ("P5", "Diptera", "train", ("x", "5", "20", "30", "512", "inf")),  # x0 unreadable
        ("P6", "Diptera", "val", ("10", "10", "40", "40", "1024", "768")),
    ]
    metadata, bbox = tmp_path / "metadata.csv", tmp_path / "bbox.tsv"
    with open(metadata, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS, lineterminator="\n")
        writer.writeheader()
        for pid, order, split, _ in table:
            writer.writerow({**dict.fromkeys(COLUMNS, ""), "processid": pid, "order": order,
                             "split": split, "phylum": "Arthropoda"})  # fmt: skip
    with open(bbox, "w", newline="") as handle:
        out = csv.writer(handle, delimiter="\t", lineterminator="\n")
        out.writerow(["processid", "width_original", "height_original", "x0", "y0", "x1", "y1"])
        for pid, _, _, box in table:
            if box is not None:
                out.writerow([pid, *box[4:], *box[:4]])
    cfg = IngestConfig(metadata=metadata, images=tmp_path, out=tmp_path / "out", bbox=bbox,
                       split_source="official")  # fmt: skip
    plan = make_plan(cfg, BIOSCAN_5M)

    assert plan.rejects.rows() == [
        ("a/b", "train", "plan", "unsafe_processid", "processid 'a/b' is not a safe file name"),
        ("P1", "val", "plan", "duplicate_processid", "processid already used by an earlier row"),
        ("P2", "train", "plan", "empty_target", "no order label"),
        ("P3", None, "plan", "missing_split", "split 'holdout' is not known"),
        ("P4", "test", "plan", "bad_bbox", "bbox (50.0, 50.0, 10.0, 60.0) in a 1024.0x768.0 frame"),
        ("P5", "train", "plan", "bad_bbox", "bbox (missing, 5.0, 20.0, 30.0) in a 512.0x768.0 frame"),
    ]  # fmt: skip
    assert plan.rejects.columns == ["processid", "split", "stage", "reason", "detail"]
    assert sorted(plan.samples[ID].to_list()) == ["P1", "P6"]
