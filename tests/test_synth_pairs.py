"""`bionas synth --task pairs`: 4 balanced classes told apart only by the angle of a dot pair."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage

from bionas.cli import main

CLASS_ANGLES = {"pair_000": 0.0, "pair_030": 30.0, "pair_060": 60.0, "pair_090": 90.0}
# An independent statement of the geometry: a 512 px square bbox, dot centres 0.3 of it
# apart (+-5%), at the class's angle +-6 degrees. Ingest crops the box plus 10% on each
# side (614.4 px) to 64 px, so the centres are 153.6 / 614.4 * 64 = 16 px apart there.
CROP_DISTANCE = 16.0
N = 120


def run(*args: object):
    result = CliRunner().invoke(main, [*map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def synth(out: Path, *args: object):
    return run("synth", out, "--task", "pairs", "--quiet", *args)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pairs") / "data"
    synth(out, "--n", N, "--seed", 4, "--workers", 1)
    return out


@pytest.fixture(scope="module")
def dataset(pairs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pairs-ds") / "ds"
    run("ingest", pairs / "metadata.csv", "--images", pairs / "images" / "original_full",
        "--bbox", pairs / "bbox.tsv", "--size", 64, "--min-class-count", 1, "--workers", 1,
        "--out", out)  # fmt: skip
    return out


def crops(dataset: Path) -> list[tuple[str, np.ndarray]]:
    """(order, grey pixels) of every ingested sample, read back with tarfile and PIL."""
    samples = []
    for shard in sorted((dataset / "shards").rglob("*.tar")):
        with tarfile.open(shard) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(n for n in files if n.endswith(".json")):
            order = json.loads(files[name])["order"]
            jpg = Image.open(io.BytesIO(files[name.removesuffix(".json") + ".jpg"]))
            samples.append((order, np.asarray(jpg.convert("L"), np.float64)))
    return samples


def dark_blobs(grey: np.ndarray) -> list[tuple[float, float]]:
    """(x, y) darkness-weighted centres of the connected regions far darker than the floor."""
    floor = np.median(grey)
    darkness = np.clip(floor - grey, 0, None)
    labels, count = ndimage.label(darkness > 0.5 * darkness.max())
    centres = ndimage.center_of_mass(darkness, labels, range(1, count + 1))
    return [(x, y) for y, x in centres]


def test_ingest_finds_exactly_the_four_pair_classes_balanced(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    totals: dict[str, int] = {}
    for counts in manifest["class_counts"].values():
        for name, count in counts.items():
            totals[name] = totals.get(name, 0) + count
    assert set(totals) == set(CLASS_ANGLES)
    assert sum(totals.values()) == N  # nothing rejected
    assert max(totals.values()) - min(totals.values()) <= 1  # a shuffled round-robin


def test_each_crop_shows_two_dots_at_the_angle_and_distance_of_its_class(dataset):
    samples = crops(dataset)
    assert len(samples) == N
    for order, grey in samples:
        blobs = dark_blobs(grey)
        assert len(blobs) == 2, order
        (xa, ya), (xb, yb) = blobs
        assert all(4 <= v <= 59 for v in (xa, ya, xb, yb))  # well inside the 64x64 crop
        distance = math.hypot(xb - xa, yb - ya)
        assert CROP_DISTANCE * 0.95 - 1 < distance < CROP_DISTANCE * 1.05 + 1, order
        angle = math.degrees(math.atan2(-(yb - ya), xb - xa)) % 180  # y points down
        off = abs((angle - CLASS_ANGLES[order] + 90) % 180 - 90)  # a pair has no direction
        assert off < 6 + 4, (order, angle)  # the jitter plus the centroids' error at 64 px


def test_dna_bin_and_ranks_say_nothing_about_the_class(tmp_path):
    synth(tmp_path, "--n", 1000, "--seed", 2, "--no-images")
    metadata = pl.read_csv(tmp_path / "metadata.csv", infer_schema=False)
    assert set(metadata["class"]) == {"Insecta"}
    for rank in ("family", "subfamily", "genus", "species"):
        assert metadata[rank].null_count() == metadata.height, rank
    bins = metadata.filter(pl.col("dna_bin").is_not_null())
    per_class = bins.group_by("dna_bin", "order").len()
    per_bin = per_class.group_by("dna_bin").agg(
        rows=pl.col("len").sum(), classes=pl.len(), top=pl.col("len").max()
    )
    shared = per_bin.filter(pl.col("rows") >= 5)
    assert shared.height >= 10  # BINs repeat, as in the release
    assert shared["classes"].min() >= 2  # no repeated BIN belongs to one class
    assert per_bin["classes"].max() == 4
    # predicting the class by the BIN's most frequent class is near chance (0.25), not 1.0
    assert shared["top"].sum() / shared["rows"].sum() < 0.5


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(pairs, tmp_path):
    synth(tmp_path, "--n", N, "--seed", 4, "--workers", 2)
    files = sorted(p.relative_to(pairs) for p in pairs.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".jpg"]) == N
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for rel in files:
        assert (pairs / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_another_seed_places_other_pairs(pairs, tmp_path):
    synth(tmp_path, "--n", N, "--seed", 5, "--no-images")
    for name in ("metadata.csv", "bbox.tsv"):
        assert (pairs / name).read_bytes() != (tmp_path / name).read_bytes(), name
    ours = pl.read_csv(pairs / "metadata.csv", infer_schema=False)["order"]
    theirs = pl.read_csv(tmp_path / "metadata.csv", infer_schema=False)["order"]
    assert (ours != theirs).any()


def test_rows_written_in_several_chunks_stay_unique_and_balanced(tmp_path, monkeypatch):
    monkeypatch.setattr("bionas.ingest.synth.CHUNK_ROWS", 100)
    synth(tmp_path, "--n", 350, "--no-images")
    metadata = pl.read_csv(tmp_path / "metadata.csv", infer_schema=False)
    assert metadata.height == 350 and metadata["processid"].n_unique() == 350
    counts = metadata["order"].value_counts()["count"]
    assert set(metadata["order"]) == set(CLASS_ANGLES) and counts.max() - counts.min() <= 4
    index = metadata["index_bioscan_1M_insect"].drop_nulls()
    assert index.n_unique() == index.len() > 0


def test_pairs_needs_the_bioscan_layout_and_plants_no_corruptions(tmp_path):
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "a"), "--task", "pairs",
                                       "--profile", "insects-1m"])  # fmt: skip
    assert result.exit_code != 0 and "--task pairs" in result.output
    assert "insects-1m" in result.output
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "b"), "--task", "pairs",
                                       "--corrupt", "1"])  # fmt: skip
    assert result.exit_code != 0 and "--corrupt" in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_help_says_what_pairs_is_for():
    text = " ".join(run("synth", "--help").output.split())
    assert "--task [orders|pairs]" in text and "architecture search" in text
