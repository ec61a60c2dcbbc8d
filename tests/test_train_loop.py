"""Algorithm 1 step by step, and short training runs on a tiny dataset (CPU)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.trainer.config import Amp, TrainConfig
from bionas.trainer.logs import read_jsonl
from bionas.trainer.loop import train
from bionas.trainer.model import ModelConfig, build_model
from bionas.trainer.optimizers import build_optimizers
from bionas.trainer.step import task_loss, train_step

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FP32 = Amp(False, torch.float32, "cpu")
CONFIG = TrainConfig(dataset_dir=".", run_dir=".")


def supernet(dropout: float = 0.2):
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=3, meta_cardinalities=(("dna_bin", 6), ("class", 3)),
                      channels=4, cells=3, embed_dim=16, meta_embed_dim=4, dropout=dropout)  # fmt: skip
    return build_model(cfg)


def batch(size: int = 8):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(size, 3, 32, 32, generator=generator)
    meta = torch.randint(0, 3, (size, 2), generator=generator)
    labels = torch.randint(0, 3, (size,), generator=generator)
    return images, meta, labels


def snapshot(tensors):
    return [t.detach().clone() for t in tensors]


def test_even_step_updates_only_the_weights():
    model = supernet()
    opts = build_optimizers(model, CONFIG, FP32)
    theta, weights = snapshot(model.arch_parameters()), snapshot(model.weight_parameters())
    train_step(model, *batch(), "w", opts, FP32)
    assert all(torch.equal(a, b) for a, b in zip(theta, model.arch_parameters(), strict=True))
    changed = [
        not torch.equal(a, b) for a, b in zip(weights, model.weight_parameters(), strict=True)
    ]
    assert sum(changed) > len(changed) // 2


def test_odd_step_updates_only_theta_and_keeps_every_weight_and_buffer():
    model = supernet()
    opts = build_optimizers(model, CONFIG, FP32)
    train_step(model, *batch(), "w", opts, FP32)  # AdamW state exists, as in a real run
    theta, weights = snapshot(model.arch_parameters()), snapshot(model.weight_parameters())
    buffers = snapshot(model.buffers())
    train_step(model, *batch(), "theta", opts, FP32)
    assert not torch.equal(theta[0], model.arch_parameters()[0])
    assert all(torch.equal(a, b) for a, b in zip(weights, model.weight_parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))


def test_w_steps_do_update_batchnorm_running_statistics():
    model = supernet()
    opts = build_optimizers(model, CONFIG, FP32)
    buffers = snapshot(model.buffers())
    train_step(model, *batch(), "w", opts, FP32)
    assert any(not torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))


@pytest.mark.parametrize("kind", ["w", "theta"])
def test_gradients_are_clipped_to_norm_one(kind):
    model = supernet()
    with torch.no_grad():
        for p in model.fusion.parameters():
            p.mul_(1000.0)  # huge logits: a huge loss and huge gradients
    opts = build_optimizers(model, CONFIG, FP32)
    result = train_step(model, *batch(), kind, opts, FP32)
    params = model.weight_parameters() if kind == "w" else model.arch_parameters()
    after = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in params if p.grad is not None])
    )
    assert result.grad_norm > 1.0
    assert after <= 1.0 + 1e-5


def test_label_smoothing_makes_a_perfect_prediction_cost_something():
    logits = torch.tensor([[40.0, -40.0, -40.0]])
    labels = torch.tensor([0])
    assert F.cross_entropy(logits, labels) < 1e-6
    assert task_loss(logits, labels) == pytest.approx(0.1 * 2 / 3 * 80, rel=1e-4)


def test_the_step_loss_is_the_smoothed_cross_entropy():
    model = supernet(dropout=0.0)
    opts = build_optimizers(model, CONFIG, FP32)
    images, meta, labels = batch()
    with torch.no_grad():
        logits = model(images, meta)
    result = train_step(model, images, meta, labels, "w", opts, FP32)
    smoothed = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert result.loss == pytest.approx(float(smoothed), rel=1e-5)
    assert result.loss != pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-3)


def test_theta_optimizer_choice_and_paper_hyperparameters():
    model = supernet()
    opts = build_optimizers(model, CONFIG, FP32)
    assert type(opts.w) is torch.optim.AdamW and type(opts.theta) is torch.optim.Adam
    assert opts.w.defaults["lr"] == 1e-3 and opts.w.defaults["weight_decay"] == 1e-4
    assert opts.theta.defaults["lr"] == 3e-4 and opts.theta.defaults["weight_decay"] == 1e-3
    assert all(p is not model.theta for p in opts.w.param_groups[0]["params"])
    decoupled = build_optimizers(model, replace(CONFIG, theta_optimizer="adamw"), FP32)
    assert type(decoupled.theta) is torch.optim.AdamW


def test_bf16_autocast_step_on_cpu():
    model = supernet()
    amp = Amp(True, torch.bfloat16, "cpu")
    opts = build_optimizers(model, CONFIG, amp)
    assert not amp.loss_scaling and not opts.w_scaler.is_enabled()
    result = train_step(model, *batch(), "w", opts, amp)
    assert torch.isfinite(torch.tensor(result.loss))
    assert model.theta.dtype == torch.float32


def test_a_fixed_genotype_has_no_theta_step():
    model = build_model(replace(supernet().cfg, genotype=supernet().genotype()))
    opts = build_optimizers(model, CONFIG, FP32)
    assert opts.theta is None
    with pytest.raises(ValueError, match="theta"):
        train_step(model, *batch(), "theta", opts, FP32)


def tiny_config(tmp_path, **changes):
    dataset = make_tiny_dataset(tmp_path / "ds", n=48, shards_per_split=3)
    base = TrainConfig(dataset_dir=dataset, run_dir=tmp_path / "run", epochs=1, batch_size=8,
                       image_size=32, cells=3, channels=4, embed_dim=16, meta_embed_dim=4,
                       workers=0, shuffle_buffer=16, quiet=True)  # fmt: skip
    return replace(base, **changes)


def test_one_epoch_alternates_w_and_theta_and_logs_collapse_monitors(tmp_path):
    config = tiny_config(tmp_path)
    (epoch,) = train(config)
    steps = read_jsonl(config.run_dir / "steps.jsonl")
    assert [s["kind"] for s in steps] == ["w", "theta"] * 3  # 48 samples / 8
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert epoch["val_samples"] == 12 and 0 <= epoch["val_acc"] <= 1
    for key in ("alpha_entropy", "param_free_mass", "skip_count", "pruned_ops", "argmax"):
        assert key in epoch
    assert len(epoch["alpha_entropy"]) == 9  # 3 cells x 3 edges
    alphas = read_jsonl(config.run_dir / "alphas.jsonl")
    assert [a["epoch"] for a in alphas] == [0, 1]
    assert sum(alphas[1]["alphas"]["cell0.e1"].values()) == pytest.approx(1.0)


def test_warmup_epochs_update_only_the_weights(tmp_path):
    config = tiny_config(tmp_path, epochs=2, warmup_epochs=1)
    history = train(config)
    kinds = [(s["epoch"], s["kind"]) for s in read_jsonl(config.run_dir / "steps.jsonl")]
    assert {k for e, k in kinds if e == 1} == {"w"}
    assert [k for e, k in kinds if e == 2] == ["w", "theta"] * 3
    assert [h["searching"] for h in history] == [False, True]


def test_heldout_arch_data_puts_a_theta_step_after_every_w_step(tmp_path):
    config = tiny_config(tmp_path, arch_data="heldout", heldout_fraction=0.25)
    (epoch,) = train(config)
    steps = read_jsonl(config.run_dir / "steps.jsonl")
    assert [s["kind"] for s in steps] == ["w", "theta"] * 4  # 1 of 3 shards held: 32 // 8
    assert epoch["theta_acc"] is not None


def test_max_steps_stops_and_checkpoints_mid_epoch(tmp_path):
    config = tiny_config(tmp_path, max_steps=4)
    assert train(config) == []
    assert len(read_jsonl(config.run_dir / "steps.jsonl")) == 4
    assert (config.run_dir / "model.pt").exists()
    assert (config.run_dir / "checkpoints" / "last.pt").exists()
