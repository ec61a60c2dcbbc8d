"""`--sparse-embeddings`: rows of large metadata tables that no batch looks up stay put."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.cli import main
from bionas.errors import BionasError
from bionas.trainer.config import Amp, TrainConfig
from bionas.trainer.logs import read_jsonl
from bionas.trainer.loop import train
from bionas.trainer.model import ModelConfig, build_model
from bionas.trainer.optimizers import (
    AUTO_SPARSE_ROWS,
    LazyRowsAdamW,
    build_optimizers,
    sparse_fields,
)
from bionas.trainer.step import train_step

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FP32 = Amp(False, torch.float32, "cpu")
BINS = 40  # rows of the dna_bin table; batches look up only rows 0..SEEN-1
SEEN = 4


def supernet():
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=3, meta_cardinalities=(("dna_bin", BINS), ("class", 3)),
                      channels=4, cells=2, embed_dim=16, meta_embed_dim=4)  # fmt: skip
    return build_model(cfg)


def batch(seed: int, rows: int = SEEN, size: int = 8):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, 16, 16, generator=generator)
    meta = torch.stack([torch.randint(0, rows, (size,), generator=generator),
                        torch.randint(0, 3, (size,), generator=generator)], dim=1)  # fmt: skip
    return images, meta, torch.randint(0, 3, (size,), generator=generator)


def dna_bin_table(model) -> torch.Tensor:
    return model.metadata_encoder.embeddings["dna_bin"].weight


def w_steps(mode: str, batches, weight_decay: float = 1e-4):
    """A fresh supernet after w steps on `batches`: model, the table before, the results,
    and the optimisers (to step on)."""
    model = supernet()
    config = TrainConfig(dataset_dir=".", run_dir=".", sparse_embeddings=mode,
                         weight_decay_w=weight_decay)  # fmt: skip
    opts = build_optimizers(model, config, FP32)
    before = dna_bin_table(model).detach().clone()
    results = [train_step(model, *b, "w", opts, FP32) for b in batches]
    return model, before, results, opts


@pytest.mark.parametrize(("mode", "absent_rows_move"), [("on", False), ("off", True)])
def test_rows_no_batch_looks_up_stay_bit_identical_only_with_sparse_embeddings(
    mode, absent_rows_move
):
    model, before, _, _ = w_steps(mode, [batch(seed) for seed in range(4)])
    after = dna_bin_table(model).detach()
    assert not torch.equal(after[:SEEN], before[:SEEN])  # looked-up rows move either way
    # off: AdamW's decoupled weight decay shrinks every row on every w step
    assert (not torch.equal(after[SEEN:], before[SEEN:])) == absent_rows_move


@pytest.mark.parametrize(("mode", "keeps_moving"), [("on", False), ("off", True)])
def test_a_row_stops_moving_when_batches_stop_looking_it_up(mode, keeps_moving):
    # weight decay 0: only AdamW's momentum can move a row absent from the batch
    model, _, _, opts = w_steps(mode, [batch(seed) for seed in range(2)], weight_decay=0.0)
    seen = dna_bin_table(model)[:SEEN].detach().clone()
    images, meta, labels = batch(9)
    meta[:, 0] = SEEN  # every sample now looks up row SEEN, none rows 0..SEEN-1
    train_step(model, images, meta, labels, "w", opts, FP32)
    assert (not torch.equal(dna_bin_table(model)[:SEEN], seen)) == keeps_moving


def test_clipping_sees_the_same_gradient_norm_sparse_or_dense():
    (_, _, [sparse], _), (_, _, [dense], _) = (w_steps(m, [batch(0)]) for m in ("on", "off"))
    assert sparse.loss == dense.loss
    assert sparse.grad_norm == pytest.approx(dense.grad_norm, rel=1e-6)


def test_a_loss_scaler_unscales_sparse_gradients_exactly():
    # the CUDA fp16 path's GradScaler, on CPU: a power-of-two scale unscales exactly
    runs = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**12)):
        model = supernet()
        config = TrainConfig(dataset_dir=".", run_dir=".", sparse_embeddings="on")
        opts = build_optimizers(model, config, FP32)
        if scaler is not None:
            opts = replace(opts, w_scaler=scaler)
        assert isinstance(opts.w, LazyRowsAdamW)
        for seed in range(3):
            train_step(model, *batch(seed), "w", opts, FP32)
        runs.append([p.detach().clone() for p in model.weight_parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_auto_makes_only_tables_of_65536_rows_or_more_lazy():
    sizes = {"dna_bin": 324_000, "class": 3, "country": AUTO_SPARSE_ROWS - 1}
    assert sparse_fields("auto", sizes) == ("dna_bin",)
    assert sparse_fields("auto", {"country": AUTO_SPARSE_ROWS}) == ("country",)
    assert sparse_fields("on", sizes) == ("class", "country", "dna_bin")
    assert sparse_fields("off", sizes) == ()
    assert sparse_fields("auto", sizes, distributed=True) == ()  # DDP: see the next test
    with pytest.raises(BionasError, match="several processes"):
        sparse_fields("on", sizes, distributed=True)


@pytest.fixture
def config(tmp_path):
    dataset = make_tiny_dataset(tmp_path / "ds", n=64, shards_per_split=4)
    return TrainConfig(dataset_dir=dataset, run_dir=tmp_path / "a", epochs=2, batch_size=8,
                       image_size=32, cells=2, channels=4, embed_dim=16, meta_embed_dim=4,
                       workers=0, shuffle_buffer=16, sparse_embeddings="on", quiet=True)  # fmt: skip


class Crash(Exception):
    """Stands in for a kill at a given step."""


def step_losses(run_dir):
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_jsonl(run_dir / "steps.jsonl")]


def test_a_run_killed_mid_epoch_resumes_exactly_with_sparse_embeddings(config, tmp_path):
    config = replace(config, checkpoint_every=5)
    train(config)
    killed = replace(config, run_dir=tmp_path / "b")

    def crash_at_7(record):
        if record["step"] == 7:
            raise Crash

    with pytest.raises(Crash):
        train(killed, on_step=crash_at_7)
    payload = torch.load(killed.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert payload["state"]["step"] == 5  # the SparseAdam moments of step 5 are in it
    assert set(payload["w_optimizer"]) == {"dense", "sparse"}
    train(replace(killed, resume=True))
    assert step_losses(killed.run_dir) == step_losses(config.run_dir)
    assert len(step_losses(config.run_dir)) == 16


def bionas(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


TINY = ["--device", "cpu", "--image-size", "32", "--cells", "2", "--channels", "4",
        "--batch-size", "8", "--workers", "0", "--shuffle-buffer", "16", "--quiet"]  # fmt: skip


def test_the_cli_trains_with_sparse_embeddings_on_and_records_it(config, tmp_path):
    run = tmp_path / "run"
    args = ["train", config.dataset_dir, "--out", run, *TINY]
    result = bionas(*args, "--epochs", "1", "--sparse-embeddings", "on")
    assert result.exit_code == 0, result.output
    stored = json.loads((run / "config.json").read_text())
    assert stored["train_config"]["sparse_embeddings"] == "on"
    assert stored["sparse_embedding_fields"] == ["class", "dna_bin"]
    assert bionas("train", config.dataset_dir, "--out", run, "--resume",
                  "--epochs", "2").exit_code == 0  # fmt: skip
    refused = bionas("train", config.dataset_dir, "--out", run, "--resume",
                     "--sparse-embeddings", "off")  # fmt: skip
    assert refused.exit_code == 1 and "sparse_embeddings='off' (was 'on')" in refused.output


def test_a_run_from_before_the_option_resumes_with_dense_adamw(config, tmp_path):
    run = tmp_path / "old"
    assert bionas("train", config.dataset_dir, "--out", run, *TINY, "--epochs", "1",
                  "--sparse-embeddings", "off").exit_code == 0  # fmt: skip
    path = run / "checkpoints" / "last.pt"
    payload = torch.load(path, weights_only=True)
    del payload["config"]["sparse_embeddings"]  # as bionas wrote it before the option
    torch.save(payload, path)
    result = bionas("train", config.dataset_dir, "--out", run, "--resume", "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["train_config"]["sparse_embeddings"] == "off"  # fmt: skip


def test_under_torchrun_sparse_embeddings_on_is_refused_at_once(config, tmp_path):
    # DDP's reducer fails on a sparse table a θ step leaves without a gradient ("Expected
    # sparse gradient to be defined"); `auto` resolves to dense there (the test above)
    from test_distributed import torchrun  # noqa: PLC0415 (a launcher of the real CLI)

    with pytest.raises(AssertionError, match="cannot train on several processes"):
        torchrun("train", config.dataset_dir, "--out", tmp_path / "on", *TINY,
                 "--sparse-embeddings", "on", cwd=tmp_path)  # fmt: skip
