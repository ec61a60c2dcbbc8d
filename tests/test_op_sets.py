"""`--ops full|reduced|conv-only`: the supernet's primitive set (the paper's Table I, E009-E011)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.cli import main
from bionas.trainer.cell import MixedOp
from bionas.trainer.genotype import Genotype
from bionas.trainer.model import ModelConfig, build_model
from bionas.trainer.ops import OP_NAMES, OP_SETS, ZERO
from bionas.trainer.run import load_trained, model_config_from_dict, model_config_to_dict

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TINY = ["--device", "cpu", "--image-size", "16", "--cells", "2", "--channels", "4",
        "--batch-size", "8", "--workers", "0", "--shuffle-buffer", "16", "--quiet"]  # fmt: skip


def bionas(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("opsets") / "ds", n=32, shards_per_split=2)


def tiny_supernet(ops: str, **changes):
    return build_model(ModelConfig(num_classes=3, channels=4, cells=2, embed_dim=8, ops=ops,
                                   **changes))  # fmt: skip


def test_the_sets_have_the_papers_sizes_nest_and_all_keep_zero():
    assert {name: len(ops) for name, ops in OP_SETS.items()} == {
        "full": 10, "reduced": 6, "conv-only": 4,
    }  # fmt: skip
    assert set(OP_SETS["conv-only"]) < set(OP_SETS["reduced"]) < set(OP_SETS["full"])
    for ops in OP_SETS.values():
        assert ZERO in ops
        assert list(ops) == sorted(ops, key=OP_NAMES.index)  # θ's column order


@pytest.mark.parametrize("ops", list(OP_SETS))
def test_the_supernet_builds_and_weights_only_the_ops_of_its_set(ops):
    model = tiny_supernet(ops)
    for mixed in (m for m in model.modules() if isinstance(m, MixedOp)):
        assert set(mixed.ops) == set(OP_SETS[ops]) - {ZERO}
    assert model.theta.shape == (2, 3, len(OP_NAMES))  # θ keeps all ten columns
    for row in model.alphas().values():
        outside = [row[k] for k, name in enumerate(OP_NAMES) if name not in OP_SETS[ops]]
        assert all(a == 0 for a in outside)
        assert float(row.sum()) == pytest.approx(1.0)
    assert model.pruned_op_count() == 0  # the ops outside the set are not "pruned"
    assert {e.op for c in model.genotype().cells for e in c.edges} <= set(OP_SETS[ops])


def test_a_threshold_of_zero_still_runs_only_the_ops_of_the_set():
    model = tiny_supernet("conv-only", prune_threshold=0.0)
    model(torch.randn(2, 3, 16, 16)).sum().backward()  # an op outside the set is never looked up
    assert model.theta.grad is not None and torch.isfinite(model.theta.grad).all()


def test_a_model_config_written_before_op_sets_loads_as_the_full_set():
    stored = model_config_to_dict(ModelConfig(num_classes=3))
    del stored["ops"]
    assert model_config_from_dict(stored).ops == "full"
    full = tiny_supernet("full")
    assert "theta_mask" not in full.state_dict()  # checkpoints keep their keys
    assert full.theta_mask is None


@pytest.mark.parametrize("ops", list(OP_SETS))
def test_each_op_set_trains_derives_and_evaluates_through_the_cli(dataset, tmp_path, ops):
    run = tmp_path / ops
    trained = bionas("train", dataset, "--out", run, "--ops", ops, "--max-steps", "2",
                     "--lr-theta", "0.5", *TINY)  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert json.loads((run / "config.json").read_text())["model_config"]["ops"] == ops
    assert bionas("derive", run).exit_code == 0
    genotype = Genotype.load(run / "genotype.json")
    chosen = {e.op for c in genotype.cells for e in c.edges}
    assert chosen <= set(OP_SETS[ops])
    for cell in genotype.cells:
        for edge in cell.edges:  # the JSON names every op; those outside the set have α 0
            assert all(
                a == 0 for a, n in zip(edge.alphas, OP_NAMES, strict=True) if n not in OP_SETS[ops]
            )
    model = load_trained(run).model
    assert set(model.image_encoder.cells[0].e1.ops) == set(OP_SETS[ops]) - {ZERO}
    evaluated = bionas("evaluate", run, "--split", "val", "--latency-runs", "1",
                       "--bn-batches", "1")  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((run / "eval/val/metrics.json").read_text())
    assert metrics["network"]["name"] == "derived" and metrics["samples"]["evaluated"] == 8
    assert set(metrics["network"]["genotype"].values()) == chosen


def test_resuming_with_another_op_set_is_refused(dataset, tmp_path):
    run = tmp_path / "run"
    assert bionas("train", dataset, "--out", run, "--max-steps", "1", *TINY).exit_code == 0
    refused = bionas("train", dataset, "--out", run, "--resume", "--ops", "reduced")
    assert refused.exit_code == 1 and "ops='reduced' (was 'full')" in refused.output
