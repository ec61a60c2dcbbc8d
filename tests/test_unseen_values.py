"""Values never seen in training (SPEC §6), end to end through the CLI on a synthetic
BIOSCAN-5M whose dna_bins are of three kinds: shared with other specimens, unique to one
specimen (so a val/test one never occurs in train), and empty.

A feature value absent from the train split encodes as unknown (index 0) and has no
embedding row, however the vocabulary was made; `bionas evaluate` reports the samples
whose BIN was seen in training, never seen, and absent apart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from ingest_helpers import ingest, run_cli, split_records

from bionas.manifests.manifest import load_manifest
from bionas.trainer.run import load_trained

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TINY = ["--device", "cpu", "--image-size", "32", "--cells", "2", "--channels", "4",
        "--batch-size", "8", "--workers", "0", "--quiet"]  # fmt: skip


def give_some_rows_a_unique_or_empty_bin(metadata: Path) -> None:
    table = pl.read_csv(metadata, infer_schema=False)
    row = pl.int_range(pl.len())
    table = table.with_columns(
        dna_bin=pl.when(row % 5 == 1)
        .then(pl.lit(None, dtype=pl.String))
        .when(row % 5 == 2)
        .then(pl.format("BOLD:UNIQ{}", row))
        .otherwise(pl.col("dna_bin"))
    )
    table.write_csv(metadata)


@pytest.fixture(scope="module")
def data(tmp_path_factory, torch_single_thread_module) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("unseen")
    run_cli("synth", root / "s", "--n", 300, "--seed", 2, "--workers", 2, "--quiet")
    give_some_rows_a_unique_or_empty_bin(root / "s" / "metadata.csv")
    ingest(root / "s", root / "ds", "--min-class-count", 5, "--size", 48, "--workers", 2,
           "--split-ratios", "0.5,0.2,0.3")  # fmt: skip
    run_cli("train", root / "ds", "--out", root / "run", "--max-steps", 2, *TINY)
    return {"root": root, "metadata": root / "s" / "metadata.csv", "ds": root / "ds",
            "run": root / "run"}  # fmt: skip


def bins_of(dataset: Path, *splits: str) -> set[str]:
    return {r["dna_bin"] for s in splits for r in split_records(dataset, s) if r["dna_bin"]}


def assert_only_train_bins_have_rows(run_dir: Path, dataset: Path) -> None:
    train = bins_of(dataset, "train")
    elsewhere = bins_of(dataset, "val", "test") - train
    assert elsewhere, "the dataset must have val/test dna_bins that train lacks"
    run = load_trained(run_dir)
    vocab = run.vocabs["dna_bin"]
    assert set(vocab.values[1:]) == train
    assert all(run.meta_indices({"dna_bin": b})[0, 0] == 0 for b in elsewhere)
    assert run.meta_indices({"dna_bin": min(train)})[0, 0] > 0
    assert run.model.metadata_encoder.embeddings["dna_bin"].num_embeddings == len(train) + 1
    assert dict(run.model_config.meta_cardinalities)["dna_bin"] == len(train) + 1


def test_ingest_counts_feature_vocabularies_on_train_and_the_target_on_every_split(data):
    manifest = load_manifest(data["ds"])
    assert manifest.vocab("dna_bin").counted_splits == ("train",)
    assert manifest.vocab("class").counted_splits == ("train",)
    assert manifest.vocab("order").counted_splits == ("test", "train", "val")
    assert manifest.body["vocabs"]["dna_bin"]["counted_over"] == "ingested samples"
    assert set(manifest.vocab("dna_bin").values[1:]) == bins_of(data["ds"], "train")


def test_a_dna_bin_absent_from_train_encodes_as_unknown_and_has_no_embedding_row(data):
    assert_only_train_bins_have_rows(data["run"], data["ds"])


def test_a_vocabulary_regenerated_over_all_splits_is_cut_to_the_train_values(data, tmp_path):
    dataset = tmp_path / "ds"
    shutil.copytree(data["ds"], dataset)
    run_cli("vocab", data["metadata"], "--out", dataset, "--min-count", 5)
    regenerated = load_manifest(dataset).vocab("dna_bin")
    elsewhere = bins_of(dataset, "val", "test") - bins_of(dataset, "train")
    assert regenerated.counted_splits == ("all",)
    assert all(regenerated.lookup(b) > 0 for b in elsewhere)  # the trap: rows for them

    run = tmp_path / "run"
    run_cli("train", dataset, "--out", run, "--max-steps", 2, *TINY)
    assert_only_train_bins_have_rows(run, dataset)
    assert json.loads((run / "train_values.json").read_text())["counts"]["dna_bin"]
    # resume checks the vocabularies' sha256: the cut one must come out the same again
    run_cli("train", dataset, "--out", run, "--resume", "--max-steps", 3)
    assert len((run / "steps.jsonl").read_text().splitlines()) == 3


def test_evaluate_reports_seen_unseen_and_missing_bins_apart(data):
    result = run_cli("evaluate", data["run"], "--split", "test", "--latency-runs", 1)
    report = json.loads((data["run"] / "eval" / "test" / "metrics.json").read_text())
    train = bins_of(data["ds"], "train")
    known = set(report["class_names"]) | set(load_trained(data["run"]).vocabs["order"].folded)
    scored = [r["dna_bin"] for r in split_records(data["ds"], "test") if r["order"] in known]
    expected = {
        "seen_bin": sum(1 for b in scored if b and b in train),
        "unseen_bin": sum(1 for b in scored if b and b not in train),
        "no_bin": sum(1 for b in scored if not b),
    }
    assert all(expected.values()), f"the test split must hold all three kinds: {expected}"
    samples = report["samples"]
    assert {group: samples[group] for group in expected} == expected
    assert sum(expected.values()) == samples["evaluated"]
    for group, n in expected.items():
        assert report["metrics"][group]["n_samples"] == n
        assert report["dna_bin_groups"][group]
    assert "not empty" in report["dna_bin_groups"]["unseen_bin"]
    assert "no BIN:" in result.output and "unseen BIN:" in result.output
