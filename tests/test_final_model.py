"""Search -> derive -> final model in one command (`bionas train --retrain-epochs N`)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.cli import main
from bionas.trainer.logs import read_jsonl
from bionas.trainer.ops import OP_NAMES

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TINY = ["--device", "cpu", "--image-size", "32", "--cells", "3", "--channels", "4",
        "--batch-size", "8", "--workers", "0", "--shuffle-buffer", "16", "--quiet"]  # fmt: skip


def bionas(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("final") / "ds", n=48, shards_per_split=3)


def ops_of(genotype: dict) -> list[str]:
    return [e["op"] for c in genotype["cells"] for e in c["edges"].values()]


def test_retrain_epochs_derives_the_genotype_and_trains_it_from_scratch(dataset, tmp_path):
    run = tmp_path / "run"
    result = bionas("train", dataset, "--out", run, "--epochs", "1", "--retrain-epochs", "2",
                    "--lr-theta", "0.05", *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    genotype = json.loads((run / "genotype.json").read_text())
    searched = torch.load(run / "model.pt", weights_only=True)
    theta = searched["state_dict"]["theta"]
    argmax = [OP_NAMES[int(k)] for k in theta.argmax(-1).flatten()]
    restored = {(c["index"], name) for c in genotype["cells"]
                for name, e in c["edges"].items() if e.get("restored")}  # fmt: skip
    names = [(c, e) for c in range(3) for e in ("e1", "e2a", "e2b")]
    assert [op for op, key in zip(ops_of(genotype), names, strict=True) if key not in restored] == [
        op for op, key in zip(argmax, names, strict=True) if key not in restored
    ]
    final = torch.load(run / "final/model.pt", weights_only=True)
    assert "theta" not in final["state_dict"]
    assert ops_of(final["model_config"]["genotype"]) == ops_of(genotype)
    # trained from scratch, not inherited: the stem moved away from the supernet's
    stem = "image_encoder.stem.0.weight"
    assert not torch.equal(final["state_dict"][stem], searched["state_dict"][stem])
    assert [e["epoch"] for e in read_jsonl(run / "final/epochs.jsonl")] == [1, 2]
    steps = read_jsonl(run / "final/steps.jsonl")
    assert steps and {s["kind"] for s in steps} == {"w"}
    assert f"final model: {run / 'final'}" in result.output

    evaluated = bionas("evaluate", run / "final", "--split", "val", "--latency-runs", "1")
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((run / "final/eval/val/metrics.json").read_text())
    assert report["network"]["name"] == "fixed" and "supernet" not in report


def test_resume_with_retrain_epochs_after_a_search_only_run_trains_the_final_model(
    dataset, tmp_path
):
    run = tmp_path / "run"
    assert bionas("train", dataset, "--out", run, "--epochs", "1", *TINY).exit_code == 0
    assert not (run / "final").exists()
    result = bionas("train", dataset, "--out", run, "--resume", "--retrain-epochs", "1")
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(run / "epochs.jsonl")) == 1  # the search did not run again
    assert len(read_jsonl(run / "final/epochs.jsonl")) == 1


def test_retrain_epochs_with_a_fixed_genotype_is_refused(dataset, tmp_path):
    genotype = tmp_path / "g.json"
    cells = [{"index": i, "reduction": i > 0,
              "edges": {"e1": {"op": "skip"}, "e2a": {"op": "se"}, "e2b": {"op": "zero"}}}
             for i in range(3)]  # fmt: skip
    genotype.write_text(json.dumps({"format": "bionas.genotype/1", "cells": cells}))
    result = bionas("train", dataset, "--out", tmp_path / "r", "--genotype", genotype,
                    "--retrain-epochs", "1", *TINY)  # fmt: skip
    assert result.exit_code == 1 and "already trains a fixed --genotype" in result.output


@pytest.mark.parametrize(
    ("name", "ops"),
    [("manual", ["dw_sep_3x3", "skip", "dw_sep_3x3"]),
     ("pool_skip", ["max_pool_3x3", "skip", "avg_pool_3x3"])],
)  # fmt: skip
def test_a_builtin_cell_trains_as_a_fixed_network_over_every_cell(name, ops, dataset, tmp_path):
    run = tmp_path / name
    result = bionas("train", dataset, "--out", run, "--genotype", name, "--max-steps", "1", *TINY)
    assert result.exit_code == 0, result.output
    saved = torch.load(run / "model.pt", weights_only=True)
    genotype = saved["model_config"]["genotype"]
    assert [c["reduction"] for c in genotype["cells"]] == [False, True, True]  # 3 cells
    assert ops_of(genotype) == ops * 3 and "theta" not in saved["state_dict"]


def test_an_unknown_genotype_name_is_refused_with_the_builtin_names(dataset, tmp_path):
    result = bionas("train", dataset, "--out", tmp_path / "r", "--genotype", "nope", *TINY)
    assert result.exit_code == 1
    assert "cannot use --genotype nope" in result.output and "manual, pool_skip" in result.output


def test_adding_search_epochs_after_a_final_model_refuses_when_the_genotype_moved(
    dataset, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    assert bionas("train", dataset, "--out", run, "--epochs", "1", "--retrain-epochs", "1",
                  *TINY).exit_code == 0  # fmt: skip
    before = (run / "genotype.json").read_text()
    # the search goes on and now derives another genotype (forced: every edge's argmax moves)
    import bionas.trainer.final as final

    real = final.load_trained

    def moved(path):
        trained = real(path)
        with torch.no_grad():
            trained.model.theta[..., OP_NAMES.index("se")] += 50.0
        return trained

    monkeypatch.setattr(final, "load_trained", moved)
    result = bionas("train", dataset, "--out", run, "--resume", "--epochs", "2",
                    "--retrain-epochs", "2")  # fmt: skip
    assert result.exit_code == 1 and "trained on the genotype the search derived" in result.output
    assert (run / "genotype.json").read_text() == before  # nothing rewritten


def test_the_final_stage_resumes_from_a_moved_run_dir(dataset, tmp_path):
    import shutil

    run = tmp_path / "run"
    assert bionas("train", dataset, "--out", run, "--epochs", "1", "--retrain-epochs", "1",
                  *TINY).exit_code == 0  # fmt: skip
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)
    result = bionas("train", dataset, "--out", moved, "--resume", "--retrain-epochs", "2")
    assert result.exit_code == 0, result.output
    assert [e["epoch"] for e in read_jsonl(moved / "final/epochs.jsonl")] == [1, 2]


def test_resuming_a_fixed_run_with_another_genotype_is_refused(dataset, tmp_path):
    run = tmp_path / "fixed"
    ok = bionas("train", dataset, "--out", run, "--genotype", "manual", "--epochs", "1", *TINY)
    assert ok.exit_code == 0, ok.output
    result = bionas("train", dataset, "--out", run, "--resume", "--genotype", "pool_skip",
                    "--epochs", "2")  # fmt: skip
    assert result.exit_code == 1 and "its genotype is not the one" in result.output
