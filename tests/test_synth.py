"""`bionas synth`: the official BIOSCAN-5M layout, planted corruptions, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from bionas.cli import main
from bionas.ingest.profiles import BBOX_COLUMNS, BIOSCAN_5M_COLUMNS
from bionas.ingest.synth import REJECT_KINDS, VARIANT_KINDS
from bionas.ingest.synth_bioscan_tree import ORDERS

OFFICIAL_COLUMNS = [
    "processid", "sampleid", "taxon", "phylum", "class", "order", "family", "subfamily",
    "genus", "species", "dna_bin", "dna_barcode", "country", "province_state", "coord-lat",
    "coord-lon", "image_measurement_value", "area_fraction", "scale_factor", "inferred_ranks",
    "split", "index_bioscan_1M_insect", "chunk",
]  # fmt: skip
SPLITS = {"pretrain", "train", "val", "test", "key_unseen", "val_unseen", "test_unseen",
          "other_heldout"}  # fmt: skip


def synth(out: Path, *args: object, ok: bool = True):
    result = CliRunner().invoke(main, ["synth", str(out), "--quiet", *map(str, args)])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def read_csv(folder: Path) -> pl.DataFrame:
    return pl.read_csv(folder / "metadata.csv", infer_schema=False)


def read_bbox(folder: Path) -> pl.DataFrame:
    return pl.read_csv(folder / "bbox.tsv", separator="\t", infer_schema=False)


def image_path(folder: Path, row: dict) -> Path:
    chunk = row["chunk"] or ""
    return folder / "images" / "original_full" / row["split"] / chunk / f"{row['processid']}.jpg"


def row_of(metadata: pl.DataFrame, pid: str) -> dict:
    return metadata.filter(pl.col("processid") == pid).row(0, named=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    synth(out, "--n", 300, "--seed", 5, "--corrupt", 1, "--workers", 2)
    return out


@pytest.fixture(scope="module")
def planted(data) -> dict:
    return json.loads((data / "corruptions.json").read_text())


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> pl.DataFrame:
    out = tmp_path_factory.mktemp("large")
    synth(out, "--n", 2000, "--no-images")
    return read_csv(out)


def test_metadata_has_the_23_official_columns_in_order(data):
    assert list(BIOSCAN_5M_COLUMNS) == OFFICIAL_COLUMNS
    header = (data / "metadata.csv").read_text().splitlines()[0]
    assert header.split(",") == OFFICIAL_COLUMNS
    assert (data / "bbox.tsv").read_text().splitlines()[0].split("\t") == list(BBOX_COLUMNS)


def test_every_row_not_planted_missing_has_its_image_at_the_official_path(data, planted):
    metadata = read_csv(data)
    missing = set(planted["corruptions"]["missing_file"])
    assert missing
    for row in metadata.iter_rows(named=True):
        assert image_path(data, row).exists() == (row["processid"] not in missing), row
    assert metadata["chunk"].null_count() > 0  # some rows use <split>/<processid>.jpg
    assert metadata["chunk"].drop_nulls().str.contains(r"^\d+$").all()
    assert set(metadata["split"]) <= SPLITS
    assert {"train", "val", "test"} <= set(metadata["split"])


def test_images_are_1024x768_rgb_jpegs_with_the_specimen_inside_its_bbox(data, planted):
    dark_orders = ["Diptera", "Hymenoptera", "Coleoptera", "Hemiptera", "Lepidoptera", "Araneae"]
    metadata = read_csv(data).filter(pl.col("order").is_in(dark_orders)).head(40)
    bbox = read_bbox(data)
    odd = {p for kinds in (planted["corruptions"], planted["accepted_variants"])
           for pids in kinds.values() for p in pids}  # fmt: skip
    checked = 0
    for row in metadata.filter(~pl.col("processid").is_in(list(odd))).iter_rows(named=True):
        with Image.open(image_path(data, row)) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (1024, 768))
            grey = np.asarray(image.convert("L"))
        box = bbox.filter(pl.col("processid") == row["processid"]).row(0, named=True)
        x0, y0, x1, y1 = (int(box[k]) for k in ("x0", "y0", "x1", "y1"))
        ys, xs = np.nonzero(grey < 110)  # these orders have dark parts; the well is lighter
        assert len(xs) > 0
        assert x0 - 12 <= xs.min() and xs.max() <= x1 + 12, row["processid"]
        assert y0 - 12 <= ys.min() and ys.max() <= y1 + 12, row["processid"]
        checked += 1
    assert checked > 20


def test_each_planted_corruption_is_on_disk_as_listed(data, planted):
    metadata, bbox = read_csv(data), read_bbox(data)
    kinds = planted["corruptions"]
    assert set(kinds) == set(REJECT_KINDS) and all(len(pids) == 1 for pids in kinds.values())
    everyone = [p for pids in kinds.values() for p in pids]
    assert len(set(everyone)) == len(everyone)  # distinct rows
    for pid in kinds["truncated_jpeg"]:
        data_bytes = image_path(data, row_of(metadata, pid)).read_bytes()
        assert data_bytes[:2] == b"\xff\xd8" and not data_bytes.endswith(b"\xff\xd9")
        with pytest.raises(OSError), Image.open(image_path(data, row_of(metadata, pid))) as im:
            im.load()
    for pid in kinds["not_an_image"]:
        with pytest.raises(OSError):
            Image.open(image_path(data, row_of(metadata, pid)))
    for pid in kinds["bad_bbox"]:
        b = bbox.filter(pl.col("processid") == pid).row(0, named=True)
        x0, y0, x1, y1 = (int(b[k]) for k in ("x0", "y0", "x1", "y1"))
        assert x1 <= x0 or y1 <= y0 or x0 >= 1024, b
        assert planted["bad_bbox_flavours"][pid] in ("x1<=x0", "zero_area", "outside_image")
    for pid in kinds["duplicate_processid"]:
        assert (metadata["processid"] == pid).sum() == 2
    assert metadata["processid"].is_duplicated().sum() == 2 * len(kinds["duplicate_processid"])
    for pid in kinds["empty_target"]:
        assert row_of(metadata, pid)["order"] is None
    assert planted["metadata_rows"] == metadata.height == 301


def test_natural_empty_order_rows_are_listed_apart_from_planted_ones(data, planted):
    metadata = read_csv(data)
    empty = set(metadata.filter(pl.col("order").is_null())["processid"])
    natural = set(planted["natural_empty_order"])
    assert natural  # at least one whenever n >= 300
    assert empty == natural | set(planted["corruptions"]["empty_target"])
    assert not natural & set(planted["corruptions"]["empty_target"])


def test_real_world_variants_decode_to_the_upright_photo(data, planted):
    metadata, bbox = read_csv(data), read_bbox(data)
    variants = planted["accepted_variants"]
    assert set(variants) == set(VARIANT_KINDS) and all(variants.values())
    expected = {"png_named_jpg": ("PNG", "RGB"), "grayscale_jpeg": ("JPEG", "L"),
                "cmyk_jpeg": ("JPEG", "CMYK"), "exif_orientation_6": ("JPEG", "RGB")}  # fmt: skip
    for kind, (fmt, mode) in expected.items():
        path = image_path(data, row_of(metadata, variants[kind][0]))
        assert path.suffix == ".jpg"
        with Image.open(path) as image:
            assert (image.format, image.mode) == (fmt, mode)
            assert ImageOps.exif_transpose(image).size == (1024, 768)
            if kind == "exif_orientation_6":
                assert image.size == (768, 1024) and image.getexif()[0x0112] == 6
    outside = bbox.filter(pl.col("processid") == variants["bbox_partly_outside"][0]).row(0)
    assert int(outside[3]) < 0 < int(outside[5])  # x0 beyond the left edge, x1 inside
    assert variants["no_bbox_row"][0] not in set(bbox["processid"])


def test_corruptions_never_take_every_row_of_an_order(tmp_path):
    synth(tmp_path, "--n", 250, "--corrupt", 4, "--no-images")
    metadata = read_csv(tmp_path)
    planted = json.loads((tmp_path / "corruptions.json").read_text())
    bad = {p for pids in planted["corruptions"].values() for p in pids}
    by_order = metadata.filter(pl.col("order").is_not_null()).group_by("order").agg("processid")
    for order, pids in by_order.iter_rows():
        assert set(pids) - bad, order


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    synth(one, "--n", 80, "--seed", 7, "--workers", 1)
    synth(two, "--n", 80, "--seed", 7, "--workers", 2)
    for name in ("metadata.csv", "bbox.tsv", "corruptions.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    files = sorted(p.relative_to(one) for p in (one / "images").rglob("*.jpg"))
    assert len(files) == 80
    assert files == sorted(p.relative_to(two) for p in (two / "images").rglob("*.jpg"))
    for rel in files:
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel


def test_another_seed_gives_other_data(tmp_path):
    synth(tmp_path / "a", "--n", 300, "--seed", 1, "--no-images")
    synth(tmp_path / "b", "--n", 300, "--seed", 2, "--no-images")
    a, b = read_csv(tmp_path / "a"), read_csv(tmp_path / "b")
    assert (tmp_path / "a" / "metadata.csv").read_bytes() != (
        tmp_path / "b" / "metadata.csv"
    ).read_bytes()
    assert (a["dna_barcode"] != b["dna_barcode"]).all()


def test_no_images_writes_only_the_tables(tmp_path):
    result = synth(tmp_path, "--n", 300, "--no-images")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bbox.tsv",
        "corruptions.json",
        "metadata.csv",
    ]
    assert "300 specimens" in result.output


def test_orders_are_long_tailed_with_arachnids_and_springtails(large):
    counts = dict(large.group_by("order").len().drop_nulls("order").iter_rows())
    assert 0.65 < counts["Diptera"] / large.height < 0.77  # 71.6% of labelled rows
    assert sum(1 for n in counts.values() if n < 20) >= 5  # below any --min-class-count
    assert {"Insecta", "Arachnida", "Collembola"} <= set(large["class"].drop_nulls())
    assert set(large["phylum"]) == {"Arthropoda"}
    assert large["order"].null_count() >= 1


def test_order_table_fits_the_papers_figures_at_full_size():
    """Expected labelled records per order at n = 5,150,850 (no sampling: the table itself)."""
    total = sum(c for *_, c in ORDERS)
    records = {o: c * 5_150_850 * 0.997 / total for o, _, c in ORDERS}  # 99.7% have an order
    assert len(records) == len(ORDERS) == 55 and len({c for _, c, _ in ORDERS}) == 10  # SPEC 3
    kept = sorted((n for n in records.values() if n >= 500), reverse=True)
    folded = [n for n in records.values() if n < 500]
    assert len(kept) == 21  # the paper's 21 classes besides Other
    assert kept[-1] > 800 and max(folded) < 300  # far from 500: sampling cannot move an order
    assert abs(records["Diptera"] - 3_675_700) < 2_000  # 2,573,047 train / 0.7
    assert abs(records["Hymenoptera"] - 574_045) < 1_000  # 114,809 val / 0.2
    assert 4_000 < records["Mesostigmata"] < 5_500  # 937 val / 0.2
    assert records["Mesostigmata"] <= kept[-6]  # "among the least represented" kept orders
    assert 200 < records["Anomopoda"] < 270  # 164 train / 0.7
    assert sum(n < 10 for n in records.values()) >= 5 and min(records.values()) >= 5


def test_deep_ranks_are_sparse_as_in_the_release(large):
    filled = {c: large[c].is_not_null().mean() for c in ("family", "subfamily", "genus", "species")}
    assert filled["family"] > 0.9 and 0.2 < filled["subfamily"] < 0.37
    assert 0.17 < filled["genus"] < 0.3 and 0.05 < filled["species"] < 0.14
    # the official non-pretrain splits are exactly the species-labelled records
    assert (large["species"].is_not_null() == (large["split"] != "pretrain")).all()


def test_a_dna_bin_is_one_species_like_cluster_with_one_order_and_family(large):
    bins = large.filter(pl.col("dna_bin").is_not_null() & pl.col("family").is_not_null())
    assert bins["dna_bin"].str.contains(r"^BOLD:[A-Z]{3}\d{4}$").all()
    per_bin = bins.group_by("dna_bin").agg(pl.col("order", "family").n_unique())
    assert (per_bin["order"] == 1).all() and (per_bin["family"] == 1).all()
    assert per_bin.height < bins.height  # bins are shared
    lengths = large["dna_barcode"].str.len_bytes()
    assert lengths.min() >= 658 and lengths.max() <= 660
    assert large["dna_barcode"].str.contains(r"^[ACGTN]+$").all()
    assert large["processid"].str.contains(r"^[A-Z]+\d+-[A-H]\d\d$").all()
    assert large["processid"].n_unique() == large.height


def test_bbox_and_size_columns_agree(large, tmp_path):
    synth(tmp_path, "--n", 2000, "--no-images")
    bbox = read_bbox(tmp_path).with_columns(pl.col("x0", "y0", "x1", "y1").cast(pl.Int64))
    joined = bbox.join(large, on="processid", suffix="_csv")
    assert joined.height == bbox.height == 1999  # one row is left without a bbox on purpose
    assert (joined["area_fraction"] == joined["area_fraction_csv"]).all()
    width = (bbox["x1"] - bbox["x0"]) / 1024
    assert width.min() > 0.1 and width.max() < 0.8  # about 15-60% of the frame
    assert (bbox["width_original"] == "1024").all() and (bbox["height_original"] == "768").all()


def test_user_errors_are_clean_messages(tmp_path):
    result = synth(tmp_path / "small", "--n", 30, "--corrupt", 10, ok=False)
    assert result.exit_code != 0 and "--corrupt 10" in result.output
    synth(tmp_path / "again", "--n", 20, "--no-images")
    result = synth(tmp_path / "again", "--n", 20, "--no-images", ok=False)
    assert result.exit_code != 0 and "--overwrite" in result.output
    synth(tmp_path / "again", "--n", 20, "--no-images", "--overwrite")
    result = synth(tmp_path / "p", "--profile", "nope", ok=False)
    assert result.exit_code != 0 and "bioscan-5m" in result.output


def test_metadata_does_not_depend_on_whether_images_are_drawn(data, tmp_path):
    synth(tmp_path, "--n", 300, "--seed", 5, "--corrupt", 1, "--no-images")
    for name in ("metadata.csv", "bbox.tsv"):
        assert (tmp_path / name).read_bytes() == (data / name).read_bytes(), name


def test_rows_written_in_several_chunks_stay_unique(tmp_path, monkeypatch):
    monkeypatch.setattr("bionas.ingest.synth.CHUNK_ROWS", 100)
    synth(tmp_path, "--n", 350, "--corrupt", 1, "--no-images")
    metadata = read_csv(tmp_path)
    assert metadata.height == 351 and metadata["processid"].n_unique() == 350
    specimens = metadata.unique("processid", keep="first")  # the planted duplicate is a copy
    index = specimens["index_bioscan_1M_insect"].drop_nulls()
    assert index.n_unique() == index.len() > 0
    assert read_bbox(tmp_path)["processid"].n_unique() == 349  # one row has no bbox on purpose
