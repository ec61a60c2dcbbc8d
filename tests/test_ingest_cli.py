"""`bionas synth` + `bionas ingest` end to end, checked with plain tarfile/webdataset/polars."""

from __future__ import annotations

import gzip
import json
import shutil
import zipfile

import polars as pl
import pytest
import webdataset as wds
from ingest_helpers import ingest, read_samples, run_cli, shard_files

REASON_OF_KIND = {
    "missing_file": "missing_file",
    "truncated_jpeg": "corrupt_image",
    "not_an_image": "not_an_image",
    "bad_bbox": "bad_bbox",
    "duplicate_processid": "duplicate_processid",
    "empty_target": "empty_target",
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    run_cli("synth", out, "--n", 400, "--seed", 3, "--corrupt", 2, "--workers", 2)
    return out


@pytest.fixture(scope="module")
def dataset(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "ds"
    ingest(synth, out, "--min-class-count", 20, "--shard-size", 64, "--size", 64, "--workers", 2)
    return out


def _rejects(dataset):
    return pl.read_parquet(dataset / "rejects.parquet")


def test_every_corrupt_kind_is_rejected_with_its_reason_and_all_good_rows_land(synth, dataset):
    planted = json.loads((synth / "corruptions.json").read_text())
    rejects = _rejects(dataset)
    reason_of = {(r["processid"], r["reason"]) for r in rejects.iter_rows(named=True)}
    for kind, reason in REASON_OF_KIND.items():
        assert planted["corruptions"][kind], kind
        for pid in planted["corruptions"][kind]:
            assert (pid, reason) in reason_of, (kind, pid)
    for pid in planted["natural_empty_order"]:
        assert (pid, "empty_target") in reason_of
    metadata = pl.read_csv(synth / "metadata.csv", infer_schema=False)
    samples = read_samples(dataset)
    rejected_once = set(rejects["processid"]) - set(planted["corruptions"]["duplicate_processid"])
    expected = set(metadata["processid"]) - rejected_once
    assert set(samples) == expected  # every good row landed; a duplicate's first row too
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["rejects"]["total"] == rejects.height
    assert sum(s["samples"] for s in manifest["splits"].values()) == len(samples)


def test_real_world_variants_are_accepted(synth, dataset):
    planted = json.loads((synth / "corruptions.json").read_text())
    samples = read_samples(dataset)
    for kind, pids in planted["accepted_variants"].items():
        assert pids, kind
        for pid in pids:
            assert pid in samples, (kind, pid)
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["clipped_bboxes"] >= 1


def test_records_hold_raw_strings_and_no_barcode(synth, dataset):
    samples = read_samples(dataset)
    record = next(iter(samples.values()))["record"]
    assert isinstance(record["order"], str)
    assert "dna_barcode" not in record
    assert record["split"] in ("train", "val", "test")


def test_target_classes_below_the_threshold_fold_into_other(dataset):
    vocab = json.loads((dataset / "manifests" / "vocab_order.json").read_text())
    assert vocab["values"][0] == "<unk>" and vocab["values"][-1] == "Other"
    assert vocab["folded"] and all(n < 20 for n in vocab["folded"].values())
    assert all(n >= 20 for n in vocab["counts"][1:-1])
    assert vocab["counts"][-1] == sum(vocab["folded"].values())
    counts = json.loads((dataset / "manifest.json").read_text())["class_counts"]
    assert "Other" in counts["train"]


def test_random_split_follows_the_ratios(dataset):
    splits = {s["split"] for s in read_samples(dataset).values()}
    manifest = json.loads((dataset / "manifest.json").read_text())
    n = {k: v["samples"] for k, v in manifest["splits"].items()}
    total = sum(n.values())
    assert splits == {"train", "val", "test"}
    assert 0.6 < n["train"] / total < 0.8 and 0.12 < n["val"] / total < 0.28


def test_official_split_writes_the_split_column_values(synth, tmp_path):
    out = tmp_path / "official"
    ingest(synth, out, "--split-source", "official", "--splits", "train,val,test", "--size", 32,
           "--min-class-count", 5, "--workers", 1)  # fmt: skip
    metadata = pl.read_csv(synth / "metadata.csv", infer_schema=False)
    for pid, entry in read_samples(out).items():
        official = metadata.filter(pl.col("processid") == pid)["split"][0]
        assert entry["record"]["split"] == official == entry["split"]


def test_shards_are_byte_identical_whatever_the_worker_count_and_across_reruns(
    synth, dataset, tmp_path
):
    one = tmp_path / "one"
    ingest(synth, one, "--min-class-count", 20, "--shard-size", 64, "--size", 64, "--workers", 1)
    assert shard_files(one) == shard_files(dataset)
    assert (one / "manifest.json").read_text() == (dataset / "manifest.json").read_text()
    ingest(synth, one, "--min-class-count", 20, "--shard-size", 64, "--size", 64, "--workers", 1)
    assert shard_files(one) == shard_files(dataset)


def test_a_rerun_keeps_shards_only_when_nothing_that_decides_them_changed(synth, tmp_path):
    out = tmp_path / "ds"
    base = ["--min-class-count", 20, "--shard-size", 100, "--workers", 1, "--limit", 200]
    ingest(synth, out, *base, "--size", 32)
    shards = len(shard_files(out))
    assert f"kept {shards} shards" in ingest(synth, out, *base, "--size", 32).stdout
    # another output size (--overwrite: it replaces the dataset): every shard is redone
    assert "kept" not in ingest(synth, out, *base, "--size", 48, "--overwrite").stdout
    assert {min(image.size) for image, _ in _images_and_records(out)} == {48}
    # a label fixed in the metadata changes records: nothing is kept either
    edited = tmp_path / "metadata.csv"
    table = pl.read_csv(synth / "metadata.csv", infer_schema=False)
    table.with_columns(pl.col("country").replace("Canada", "Kanada")).write_csv(edited)
    result = run_cli("ingest", edited, "--images", synth / "images" / "original_full",
                     "--bbox", synth / "bbox.tsv", "--out", out, "--quiet", *base, "--size", 48,
                     "--overwrite")  # fmt: skip
    assert "kept" not in result.stdout
    assert "Kanada" in {record.get("country") for _, record in _images_and_records(out)}


def test_a_rerun_after_a_codec_upgrade_redoes_every_shard(synth, tmp_path, monkeypatch):
    """Another PIL/libjpeg would encode other bytes: keeping the old shards would mix two
    encoders' output in one dataset, no longer byte-identical to a clean run."""
    from bionas.ingest import execute

    out, base = tmp_path / "ds", ["--min-class-count", 20, "--workers", 1, "--limit", 120]
    ingest(synth, out, *base, "--size", 32)
    assert "kept" in ingest(synth, out, *base, "--size", 32).stdout
    upgraded = {**execute.codec_versions("none"), "libjpeg_turbo": "9.9.9"}
    monkeypatch.setattr(execute, "codec_versions", lambda compression: upgraded)
    assert "kept" not in ingest(synth, out, *base, "--size", 32).stdout


def _images_and_records(dataset):
    urls = [str(p) for p in sorted((dataset / "shards").glob("*/*.tar"))]
    return wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "json")


def test_samples_are_shuffled_across_and_within_shards(dataset):
    names = sorted((dataset / "shards" / "train").glob("*.tar"))
    assert len(names) >= 3
    keys = [k for k, e in read_samples(dataset).items() if e["split"] == "train"]
    assert keys != sorted(keys)


def test_shards_read_back_with_plain_webdataset(dataset):
    urls = [str(p) for p in sorted((dataset / "shards" / "train").glob("*.tar"))]
    pipeline = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "json")
    count = 0
    for image, record in pipeline:
        assert image.mode == "RGB" and min(image.size) == 64
        assert record["split"] == "train"
        count += 1
    assert (
        count == json.loads((dataset / "manifest.json").read_text())["splits"]["train"]["samples"]
    )


def test_zstd_shards_hold_the_same_tar_bytes(synth, dataset, tmp_path):
    out = tmp_path / "zstd"
    ingest(
        synth,
        out,
        "--min-class-count",
        20,
        "--shard-size",
        64,
        "--size",
        64,
        "--compression",
        "zstd",
    )
    assert all(name.endswith(".tar.zst") for name in shard_files(out))
    plain, packed = read_samples(dataset), read_samples(out)
    assert plain.keys() == packed.keys()
    assert all(
        plain[k]["jpg"] == packed[k]["jpg"] and plain[k]["record"] == packed[k]["record"]
        for k in plain
    )
    run_cli("inspect", out, "--verify")


def test_inspect_verify_catches_a_flipped_byte(dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    result = run_cli("inspect", copy, "--verify")
    assert "verified" in result.output
    shard = sorted((copy / "shards" / "val").glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = run_cli("inspect", copy, "--verify", ok=False)
    assert result.exit_code == 1
    assert shard.name in result.output


def test_a_folder_inside_a_dataset_points_to_the_dataset(dataset, tmp_path):
    result = run_cli("inspect", dataset / "shards" / "train", ok=False)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"{dataset.resolve()} is one: did you mean it?" in result.output
    result = run_cli("inspect", tmp_path, ok=False)  # no dataset above: how to make one
    assert "create one with `bionas ingest`" in result.output


def test_missing_column_is_named_with_the_file(synth, tmp_path):
    csv = tmp_path / "metadata.csv"
    pl.read_csv(synth / "metadata.csv", infer_schema=False).drop("order").write_csv(csv)
    result = run_cli(
        "ingest",
        csv,
        "--images",
        synth / "images" / "original_full",
        "--out",
        tmp_path / "x",
        ok=False,
    )
    assert result.exit_code != 0
    assert "order" in result.output and str(csv) in result.output
    assert "Traceback" not in result.output


def test_a_file_that_is_not_a_csv_is_refused_clearly(synth, tmp_path):
    bogus = tmp_path / "metadata.csv"
    bogus.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    result = run_cli(
        "ingest",
        bogus,
        "--images",
        synth / "images" / "original_full",
        "--out",
        tmp_path / "x",
        ok=False,
    )
    assert result.exit_code != 0 and "not a CSV" in result.output


def test_a_byte_order_mark_and_crlf_line_ends_are_read_as_plain_csv(synth, dataset, tmp_path):
    # what a spreadsheet's "CSV UTF-8" export writes; Polars drops the mark, and so must
    # the header check, or it reports processid missing
    raw = (synth / "metadata.csv").read_bytes()
    csv = tmp_path / "metadata.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + raw.replace(b"\n", b"\r\n"))
    args = ["--min-class-count", 20, "--shard-size", 64, "--size", 64, "--workers", 2]
    run_cli("ingest", csv, "--images", synth / "images" / "original_full",
            "--bbox", synth / "bbox.tsv", "--out", tmp_path / "ds", "--quiet", *args)  # fmt: skip
    assert shard_files(tmp_path / "ds") == shard_files(dataset)


@pytest.mark.parametrize("wrong", ["images", "images/original_full/train"])
def test_an_images_root_holding_none_of_the_images_stops_before_any_work(synth, tmp_path, wrong):
    # one level too high or too deep: every row would be a missing_file reject
    result = run_cli(
        "ingest", synth / "metadata.csv", "--images", synth / wrong, "--bbox",
        synth / "bbox.tsv", "--out", tmp_path / "x", "--quiet", ok=False,
    )  # fmt: skip
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "none of 200 images sampled" in result.output
    assert f"did you mean --images {synth / 'images' / 'original_full'}?" in result.output
    assert not (tmp_path / "x" / "shards").exists()


def test_bbox_with_an_already_cropped_image_package_is_refused(synth, tmp_path):
    # BIOSCAN's cropped_256 photos are cut to the box already: cropping them again with
    # the bbox table's boxes would silently keep a part of each specimen
    cropped = tmp_path / "images" / "cropped_256"
    cropped.parent.mkdir()
    cropped.symlink_to(synth / "images" / "original_full")
    args = ["ingest", synth / "metadata.csv", "--images", cropped, "--limit", 20, "--size", 32]
    result = run_cli(*args, "--bbox", synth / "bbox.tsv", "--out", tmp_path / "x", ok=False)
    assert result.exit_code != 0
    assert "cropped_256" in result.output and "--bbox" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x" / "shards").exists()
    run_cli(*args, "--out", tmp_path / "y")  # the same package without --bbox is fine
    assert shard_files(tmp_path / "y")


@pytest.mark.parametrize("kind", ["zip", "gzip"])
def test_a_compressed_metadata_file_says_to_decompress_it(synth, tmp_path, kind):
    packed = tmp_path / f"metadata.csv.{kind}"
    if kind == "zip":  # how BIOSCAN-5M's metadata is also distributed
        with zipfile.ZipFile(packed, "w") as archive:
            archive.write(synth / "metadata.csv", "metadata.csv")
    else:
        packed.write_bytes(gzip.compress((synth / "metadata.csv").read_bytes()))
    images = synth / "images" / "original_full"
    result = run_cli("ingest", packed, "--images", images, "--out", tmp_path / "x", ok=False)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert (
        f"{kind} " in result.output and f"{'un' if kind == 'zip' else 'gun'}zip it" in result.output
    )


def test_unsafe_processids_are_rejected(synth, tmp_path):
    metadata = pl.read_csv(synth / "metadata.csv", infer_schema=False)
    evil = metadata.head(2).with_columns(pl.Series("processid", ["../escape", "a.b"]))
    csv = tmp_path / "metadata.csv"
    pl.concat([metadata, evil]).write_csv(csv)
    out = tmp_path / "ds"
    run_cli(
        "ingest",
        csv,
        "--images",
        synth / "images" / "original_full",
        "--out",
        out,
        "--size",
        32,
        "--quiet",
    )
    reasons = dict(_rejects(out).select("processid", "reason").iter_rows())
    assert reasons["../escape"] == "unsafe_processid" and reasons["a.b"] == "unsafe_processid"


def test_malformed_bbox_cells_are_rejects_and_a_malformed_frame_size_is_ignored(synth, tmp_path):
    """Partly empty boxes, `nan`/`inf` coordinates: bad_bbox rejects (not a crash); a
    frame size of `nan` or 0: unknown, so the image's own size is used."""
    bbox = pl.read_csv(synth / "bbox.tsv", separator="\t", infer_schema=False)
    planted = set(json.loads((synth / "corruptions.json").read_text())["corruptions"]["bad_bbox"])
    good = [pid for pid in bbox["processid"] if pid not in planted][:5]
    edits = {  # processid -> {column: raw cell}
        good[0]: {"y1": ""},
        good[1]: {"x0": "nan"},
        good[2]: {"x1": "inf"},
        good[3]: {"width_original": "nan"},
        good[4]: {"height_original": "0"},
    }
    for pid, cells in edits.items():
        for column, value in cells.items():
            at = pl.col("processid") == pid
            bbox = bbox.with_columns(
                pl.when(at).then(pl.lit(value)).otherwise(pl.col(column)).alias(column)
            )
    bbox_file = tmp_path / "bbox.tsv"
    bbox.write_csv(bbox_file, separator="\t")
    out = tmp_path / "ds"
    run_cli("ingest", synth / "metadata.csv", "--images", synth / "images" / "original_full",
            "--bbox", bbox_file, "--out", out, "--size", 32, "--min-class-count", 20,
            "--quiet")  # fmt: skip
    rejects = {r["processid"]: r for r in _rejects(out).iter_rows(named=True)}
    for pid in good[:3]:
        assert rejects[pid]["reason"] == "bad_bbox", rejects.get(pid)
    assert "missing" in rejects[good[0]]["detail"] and "NaN" in rejects[good[1]]["detail"]
    landed = read_samples(out)
    assert good[3] in landed and good[4] in landed


def test_sigkill_mid_run_then_rerun_gives_identical_shards(synth, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [
        sys.executable, "-m", "bionas", "ingest", str(synth / "metadata.csv"),
        "--images", str(synth / "images" / "original_full"), "--bbox", str(synth / "bbox.tsv"),
        "--size", "48", "--shard-size", "8", "--workers", "1", "--quiet",
    ]  # fmt: skip
    reference = tmp_path / "reference"
    subprocess.run([*args, "--out", str(reference)], check=True, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen([*args, "--out", str(killed)], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    state = killed / ".state"
    deadline = time.monotonic() + 120
    while len(list(state.glob("*/*.json"))) < 3 and process.poll() is None:
        assert time.monotonic() < deadline, "ingest made no progress"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "manifest.json").exists(), "the run finished before it was killed"
    done_before = len(list(state.glob("*/*.json")))
    result = subprocess.run(
        [*args, "--out", str(killed)], check=True, capture_output=True, text=True
    )
    assert f"kept {done_before}" in result.stdout or f"kept {done_before - 1}" in result.stdout
    assert shard_files(killed) == shard_files(reference)
    assert (killed / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()
    assert not list((killed / "shards").glob("*/*.tmp"))


def test_a_rerun_redoes_a_shard_whose_bytes_changed_but_not_its_size(synth, tmp_path):
    # resume re-hashes every shard it keeps: size and recipe alone would keep this one
    out = tmp_path / "ds"
    args = ["--min-class-count", 20, "--shard-size", 50, "--size", 32, "--workers", 1,
            "--limit", 200]  # fmt: skip
    ingest(synth, out, *args)
    clean = shard_files(out)
    assert len(clean) >= 3
    shard = out / sorted(clean)[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = ingest(synth, out, *args)
    assert f"kept {len(clean) - 1} shards" in result.stdout
    assert shard_files(out) == clean
