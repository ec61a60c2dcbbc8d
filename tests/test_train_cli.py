"""`bionas train` end to end through the CLI, checked through the RUN_DIR contract."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.cli import main
from bionas.manifests.vocab import load_vocab
from bionas.trainer.logs import read_jsonl
from bionas.trainer.run import load_trained

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TINY = ["--device", "cpu", "--image-size", "32", "--cells", "3", "--channels", "4",
        "--batch-size", "8", "--workers", "0", "--shuffle-buffer", "16", "--quiet"]  # fmt: skip


def bionas(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def dataset(tmp_path):
    return make_tiny_dataset(tmp_path / "ds", n=48, shards_per_split=3)


def test_train_writes_the_run_dir_contract(dataset, tmp_path):
    run = tmp_path / "run"
    result = bionas("train", dataset, "--out", run, "--epochs", "1", *TINY)
    assert result.exit_code == 0, result.output
    assert "bionas derive" in result.output
    for name in ("config.json", "model.pt", "checkpoints/last.pt", "steps.jsonl",
                 "epochs.jsonl", "alphas.jsonl", "vocabs/vocab_order.json",
                 "vocabs/vocab_dna_bin.json", "vocabs/vocab_class.json"):  # fmt: skip
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["target"] == "order" and config["meta_fields"] == ["dna_bin", "class"]
    assert config["class_names"] == list(
        load_vocab(dataset / "manifests/vocab_order.json").values[1:]
    )
    assert config["image_size"] == 32 and config["batch_size"] == 8
    assert set(config["vocab_sha256"]) == {"order", "dna_bin", "class"}
    assert len(read_jsonl(run / "steps.jsonl")) == 6
    assert len(read_jsonl(run / "epochs.jsonl")) == 1

    trained = load_trained(run)
    assert not trained.model.training
    assert trained.class_names == config["class_names"] and trained.image_size == 32
    assert trained.dataset_dir == dataset.resolve()
    meta = trained.meta_indices({"dna_bin": "BOLD:A01", "class": "Insecta"})
    logits = trained.model(torch.zeros(1, 3, 32, 32), meta)
    assert logits.shape == (1, 4)
    saved = torch.load(run / "model.pt", weights_only=True)
    assert saved["model_config"]["num_classes"] == 4 and "theta" in saved["state_dict"]


def test_resume_through_the_cli_continues_with_the_stored_options(dataset, tmp_path):
    run = tmp_path / "run"
    assert bionas("train", dataset, "--out", run, "--epochs", "1", *TINY).exit_code == 0
    result = bionas("train", dataset, "--out", run, "--resume", "--epochs", "2", "--quiet")
    assert result.exit_code == 0, result.output
    assert [e["epoch"] for e in read_jsonl(run / "epochs.jsonl")] == [1, 2]
    assert json.loads((run / "config.json").read_text())["train_config"]["epochs"] == 2
    refused = bionas("train", dataset, "--out", run, "--resume", "--seed", "9")
    assert refused.exit_code == 1 and "seed=9 (was 0)" in refused.output


def test_a_derived_genotype_trains_as_a_fixed_network(dataset, tmp_path):
    search = tmp_path / "search"
    assert bionas("train", dataset, "--out", search, "--max-steps", "2", *TINY).exit_code == 0
    genotype = tmp_path / "genotype.json"
    load_trained(search).model.genotype().save(genotype)
    fixed = tmp_path / "fixed"
    result = bionas("train", dataset, "--out", fixed, "--epochs", "1", "--genotype", genotype,
                    *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {s["kind"] for s in read_jsonl(fixed / "steps.jsonl")} == {"w"}
    assert read_jsonl(fixed / "alphas.jsonl") == []
    trained = load_trained(fixed)
    assert trained.model.arch_parameters() == []
    assert trained.model_config.genotype == load_trained(search).model.genotype()


@pytest.mark.parametrize("fields", ["order", "dna_bin,family", "taxon"])
def test_leaking_metadata_is_refused_without_a_traceback(dataset, tmp_path, fields):
    result = bionas("train", dataset, "--out", tmp_path / "run", "--meta-fields", fields, *TINY)
    assert result.exit_code == 1
    assert "leak the target" in result.output and "--allow-target-leakage" in result.output
    assert "Traceback" not in result.output


def test_allow_target_leakage_reproduces_the_papers_setting(dataset, tmp_path):
    run = tmp_path / "run"
    result = bionas("train", dataset, "--out", run, "--meta-fields", "order,family",
                    "--allow-target-leakage", "--max-steps", "1", *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["meta_fields"] == ["order", "family"]


def test_learning_rates_and_threads_reach_the_run(dataset, tmp_path):
    import torch

    before = torch.get_num_threads()
    run = tmp_path / "run"
    args = ("--max-steps", "2", "--lr-theta", "0.01", "--lr-w", "0.002", "--threads", "1")
    try:
        result = bionas("train", dataset, "--out", run, *TINY, *args)
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    stored = json.loads((run / "config.json").read_text())["train_config"]
    assert (stored["lr_theta"], stored["lr_w"], stored["threads"]) == (0.01, 0.002, 1)
    bad = bionas("train", dataset, "--out", tmp_path / "bad", *TINY, "--lr-theta", "0")
    assert bad.exit_code != 0 and "--lr-theta must be > 0, got 0.0" in bad.output


def test_options_come_from_a_toml_file_and_the_command_line_wins(dataset, tmp_path):
    config = tmp_path / "train.toml"
    config.write_text('[train]\nmax_steps = 3\nmeta-fields = ["dna_bin"]\nseed = 4\n')
    run = tmp_path / "run"
    result = bionas("train", dataset, "--out", run, "--config", config, "--seed", "5", *TINY)
    assert result.exit_code == 0, result.output
    stored = json.loads((run / "config.json").read_text())["train_config"]
    assert (stored["max_steps"], stored["meta_fields"], stored["seed"]) == (3, ["dna_bin"], 5)
    bad = tmp_path / "bad.toml"
    bad.write_text("batch_sise = 3\n")
    result = bionas("train", dataset, "--out", tmp_path / "r2", "--config", bad)
    assert result.exit_code == 1 and "unknown option(s) ['batch_sise']" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "lots"], "neither 'auto' nor a number"),
        (["--target", "genus"], "vocab_genus.json is a feature vocabulary"),
        (["--target", "colour"], "no target vocabulary for 'colour'"),
        (["--meta-fields", "colour"], "no vocabulary for field 'colour'"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--max-steps", "0"], ""),
    ],
)
def test_user_errors_are_clean_messages(dataset, tmp_path, args, message):
    result = bionas("train", dataset, "--out", tmp_path / "run", *TINY, *args)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_a_changed_vocabulary_is_refused_through_the_cli(dataset, tmp_path):
    path = dataset / "manifests" / "vocab_class.json"
    body = json.loads(path.read_text())
    body["values"].append("Collembola")
    body["counts"].append(1)
    from bionas.manifests.vocab import content_sha256

    body["sha256"] = content_sha256(body)
    path.write_text(json.dumps(body))
    result = bionas("train", dataset, "--out", tmp_path / "run", *TINY)
    assert result.exit_code == 1
    assert "vocab_class.json has sha256" in result.output


def test_a_run_stopped_by_max_steps_resumes_to_the_end(dataset, tmp_path):
    run = tmp_path / "run"
    assert (
        bionas("train", dataset, "--out", run, "--max-steps", "4", "--epochs", "1", *TINY).exit_code
        == 0
    )
    assert bionas("train", dataset, "--out", run, "--resume").exit_code == 0
    assert [s["step"] for s in read_jsonl(run / "steps.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_corrupt_data_is_skipped_or_fails_with_strict(dataset, tmp_path):
    shard = sorted((dataset / "shards" / "train").iterdir())[1]
    shard.write_bytes(shard.read_bytes()[:1500])
    tiny = [*TINY[: TINY.index("--workers")], "--workers", "2", "--epochs", "1"]
    strict = bionas("train", dataset, "--out", tmp_path / "strict", *tiny, "--strict")
    assert strict.exit_code == 1
    assert shard.name in strict.output and "Traceback" not in strict.output
    lenient = bionas("train", dataset, "--out", tmp_path / "run", *tiny)
    assert lenient.exit_code == 0, lenient.output
    (epoch,) = read_jsonl(tmp_path / "run" / "epochs.jsonl")
    assert epoch["skipped"]["broken_shards"] >= 1


def test_help_shows_examples():
    result = bionas("train", "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.output and "--genotype" in result.output


@pytest.mark.parametrize(("rank", "says_it"), [("0", True), ("1", False)])
def test_under_torchrun_only_rank_0_reports_a_bad_option(
    dataset, tmp_path, monkeypatch, rank, says_it
):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    result = bionas("train", dataset, "--out", tmp_path / "run", *TINY, "--lr-theta", "-1")
    assert result.exit_code == 1
    assert ("--lr-theta must be > 0" in result.output) is says_it, result.output


def test_a_second_training_into_the_same_folder_fails_at_once(dataset, tmp_path):
    """Two trainings of one run folder (say an orphaned ablate child and its rerun) would
    interleave checkpoints; the second stops naming the first."""
    from bionas.shards.atomic import exclusive_lock
    from bionas.trainer.loop import TRAIN_LOCK

    run = tmp_path / "run"
    run.mkdir()
    with exclusive_lock(run / TRAIN_LOCK):  # held as another process would hold it
        result = bionas("train", dataset, "--out", run, *TINY)
    assert result.exit_code != 0 and "another bionas train" in result.output
    assert not (run / "model.pt").exists() and "Traceback" not in result.output
    assert bionas("train", dataset, "--out", run, *TINY).exit_code == 0  # released
