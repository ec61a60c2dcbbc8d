"""Evaluation end to end: train a tiny run through the CLI, then derive, evaluate, predict,
and read the outputs back with independent readers (json, PIL)."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
from datasets import make_tiny_dataset, tiny_jpeg  # tests/datasets.py
from ingest_helpers import split_records

from bionas.manifests.manifest import load_manifest, write_manifest
from bionas.manifests.vocab import build_vocab, write_vocab
from bionas.trainer.unseen_bins import training_dna_bins

# tiny models run faster on one thread than with threads competing on a small CPU
pytestmark = pytest.mark.usefixtures("torch_single_thread_module")


def train_bins_from_records(dataset) -> set[str]:
    """The expected answer, computed the plain way: every train record's dna_bin."""
    from bionas.shards.reader import read_samples

    manifest = load_manifest(dataset)
    return {
        json.loads(s.json)["dna_bin"]
        for s in read_samples(manifest.shard_paths("train"), shuffle_shards=False)
    }


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_training_bins_are_read_from_train_records_when_the_vocab_counted_other_splits(
    tmp_path, compression
):
    dataset = make_tiny_dataset(tmp_path / "ds", n=24, compression=compression)
    manifest = load_manifest(dataset)
    # a dna_bin vocabulary counted on train and val, with a val-only bin in it
    counts = Counter(manifest.vocab("dna_bin").values[1:]) + Counter({"BOLD:VALONLY": 3})
    write_vocab(
        build_vocab("dna_bin", counts, counted_splits=("train", "val")), dataset / "manifests"
    )
    cache = tmp_path / "cache" / "train_values.json"
    bins, source = training_dna_bins(load_manifest(dataset), cache)
    assert source == "the train split's records"
    assert bins == train_bins_from_records(dataset)
    assert "BOLD:VALONLY" not in bins
    for shard in (dataset / "shards" / "train").iterdir():
        shard.write_bytes(b"not a tar")  # the second answer comes from the cache
    assert training_dna_bins(load_manifest(dataset), cache)[0] == bins


def test_training_bins_come_from_a_train_only_vocab_without_reading_shards(tmp_path):
    dataset = make_tiny_dataset(tmp_path / "ds", n=24)
    body = dict(load_manifest(dataset).body)  # as ingest records it: counted over samples
    body["vocabs"]["dna_bin"]["counted_over"] = "ingested samples"
    write_manifest(dataset, {k: v for k, v in body.items() if k != "schema"})
    for shard in (dataset / "shards" / "train").iterdir():
        shard.write_bytes(b"not a tar")  # proves the shards are not read
    bins, source = training_dna_bins(load_manifest(dataset))
    assert source == "its dna_bin vocabulary, counted over the train samples"
    assert bins == set(load_manifest(dataset).vocab("dna_bin").values[1:])


# --- end to end through the CLI -------------------------------------------------------

N_TRAIN, N_VAL, CLASSES = 48, 12, 4
TRAIN_ARGS = ["--channels", "4", "--cells", "3", "--image-size", "32", "--max-steps", "6"]
TRAIN_ARGS += ["--batch-size", "8", "--workers", "0", "--seed", "0"]


def invoke(*args):
    from click.testing import CliRunner

    from bionas.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, torch_single_thread_module):
    root = tmp_path_factory.mktemp("e2e")
    dataset = make_tiny_dataset(root / "ds", n=N_TRAIN, n_val=N_VAL, classes=CLASSES)
    run = root / "run"
    result = invoke("train", dataset, "--out", run, *TRAIN_ARGS)
    assert result.exit_code == 0, result.output
    return dataset, run


def test_derive_writes_the_argmax_op_of_every_edge(trained):
    _, run = trained
    result = invoke("derive", run)
    assert result.exit_code == 0, result.output
    genotype = json.loads((run / "genotype.json").read_text())
    assert len(genotype["cells"]) == 3
    for cell in genotype["cells"]:
        assert set(cell["edges"]) == {"e1", "e2a", "e2b"}
        for edge in cell["edges"].values():
            alphas = edge["alphas"]
            assert len(alphas) == 10
            assert sum(alphas.values()) == pytest.approx(1.0, abs=1e-5)
            assert edge["op"] == max(alphas, key=alphas.get)
    text = (run / "genotype.txt").read_text()
    assert text in result.output
    assert text.count(" -> ") == 9


def test_evaluate_writes_metrics_json_and_readable_pngs(trained):
    from PIL import Image

    dataset, run = trained
    result = invoke("evaluate", run, "--split", "val", "--latency-runs", "2", "--batch-size", "5")
    assert result.exit_code == 0, result.output
    out = run / "eval" / "val"
    report = json.loads((out / "metrics.json").read_text())
    val = split_records(dataset, "val")
    assert report["samples"]["evaluated"] == len(val) == N_VAL
    assert report["samples"]["unknown_class_samples"] == 0
    every = report["metrics"]["all"]
    matrix = np.array(every["confusion_matrix"])
    assert matrix.sum() == N_VAL
    assert every["accuracy"] == pytest.approx(np.trace(matrix) / N_VAL)
    supports = {name: row["support"] for name, row in every["per_class"].items()}
    assert supports == dict(Counter(r["order"] for r in val))
    assert report["class_names"] == list(every["per_class"])
    # every val dna_bin of the tiny dataset also occurs in train
    train_bins = {r["dna_bin"] for r in split_records(dataset, "train")}
    seen = sum(1 for r in val if r["dna_bin"] in train_bins)
    assert report["samples"]["seen_bin"] == report["metrics"]["seen_bin"]["n_samples"] == seen
    assert report["samples"]["unseen_bin"] == report["samples"]["no_bin"] == N_VAL - seen == 0
    assert set(report["dna_bin_groups"]) == {"seen_bin", "unseen_bin", "no_bin"}
    # the headline is the derived network (one op per edge), the supernet is reported apart
    network = report["network"]
    assert network["name"] == "derived"
    genotype = json.loads((run / "genotype.json").read_text())
    assert network["genotype"] == {
        f"cell{c['index']}.{edge}": choice["op"]
        for c in genotype["cells"]
        for edge, choice in c["edges"].items()
    }
    assert network["bn_recalibration"]["samples"] > 0
    supernet = report["supernet"]
    assert supernet["metrics"]["all"]["n_samples"] == every["n_samples"] == N_VAL
    eff, super_eff = report["efficiency"], supernet["efficiency"]
    assert super_eff["model"]["flops"] > eff["model"]["flops"] == 2 * eff["model"]["macs"] > 0
    assert super_eff["model"]["parameters"]["total"] > eff["model"]["parameters"]["total"]
    assert eff["latency_ms"]["cpu"]["median_ms"] > 0
    # calibration of the headline: ECE as trained; nothing calibrated without calibration.json
    cal = report["calibration"]
    assert 0 <= cal["uncalibrated"]["ece"] <= 1 and cal["uncalibrated"]["nll"] > 0
    assert sum(b["count"] for b in cal["uncalibrated"]["reliability"]) == N_VAL
    assert cal["calibrated"] is None and cal["temperature"] is None
    assert f"ECE (15 bins): {cal['uncalibrated']['ece']:.4f} as trained" in result.output
    for name in ("confusion_matrix", "roc", "reliability", "alphas", "training_curves"):
        assert report["plots"][name] == f"{name}.png"
        with Image.open(out / f"{name}.png") as image:
            assert image.format == "PNG" and min(image.size) >= 200
    assert f"{N_VAL} samples evaluated" in result.output


def test_evaluate_on_another_dataset_counts_classes_the_model_cannot_know(trained, tmp_path):
    dataset, run = trained
    # six orders, two of which (Lepidoptera, Araneae) the run never saw
    other = make_tiny_dataset(tmp_path / "other", n=12, n_val=24, classes=6, seed=7)
    out = tmp_path / "eval"
    result = invoke(
        "evaluate",
        run,
        "--dataset",
        other,
        "--split",
        "val",
        "--out",
        out,
        "--latency-runs",
        "1",
        "--workers",
        "2",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    val = split_records(other, "val")
    known = [r for r in val if r["order"] in report["class_names"]]
    assert report["cross_dataset"] is True
    assert report["samples"]["unknown_class_samples"] == len(val) - len(known) == 8
    assert report["samples"]["unknown_classes"] == {"Araneae": 4, "Lepidoptera": 4}
    assert report["metrics"]["all"]["n_samples"] == len(known)
    # unseen BINs are judged against the run's own training data, not the other dataset's
    train_bins = {r["dna_bin"] for r in split_records(dataset, "train")}
    assert report["samples"]["unseen_bin"] == sum(r["dna_bin"] not in train_bins for r in known)
    assert report["samples"]["seen_bin"] == sum(r["dna_bin"] in train_bins for r in known)
    assert report["samples"]["no_bin"] == 0


def test_evaluate_refuses_a_missing_split_cleanly(trained):
    _, run = trained
    result = invoke("evaluate", run, "--split", "test")
    assert result.exit_code == 1
    assert "'test'" in result.output and "Traceback" not in result.output


def test_predict_prints_top_k_classes_as_json(trained, tmp_path):
    _, run = trained
    image = tmp_path / "specimen.jpg"
    image.write_bytes(tiny_jpeg(0, 32, random.Random(0)))
    args = ["predict", run, image, image, "--meta", "dna_bin=BOLD:A01", "--meta", "class=Nope"]
    result = invoke(*args, "--top-k", "3")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    config = json.loads((run / "config.json").read_text())
    assert len(body["predictions"]) == 2
    for prediction in body["predictions"]:
        top = prediction["top_k"]
        probabilities = [t["probability"] for t in top]
        assert len(top) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
        assert {t["class"] for t in top} <= set(config["class_names"])
    assert body["meta"]["dna_bin"]["known"] is True
    assert body["meta"]["class"] == {"value": "Nope", "index": 0, "known": False}
    # a search run: the supernet answers, and the output says so (the final model is apart)
    assert body["network"] == "supernet" and "search run" in result.stderr


def test_predict_with_a_bbox_sees_what_ingest_would_crop(trained, tmp_path):
    # a 200x150 "photo" (lossless PNG) with a specimen inside the box: predicting on the
    # photo with --bbox must equal predicting on the crop ingest would make (box + margin)
    from PIL import Image

    _, run = trained
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8))
    photo.save(tmp_path / "photo.png")
    box, margin = (60, 40, 140, 100), 0.25  # grown by 20 x 15 on each side
    photo.crop((40, 25, 160, 115)).save(tmp_path / "crop.png")

    def top(*args):
        result = invoke("predict", run, *args, "--top-k", "4")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["predictions"]

    cropped = top(tmp_path / "photo.png", "--bbox", ",".join(map(str, box)),
                  "--crop-margin", margin)  # fmt: skip
    assert cropped[0]["bbox"] == list(box)
    assert cropped[0]["top_k"] == top(tmp_path / "crop.png")[0]["top_k"]
    assert cropped[0]["top_k"] != top(tmp_path / "photo.png")[0]["top_k"]  # the crop mattered


def test_predict_errors_name_the_problem_without_a_traceback(trained, tmp_path):
    _, run = trained
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a jpeg")
    cases = [
        ([not_image], "not an image"),
        ([tmp_path / "missing.jpg"], "cannot read image"),
        ([not_image, "--meta", "order=Diptera"], "allowed: dna_bin, class"),
        ([not_image, "--meta", "dna_bin"], "FIELD=VALUE"),
        ([not_image, "--bbox", "10,10,5,20"], "X1 > X0"),
        ([not_image, "--bbox", "1,2,3"], "X0,Y0,X1,Y1"),
        ([not_image, not_image, "--bbox", "1,2,30,40"], "1 --bbox for 2 images"),
    ]
    for args, message in cases:
        result = invoke("predict", run, *args)
        assert result.exit_code == 1, result.output
        assert message in result.output
        assert "Traceback" not in result.output


@pytest.mark.parametrize("cut", ["mid-member", "member-boundary"])
def test_evaluate_counts_what_a_truncated_shard_loses(trained, tmp_path, cut):
    _, run = trained
    other = make_tiny_dataset(tmp_path / "other", n=8, n_val=12, classes=CLASSES)
    (shard,) = (other / "shards" / "val").iterdir()
    data = shard.read_bytes()
    half = len(data) // 2 // 512 * 512  # tar members start on 512-byte blocks
    shard.write_bytes(data[: half + (700 if cut == "mid-member" else 0)])
    out = tmp_path / "eval"
    result = invoke("evaluate", run, "--dataset", other, "--split", "val", "--out", out)
    assert result.exit_code == 0, result.output
    samples = json.loads((out / "metrics.json").read_text())["samples"]
    assert 0 < samples["evaluated"] < 12
    if cut == "mid-member":
        assert samples["skipped"]["broken shards"] == 1
    lost = samples["in_split"] - samples["evaluated"] - samples["unknown_class_samples"]
    assert samples["not_read"] + samples["skipped"].get("incomplete samples", 0) == lost


def test_calibrate_on_a_search_run_fits_the_derived_network_and_says_predict_differs(
    trained, tmp_path
):
    import shutil

    _, run = trained
    copy = tmp_path / "run"  # leaves the shared run uncalibrated for the tests above
    shutil.copytree(run, copy)
    result = invoke("calibrate", copy, "--batch-size", "6")
    assert result.exit_code == 0, result.output
    body = json.loads((copy / "calibration.json").read_text())
    assert body["network"] == "derived" and body["samples"]["fitted"] == N_VAL
    assert "answers with the supernet" in result.stderr
    assert f"only {N_VAL} samples" in result.stderr
