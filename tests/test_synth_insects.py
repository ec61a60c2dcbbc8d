"""`bionas synth --profile insects-1m`: the Insects-1M layout, its long tail, and ingest on it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
import pytest
from ingest_helpers import read_samples, run_cli
from PIL import Image

from bionas.ingest.profiles import INSECTS_1M, INSECTS_1M_COLUMNS
from bionas.ingest.synth_bioscan_tree import ORDERS as BIOSCAN_ORDERS
from bionas.ingest.synth_insects import ORDERS

OPTIONAL_RANKS = ("suborder", "superfamily", "subfamily", "tribe", "subtribe")
ONLY_IN_INSECTS_1M = {"Solifugae", "Amblypygi", "Thelyphonida", "Grylloblattodea",
                      "Mantophasmatodea"}  # fmt: skip


def synth(out: Path, *args: object):
    return run_cli("synth", out, "--profile", "insects-1m", "--quiet", *args)


def read_csv(folder: Path) -> pl.DataFrame:
    return pl.read_csv(folder / "metadata.csv", infer_schema=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("i1m") / "data"
    synth(out, "--n", 240, "--seed", 4, "--workers", 2)
    return out


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> pl.DataFrame:
    out = tmp_path_factory.mktemp("i1m-table")
    synth(out, "--n", 3000, "--no-images")
    return read_csv(out)


def test_metadata_has_the_profile_columns_and_each_file_name_is_an_image(data):
    metadata = read_csv(data)
    assert metadata.columns == list(INSECTS_1M_COLUMNS) == [
        "image_id", "file_name", "class", "order", "suborder", "superfamily", "family",
        "subfamily", "tribe", "subtribe", "genus", "species",
    ]  # fmt: skip
    assert metadata.height == metadata["image_id"].n_unique() == 240
    assert (metadata["file_name"] == metadata["order"] + "/" + metadata["image_id"] + ".jpg").all()
    assert INSECTS_1M.image_path == "{file_name}"  # relative to --images OUT/images
    files = sorted(str(p.relative_to(data / "images")) for p in (data / "images").rglob("*.jpg"))
    assert files == sorted(metadata["file_name"])
    for name in metadata["file_name"].head(20):
        with Image.open(data / "images" / name) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (512, 384))


def test_orders_are_long_tailed_with_spiders_and_other_arachnids(table):
    counts = dict(table.group_by("order").len().iter_rows())
    assert len(counts) == len(ORDERS)  # every order keeps an image once n >= 2 per order
    assert sum(1 for n in counts.values() if n < 20) >= 20
    assert max(counts, key=counts.get) == "Lepidoptera"
    arachnids = table.filter(pl.col("class") == "Arachnida")
    assert {"Araneae", "Scorpiones", "Solifugae"} <= set(arachnids["order"])
    assert table["order"].null_count() == table["class"].null_count() == 0


def test_orders_overlap_synthetic_bioscan_only_in_part():
    ours, bioscan = {o for o, *_ in ORDERS}, {o for o, *_ in BIOSCAN_ORDERS}
    shared = {"Diptera", "Hymenoptera", "Coleoptera", "Lepidoptera", "Hemiptera", "Araneae"}
    assert shared <= ours & bioscan
    assert ONLY_IN_INSECTS_1M.issubset(ours - bioscan)
    assert {"Poduromorpha", "Trombidiformes"} <= ours & bioscan  # folded on one side or both
    assert bioscan - ours  # e.g. Neelipleona, Acerentomata


def test_deep_ranks_are_optional_and_nested(table):
    for rank in OPTIONAL_RANKS:
        filled = table[rank].is_not_null().mean()
        assert 0.05 < filled < 0.8, (rank, filled)
    assert table["family"].null_count() == 0
    assert 0.95 < table["species"].is_not_null().mean() < 1.0  # a few identified to genus only
    for child, parent in (("species", "genus"), ("genus", "family"), ("subtribe", "tribe"),
                          ("tribe", "subfamily"), ("subfamily", "family"), ("family", "order"),
                          ("superfamily", "order"), ("suborder", "order")):  # fmt: skip
        per = (
            table.filter(pl.col(child).is_not_null()).group_by(child).agg(pl.col(parent).n_unique())
        )
        assert (per[parent] == 1).all(), (child, parent)
    lineage = table.filter(pl.col("tribe").is_not_null())
    assert lineage["subfamily"].null_count() == 0  # no tribe without a subfamily
    assert (
        table["subfamily"].str.ends_with("inae").all() and table["tribe"].str.ends_with("ini").all()
    )


def test_full_size_table_has_the_papers_39_classes(tmp_path):
    # how fast it is made is a benchmark's business (about 4 s on 2 cores), not a test's
    synth(tmp_path / "big", "--n", 1_017_036, "--no-images")
    metadata = pl.read_csv(tmp_path / "big" / "metadata.csv", columns=["order", "species"])
    counts = dict(metadata.group_by("order").len().iter_rows())
    assert counts == {o: n for o, _, n, _ in ORDERS}  # allotted exactly
    assert (
        sum(n >= 500 for n in counts.values()) == 38 and sum(n < 500 for n in counts.values()) == 16
    )
    assert metadata["species"].drop_nulls().n_unique() == 34_212
    result = run_cli("vocab", tmp_path / "big" / "metadata.csv", "--profile", "insects-1m",
                     "--field", "class", "--out", tmp_path / "vocab")  # fmt: skip
    vocab = json.loads((tmp_path / "vocab" / "vocab_order.json").read_text())
    assert len(vocab["values"]) - 1 == 39 and vocab["values"][-1] == "Other"
    assert vocab["folded"]["Sarcoptiformes"] == 499 and "Mesostigmata" in vocab["values"]
    assert "39 classes" in result.output


def test_same_seed_same_bytes_whatever_the_workers_and_another_seed_differs(tmp_path):
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    synth(one, "--n", 70, "--seed", 9, "--workers", 1)
    synth(two, "--n", 70, "--seed", 9, "--workers", 2)
    synth(other, "--n", 70, "--seed", 10, "--no-images")
    assert (one / "metadata.csv").read_bytes() == (two / "metadata.csv").read_bytes()
    assert (one / "metadata.csv").read_bytes() != (other / "metadata.csv").read_bytes()
    for name in read_csv(one)["file_name"]:
        assert (one / "images" / name).read_bytes() == (two / "images" / name).read_bytes()


def test_corrupt_and_rewrites_are_clean_errors(tmp_path):
    result = run_cli("synth", tmp_path, "--profile", "insects-1m", "--corrupt", 1, ok=False)
    assert result.exit_code == 1 and "bioscan-5m" in result.output
    synth(tmp_path / "x", "--n", 10, "--no-images")
    result = run_cli("synth", tmp_path / "x", "--profile", "insects-1m", "--n", 10, ok=False)
    assert result.exit_code == 1 and "--overwrite" in result.output
    synth(tmp_path / "x", "--n", 10, "--no-images", "--overwrite")


def test_ingest_with_the_insects_1m_profile_end_to_end(data, tmp_path):
    out = tmp_path / "ds"
    result = run_cli(
        "ingest", data / "metadata.csv", "--images", data / "images", "--out", out,
        "--profile", "insects-1m", "--split-source", "random", "--size", 48,
        "--min-class-count", 5, "--workers", 2, "--quiet",
    )  # fmt: skip
    assert "rejected 0 rows" in result.output
    metadata = read_csv(data)
    samples = read_samples(out)
    assert set(samples) == set(metadata["image_id"])  # the image_id is the sample key
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["profile"] == "insects-1m" and manifest["target"] == "order"
    assert manifest["categorical_fields"] == list(INSECTS_1M_COLUMNS[2:])  # no dna_bin
    assert {s: manifest["splits"][s]["samples"] for s in manifest["splits"]} == {
        s: sum(1 for v in samples.values() if v["split"] == s) for s in ("test", "train", "val")
    }
    row = metadata.row(0, named=True)
    record = samples[row["image_id"]]["record"]
    assert {rank: record[rank] for rank in INSECTS_1M_COLUMNS[2:]} == {
        rank: row[rank] for rank in INSECTS_1M_COLUMNS[2:]
    }  # raw strings, None for an empty rank
    with Image.open(io.BytesIO(samples[row["image_id"]]["jpg"])) as image:
        assert min(image.size) == 48  # the whole photo: no bbox table
    vocab = json.loads((out / "manifests" / "vocab_order.json").read_text())
    assert vocab["values"][-1] == "Other" and vocab["min_count"] == 5
