"""Cross-dataset validation end to end: synthetic BIOSCAN-5M -> ingest -> train (with
--meta-dropout) -> synthetic Insects-1M -> ingest -> `bionas evaluate --dataset`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ingest_helpers import ingest, run_cli, split_records

from bionas.trainer.run import load_trained

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TINY_TRAIN = ["--device", "cpu", "--channels", "4", "--cells", "3", "--image-size", "32",
              "--max-steps", "4", "--batch-size", "8", "--workers", "0", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def pair(tmp_path_factory, torch_single_thread_module) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cross")
    run_cli("synth", root / "b", "--n", 300, "--seed", 2, "--workers", 2, "--quiet")
    ingest(root / "b", root / "ds-b", "--min-class-count", 5, "--size", 48, "--workers", 2)
    run_cli("train", root / "ds-b", "--out", root / "run", "--meta-dropout", 0.5, *TINY_TRAIN)
    run_cli("synth", root / "i", "--profile", "insects-1m", "--n", 300, "--seed", 3,
            "--workers", 2, "--quiet")  # fmt: skip
    run_cli("ingest", root / "i" / "metadata.csv", "--images", root / "i" / "images",
            "--out", root / "ds-i", "--profile", "insects-1m", "--split-source", "random",
            "--split-ratios", "0.2,0.2,0.6", "--min-class-count", 5, "--size", 48,
            "--workers", 2, "--quiet")  # fmt: skip
    result = run_cli("evaluate", root / "run", "--dataset", root / "ds-i", "--split", "test",
                     "--out", root / "eval", "--latency-runs", 1)  # fmt: skip
    return {"run": root / "run", "insects": root / "ds-i", "eval": root / "eval",
            "output": result.output}  # fmt: skip


@pytest.fixture(scope="module")
def report(pair) -> dict:
    return json.loads((pair["eval"] / "metrics.json").read_text())


def test_the_run_trained_with_meta_dropout_on_dna_bin_and_class(pair):
    config = json.loads((pair["run"] / "config.json").read_text())
    assert config["meta_fields"] == ["dna_bin", "class"]
    assert config["train_config"]["meta_dropout"] == 0.5


def test_insects_1m_classes_the_model_cannot_know_are_counted_not_scored(pair, report):
    run = load_trained(pair["run"])
    known = set(run.vocabs["order"].values[1:]) | set(run.vocabs["order"].folded)
    test = split_records(pair["insects"], "test")
    unknown = [r["order"] for r in test if r["order"] not in known]
    assert report["cross_dataset"] is True
    assert report["samples"]["in_split"] == len(test)
    assert report["samples"]["unknown_class_samples"] == len(unknown) > 0
    assert set(report["samples"]["unknown_classes"]) == set(unknown)
    assert set(unknown) & {"Solifugae", "Amblypygi", "Thelyphonida", "Grylloblattodea",
                           "Mantophasmatodea", "Schizomida", "Ricinulei", "Palpigradi"}  # fmt: skip
    assert report["samples"]["evaluated"] == len(test) - len(unknown)
    assert f"{len(unknown)} of classes the model does not know" in pair["output"]


def test_shared_classes_are_scored_under_the_models_own_names(pair, report):
    run = load_trained(pair["run"])
    every = report["metrics"]["all"]
    assert every["n_samples"] == report["samples"]["evaluated"] > 0
    assert report["class_names"] == run.class_names
    expected: dict[str, int] = {}
    for r in split_records(pair["insects"], "test"):
        index = run.vocabs["order"].lookup(r["order"])  # folded orders land in Other
        if index:
            name = run.vocabs["order"].values[index]
            expected[name] = expected.get(name, 0) + 1
    supports = {name: row["support"] for name, row in every["per_class"].items() if row["support"]}
    assert supports == expected
    assert {"Diptera", "Hymenoptera", "Lepidoptera"} <= set(supports)
    assert 0.0 <= every["accuracy"] <= 1.0 and "f1_macro" in every


def test_metadata_insects_1m_lacks_is_fed_as_unknown(pair, report):
    assert report["meta_fields"] == {
        "used": ["dna_bin", "class"],
        "absent_from_dataset_fed_as_unknown": ["dna_bin"],
    }
    run = load_trained(pair["run"])
    test = split_records(pair["insects"], "test")
    indices = [run.meta_indices(r)[0].tolist() for r in test]
    assert all(dna_bin == 0 for dna_bin, _ in indices)  # no dna_bin in any record
    insects = [cls for r, (_, cls) in zip(test, indices, strict=True) if r["class"] == "Insecta"]
    assert insects and all(cls > 0 for cls in insects)  # class is a field of both: fed
    # every sample's dna_bin is empty: a missing BIN, not a novel one
    samples = report["samples"]
    assert (samples["seen_bin"], samples["unseen_bin"]) == (0, 0)
    assert samples["no_bin"] == samples["evaluated"] == report["metrics"]["no_bin"]["n_samples"]


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_meta_dropout_blanks_metadata_in_training_batches_only(tmp_path, p):
    from datasets import make_tiny_dataset  # tests/datasets.py

    from bionas.manifests.manifest import load_manifest
    from bionas.trainer.config import TrainConfig
    from bionas.trainer.data import BatchStream, train_spec, val_spec
    from bionas.trainer.encoding import load_encoding

    dataset = make_tiny_dataset(tmp_path / "ds", n=64, n_val=64, image_size=16)
    manifest = load_manifest(dataset)
    encoding = load_encoding(manifest, "order", ("class",))  # every record is Insecta
    config = TrainConfig(dataset_dir=dataset, run_dir=tmp_path / "run", meta_dropout=p,
                         image_size=16)  # fmt: skip
    train = train_spec(config, manifest.shard_paths("train"), 64, epoch=0, num_batches=1)
    val = val_spec(config, manifest.shard_paths("val"), 64)
    train_meta = next(iter(BatchStream(train, encoding))).meta
    val_meta = next(iter(BatchStream(val, encoding))).meta
    assert train_meta.shape == val_meta.shape == (64, 1)
    assert (val_meta > 0).all()  # evaluation always sees the metadata
    blanked = (train_meta == 0).float().mean().item()
    assert blanked == 0.0 if p == 0 else 0.3 < blanked < 0.7
