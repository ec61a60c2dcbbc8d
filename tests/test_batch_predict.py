"""Batch prediction end to end: `bionas synth --corrupt` -> ingest -> a tiny trained run ->
`bionas predict --metadata` and `--dataset`, read back with plain Polars, json and numpy."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import polars as pl
import pytest
from ingest_helpers import ingest, run_cli

pytestmark = pytest.mark.usefixtures("torch_single_thread_module")
TRAIN = ["--device", "cpu", "--image-size", "32", "--cells", "3", "--channels", "4",
         "--batch-size", "8", "--workers", "0", "--max-steps", "8", "--genotype", "manual",
         "--seed", "0", "--quiet"]  # fmt: skip
K = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory, torch_single_thread_module):
    """synth (one bad input of each kind) -> ingest -> a fixed network trained 8 steps."""
    root = tmp_path_factory.mktemp("batch_predict")
    synth, dataset, run = root / "synth", root / "ds", root / "run"
    run_cli("synth", synth, "--n", 200, "--seed", 3, "--corrupt", 1, "--workers", 2, "--quiet")
    ingest(synth, dataset, "--size", 48, "--min-class-count", 1, "--workers", 2)
    run_cli("train", dataset, "--out", run, *TRAIN)
    return synth, dataset, run


def predict(run, *args, ok=True):
    return run_cli("predict", run, *args, "--top-k", K, "--quiet", ok=ok)


def predict_table(world, out, *extra, table=None):
    synth, _, run = world
    table = table or synth / "metadata.csv"
    result = predict(run, "--metadata", table, "--images", synth / "images" / "original_full",
                     "--bbox", synth / "bbox.tsv", "--out", out, *extra)  # fmt: skip
    return pl.read_parquet(out) if out.suffix == ".parquet" else pl.read_csv(out), result


@pytest.fixture(scope="module")
def table_predictions(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "predictions.csv"
    return predict_table(world, out, "--workers", 2, "--batch-size", 16)


def test_every_row_is_in_input_order_and_bad_rows_carry_their_reason(world, table_predictions):
    synth, _, _ = world
    frame, result = table_predictions
    metadata = pl.read_csv(synth / "metadata.csv", infer_schema=False)
    assert frame["processid"].to_list() == metadata["processid"].to_list()
    planted = json.loads((synth / "corruptions.json").read_text())["corruptions"]
    expected = {planted["missing_file"][0]: "missing_file",
                planted["truncated_jpeg"][0]: "corrupt_image",
                planted["not_an_image"][0]: "not_an_image",
                planted["bad_bbox"][0]: "bad_bbox"}  # fmt: skip
    bad = frame.filter(pl.col("status") != "ok")
    assert dict(zip(bad["processid"], bad["status"], strict=True)) == expected
    assert bad["detail"].null_count() == 0 and bad["top1"].null_count() == len(bad)
    assert bad["low_confidence"].null_count() == len(bad)
    good = frame.filter(pl.col("status") == "ok")  # an empty order or a duplicate id is no reason
    assert len(good) == metadata.height - len(expected)
    assert good.select(pl.col("^top.*$").null_count()).sum_horizontal().item() == 0
    probs = good.select(f"top{j}_prob" for j in range(1, K + 1)).to_numpy()
    assert (np.diff(probs, axis=1) <= 0).all() and (probs.sum(axis=1) <= 1 + 1e-5).all()
    summary = result.stderr
    assert f"predicted {metadata.height} rows" in summary
    for reason in expected.values():
        assert f"  {reason:<24} {1:>8,}" in summary
    low = int(good["low_confidence"].sum())
    assert f"  {'low confidence':<24} {low:>8,}" in summary
    assert (good["low_confidence"] == (good["top1_prob"] < 0.5)).all()


def test_a_photo_gets_the_same_input_as_when_ingested_then_evaluated(
    world, table_predictions, tmp_path
):
    from bionas.manifests.manifest import load_manifest
    from bionas.trainer.data import shard_refs
    from bionas.trainer.encoding import Encoding
    from bionas.trainer.run import load_trained
    from bionas.trainer.split_predictions import predict_split

    _, dataset, run = world
    table, _ = table_predictions
    trained = load_trained(run)
    encoding = Encoding(trained.vocabs[trained.target],
                        tuple(trained.vocabs[f] for f in trained.meta_fields))  # fmt: skip
    compared = 0
    for split in load_manifest(dataset).splits:
        out = tmp_path / f"{split}.parquet"
        predict(run, "--dataset", dataset, "--split", split, "--out", out, "--workers", 2)
        shards = pl.read_parquet(out)
        # evaluation's own path (`bionas evaluate`) gives the same classes and probabilities
        evaluated = predict_split({"m": trained.model}, shard_refs(load_manifest(dataset), split),
                                  encoding, trained.image_size, batch_size=7)["m"]  # fmt: skip
        by_id = dict(zip(evaluated.processids, evaluated.probs, strict=True))
        assert sorted(shards["processid"]) == sorted(by_id)
        for pid, top1, p1 in shards.select("processid", "top1", "top1_prob").iter_rows():
            assert trained.class_names[int(np.argmax(by_id[pid]))] == top1
            assert by_id[pid].max() == pytest.approx(p1, abs=1e-5)
        # ... and the raw table's rows (cropped here from the 1024x768 photos) the same
        joined = shards.join(table.unique("processid", keep="first"), on="processid")
        assert len(joined) == len(shards) and (joined["status_right"] == "ok").all()
        for j in range(1, K + 1):
            assert (joined[f"top{j}"] == joined[f"top{j}_right"]).all()
            gap = (joined[f"top{j}_prob"] - joined[f"top{j}_prob_right"]).abs().max()
            assert gap < 1e-5, f"{split}: top{j}_prob differs by {gap}"
        compared += len(joined)
    manifest = load_manifest(dataset)
    assert compared == sum(s["samples"] for n in manifest.splits for s in manifest.shards(n)) > 150


def test_metadata_values_the_run_never_saw_are_flagged_unknown(world, table_predictions):
    synth, _, run = world
    frame, _ = table_predictions
    metadata = pl.read_csv(synth / "metadata.csv", infer_schema=False)
    fields = json.loads((run / "config.json").read_text())["meta_fields"]
    assert fields and all(f"{f}_known" in frame.columns for f in fields)
    for field in fields:
        vocab = json.loads((run / "vocabs" / f"vocab_{field}.json").read_text())
        known = set(vocab["values"][1:])
        values = metadata[field].to_list()
        assert frame[field].fill_null("").to_list() == values
        assert frame[f"{field}_known"].to_list() == [v in known for v in values]
    assert not frame["dna_bin_known"].all()  # dna_bins of val/test rows the train split lacks


def test_csv_and_parquet_hold_the_same_table(world, table_predictions, tmp_path):
    csv, _ = table_predictions
    parquet, _ = predict_table(world, tmp_path / "p.parquet", "--workers", 0, "--batch-size", 5)
    assert parquet.columns == csv.columns
    assert parquet["top1_prob"].dtype == pl.Float32 and parquet["dna_bin_known"].dtype == pl.Boolean
    for name in parquet.columns:
        a, b = parquet[name], csv[name]
        if a.dtype.is_float():
            assert ((a - b).abs().fill_null(0) < 1e-6).all(), name
        else:
            assert a.cast(pl.String).to_list() == b.cast(pl.String).to_list(), name


def test_hostile_rows_are_refused_without_reading_or_hanging(world, tmp_path):
    synth, _, _ = world
    images = synth / "images" / "original_full"
    metadata = pl.read_csv(synth / "metadata.csv", infer_schema=False).head(6)
    outside = tmp_path / "outside"
    outside.mkdir()
    first = metadata.row(0, named=True)
    shutil.copy(images / first["split"] / first["chunk"] / f"{first['processid']}.jpg",
                outside / "X-1.jpg")  # fmt: skip
    fifo = images / "pretrain" / "fifo"
    fifo.mkdir(exist_ok=True)
    if not (fifo / "X-2.jpg").exists():
        os.mkfifo(fifo / "X-2.jpg")  # opening it would block forever
    escape = os.path.relpath(outside, images / "pretrain")
    hostile = metadata.with_columns(
        pl.Series("processid", ["X-1", "X-2", "../X-3", *metadata["processid"][3:]]),
        pl.Series("split", ["pretrain"] * 3 + metadata["split"][3:].to_list()),
        pl.Series("chunk", [escape, "fifo", "1", *metadata["chunk"][3:]]),
    )
    table = tmp_path / "hostile.csv"
    lines = hostile.write_csv().splitlines()
    lines[5] += ",an extra field"  # data row 5: ragged
    table.write_text("\n".join(lines) + "\n")
    frame, result = predict_table(world, tmp_path / "hostile.csv.out.csv", table=table)
    assert frame["status"].to_list()[:5] == [
        "unsafe_path", "unsafe_path", "unsafe_processid", "ok", "ragged_row"
    ]  # fmt: skip
    assert "not inside" in frame["detail"][0] and "FIFO" in frame["detail"][1]
    assert "an extra field" not in result.output and "Traceback" not in result.output


def test_calibration_sets_the_probabilities_and_the_low_confidence_threshold(world, tmp_path):
    synth, _, run = world
    calibrated = tmp_path / "run"
    shutil.copytree(run, calibrated)
    (calibrated / "calibration.json").write_text(json.dumps(
        {"schema": "bionas.calibration/1", "temperature": 0.25, "low_confidence_threshold": 0.3}
    ))  # fmt: skip
    first = pl.read_csv(synth / "metadata.csv", infer_schema=False).row(0, named=True)
    photo = (
        synth
        / "images/original_full"
        / first["split"]
        / first["chunk"]
        / f"{first['processid']}.jpg"
    )
    plain = json.loads(predict(run, photo).stdout)["predictions"][0]["top_k"]
    sharp = json.loads(predict(calibrated, photo).stdout)["predictions"][0]["top_k"]
    assert [t["class"] for t in plain] == [t["class"] for t in sharp]
    assert [t["probability"] for t in plain] == pytest.approx([t["probability"] for t in sharp])
    assert all(t["calibrated_probability"] == pytest.approx(t["probability"]) for t in plain)
    assert sharp[0]["calibrated_probability"] > sharp[0]["probability"]  # T < 1 sharpens

    frame, result = predict_table((synth, None, calibrated), tmp_path / "c.csv", "--limit", 20)
    assert frame.height == 20
    ok = frame.filter(pl.col("status") == "ok")
    assert (ok["low_confidence"] == (ok["top1_prob"] < 0.3)).all()
    assert "< 0.3, chosen by `bionas calibrate`" in result.stderr
    frame, _ = predict_table((synth, None, calibrated), tmp_path / "d.csv", "--limit", 20,
                             "--low-confidence", 1)  # fmt: skip
    assert frame.filter(pl.col("status") == "ok")["low_confidence"].all()
    # threshold 1 ("no threshold reached the target") flags even saturated probabilities
    (calibrated / "calibration.json").write_text(json.dumps(
        {"schema": "bionas.calibration/1", "temperature": 0.001, "low_confidence_threshold": 1.0}
    ))  # fmt: skip
    frame, _ = predict_table((synth, None, calibrated), tmp_path / "e.csv", "--limit", 20)
    ok = frame.filter(pl.col("status") == "ok")
    assert (ok["top1_prob"] == 1.0).any() and ok["low_confidence"].all()


def test_a_table_of_another_profile_feeds_the_fields_it_lacks_as_unknown(world, tmp_path):
    _, _, run = world
    other = tmp_path / "i1m"
    run_cli("synth", other, "--profile", "insects-1m", "--n", 12, "--workers", 1, "--quiet")
    out = tmp_path / "i1m.parquet"
    result = predict(run, "--metadata", other / "metadata.csv", "--images", other / "images",
                     "--profile", "insects-1m", "--out", out, "--workers", 0)  # fmt: skip
    frame = pl.read_parquet(out)
    metadata = pl.read_csv(other / "metadata.csv", infer_schema=False)
    assert frame["processid"].to_list() == metadata["image_id"].to_list()
    assert (frame["status"] == "ok").all()
    assert frame["dna_bin"].null_count() == 12 and not frame["dna_bin_known"].any()
    assert frame["class"].to_list() == metadata["class"].to_list()
    assert "fed as unknown: dna_bin" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metadata", "{table}", "--out", "x.csv"], "--metadata needs --images"),
        (["--metadata", "{table}", "--images", "{images}", "--out", "x.txt"], ".csv or .parquet"),
        (["--metadata", "{table}", "--images", "{images}"], "--out FILE is needed"),
        (["--dataset", "{dataset}", "--out", "x.csv"], "--dataset needs --split"),
        (["--dataset", "{dataset}", "--split", "nope", "--out", "x.csv"], "no 'nope' split"),
        (["{photo}", "--out", "x.csv"], "--out is for --metadata or --dataset"),
        (["{photo}", "--metadata", "{table}", "--images", "{images}"], "not both"),
        ([], "nothing to predict"),
    ],
)
def test_usage_errors_name_the_problem(world, tmp_path, args, message):
    synth, dataset, run = world
    values = {"table": synth / "metadata.csv", "images": synth / "images" / "original_full",
              "dataset": dataset, "photo": synth / "any.jpg"}  # fmt: skip
    result = predict(run, *(a.format(**values) for a in args), ok=False)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_an_out_that_cannot_be_written_fails_before_any_prediction(world, tmp_path, monkeypatch):
    from bionas import batch_predict

    synth, _, run = world
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(batch_predict, "_loader", None)  # reached only after the check
    result = predict(run, "--metadata", synth / "metadata.csv", "--images",
                     synth / "images" / "original_full", "--out",
                     tmp_path / "afile" / "sub" / "x.csv", ok=False)  # fmt: skip
    assert result.exit_code != 0 and "cannot write --out" in result.output
    assert "Traceback" not in result.output and "rows" not in result.output


def test_a_table_is_read_predicted_and_written_a_chunk_at_a_time(
    world, table_predictions, tmp_path, monkeypatch
):
    from bionas import batch_predict, predict_sources

    chunk, window, batch = 7, 5, 16
    monkeypatch.setattr(predict_sources, "CHUNK_ROWS", chunk)
    monkeypatch.setattr(batch_predict, "WRITE_ROWS", window)
    reads, datasets, writes = [], [], []
    read, images, write = (predict_sources.MetadataTable.read, predict_sources.TableImages.__init__,
                           batch_predict.TableWriter.write)  # fmt: skip
    monkeypatch.setattr(predict_sources.MetadataTable, "read",
                        lambda self, lo, hi: reads.append((lo, hi)) or read(self, lo, hi))  # fmt: skip
    monkeypatch.setattr(predict_sources.TableImages, "__init__",
                        lambda self, rows, *a: datasets.append(len(rows)) or images(self, rows, *a))  # fmt: skip
    monkeypatch.setattr(batch_predict.TableWriter, "write",
                        lambda self, frame: writes.append(frame.height) or write(self, frame))  # fmt: skip
    frame, result = predict_table(world, tmp_path / "chunked.csv", "--workers", 2,
                                  "--batch-size", batch)  # fmt: skip
    whole, whole_result = table_predictions
    # the same table as read, predicted and written at once (batches of at most 7 rows
    # here: the probabilities differ in the last float32 bit)
    floats = pl.selectors.float()
    assert frame.drop(floats).equals(whole.drop(floats))
    gap = (
        (frame.select(floats) - whole.select(floats)).select(pl.all().abs().max()).max_horizontal()
    )
    assert gap.item() < 1e-5
    assert result.stderr.splitlines()[1:] == whole_result.stderr.splitlines()[1:]  # the counts
    # what is held at once is bounded by the chunk and the write window, not by the table
    n = frame.height
    assert reads == [(0, chunk)] + [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    assert datasets == [hi - lo for lo, hi in reads[1:]]
    assert sum(writes) == n and max(writes) < window + chunk


def test_a_table_without_rows_gives_the_columns_alone(world, table_predictions, tmp_path):
    synth, _, _ = world
    empty = tmp_path / "empty.csv"
    empty.write_text((synth / "metadata.csv").read_text().splitlines()[0] + "\n")
    for out in (tmp_path / "e.csv", tmp_path / "e.parquet"):
        frame, result = predict_table(world, out, table=empty)
        assert frame.height == 0 and frame.columns == table_predictions[0].columns
        assert "predicted 0 rows" in result.stderr


def test_a_prediction_that_fails_midway_leaves_the_earlier_output(world, tmp_path, monkeypatch):
    from bionas import batch_predict

    out = tmp_path / "p.parquet"
    out.write_bytes(b"an earlier table")
    monkeypatch.setattr(batch_predict, "WRITE_ROWS", 10)
    frames = batch_predict.output_frame
    calls = []

    def fail_on_the_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return frames(*args)

    monkeypatch.setattr(batch_predict, "output_frame", fail_on_the_third)
    with pytest.raises(RuntimeError, match="killed"):
        predict_table(world, out, "--workers", 0, "--batch-size", 8)
    assert out.read_bytes() == b"an earlier table"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.parquet"]  # no temporary left
