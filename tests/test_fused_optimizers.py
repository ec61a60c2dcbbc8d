"""Fused Adam/AdamW (trainer.optimizers): same steps as torch's default implementation,
GradScaler's inf check without a host read, and checkpoints that load across the two."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import torch
from tiny_supernet import batches, supernet  # tests/tiny_supernet.py

from bionas.trainer.config import Amp, TrainConfig
from bionas.trainer.optimizers import LazyRowsAdamW, build_optimizers
from bionas.trainer.step import train_step

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FP32 = Amp(False, torch.float32, "cpu")
CONFIG = TrainConfig(dataset_dir=".", run_dir=".")
LAZY = replace(CONFIG, sparse_embeddings="on")  # the w optimiser is a LazyRowsAdamW


def train(model, opts, steps):
    for i, batch in enumerate(steps):
        train_step(model, *batch, "w" if i % 2 == 0 else "theta", opts, FP32)


def close(a, b, atol=1e-5):
    return all(torch.allclose(x, y, atol=atol, rtol=1e-4) for x, y in zip(a, b, strict=True))


def with_scalers(opts, **kwargs):
    scalers = [torch.amp.GradScaler("cpu", **kwargs) for _ in range(2)]
    return replace(opts, w_scaler=scalers[0], theta_scaler=scalers[1])


def test_optimisers_are_fused_on_cpu_by_default():
    model = supernet()
    opts = build_optimizers(model, CONFIG, FP32)
    assert opts.w.param_groups[0]["fused"] and opts.theta.param_groups[0]["fused"]
    lazy = build_optimizers(supernet(), LAZY, FP32).w
    assert isinstance(lazy, LazyRowsAdamW) and lazy.dense.param_groups[0]["fused"]


@pytest.mark.parametrize("config", [CONFIG, LAZY], ids=["adamw", "lazy-rows"])
def test_fused_steps_give_the_parameters_of_the_default_implementation(config):
    steps = batches(6)
    fused, plain = supernet(), supernet()
    train(fused, build_optimizers(fused, config, FP32, fused=True), steps)
    train(plain, build_optimizers(plain, config, FP32, fused=False), steps)
    assert close(fused.parameters(), plain.parameters())
    assert not close(fused.parameters(), supernet().parameters())  # they did move


@pytest.mark.parametrize("config", [CONFIG, LAZY], ids=["adamw", "lazy-rows"])
def test_inf_gradient_skips_the_step_and_halves_the_scale(config):
    model = supernet()
    opts = with_scalers(build_optimizers(model, config, FP32), init_scale=1024.0)
    images, meta, labels = batches(1)[0]
    train_step(model, images, meta, labels, "w", opts, FP32)  # optimiser state exists
    before = [p.detach().clone() for p in model.parameters()]
    images[0, 0, 0, 0] = float("inf")  # NaN loss, NaN gradients everywhere
    train_step(model, images, meta, labels, "w", opts, FP32)
    assert opts.w_scaler.get_scale() == 512.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    dense = opts.w.dense if isinstance(opts.w, LazyRowsAdamW) else opts.w
    steps = {float(s["step"]) for s in dense.state.values()}
    assert steps == {1.0}  # the skipped step is not counted in Adam's bias correction


def item_calls_in_scaler_step(config, fused, monkeypatch):
    """Tensor.item calls inside GradScaler.step of one loss-scaled w step."""
    model = supernet()
    opts = with_scalers(build_optimizers(model, config, FP32, fused=fused))
    images, meta, labels = batches(1)[0]
    for p in model.arch_parameters():
        p.requires_grad_(False)
    loss = torch.nn.functional.cross_entropy(model(images, meta), labels)
    opts.w_scaler.scale(loss).backward()
    opts.w_scaler.unscale_(opts.w)  # as train_step does, before clipping
    calls = []
    item = torch.Tensor.item

    def counted(self):
        calls.append(self)
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counted)
    opts.w_scaler.step(opts.w)
    monkeypatch.setattr(torch.Tensor, "item", item)
    opts.w_scaler.update()
    return len(calls)


def test_fused_step_reads_no_inf_flag_on_the_host(monkeypatch):
    assert item_calls_in_scaler_step(CONFIG, True, monkeypatch) == 0
    assert item_calls_in_scaler_step(CONFIG, False, monkeypatch) >= 1  # the count does count


def test_lazy_rows_read_the_inf_flag_once_for_the_sparse_part(monkeypatch):
    assert item_calls_in_scaler_step(LAZY, True, monkeypatch) == 1


def test_lazy_rows_unscale_in_step_when_unscale_was_not_called():
    """GradScaler.step without unscale_ hands the scale to the optimiser: both parts divide."""
    results = []
    for fused in (True, False):
        model = supernet()
        opts = with_scalers(build_optimizers(model, LAZY, FP32, fused=fused), init_scale=256.0)
        for p in model.arch_parameters():
            p.requires_grad_(False)
        images, meta, labels = batches(1)[0]
        loss = torch.nn.functional.cross_entropy(model(images, meta), labels)
        opts.w_scaler.scale(loss).backward()
        opts.w_scaler.step(opts.w)
        results.append([p.detach().clone() for p in model.weight_parameters()])
    assert close(*results)


def round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # as checkpoints load


@pytest.mark.parametrize("config", [CONFIG, LAZY], ids=["adamw", "lazy-rows"])
@pytest.mark.parametrize("saved_fused", [False, True], ids=["default-to-fused", "fused-to-default"])
def test_checkpoints_load_across_fused_and_default(config, saved_fused):
    steps = batches(8)
    straight = supernet()
    train(straight, build_optimizers(straight, config, FP32, fused=saved_fused), steps)

    first = supernet()
    opts = build_optimizers(first, config, FP32, fused=saved_fused)
    train(first, opts, steps[:4])
    saved = round_trip({"model": first.state_dict(), "w": opts.w.state_dict(),
                        "theta": opts.theta.state_dict()})  # fmt: skip
    resumed = supernet()
    resumed.load_state_dict(saved["model"])
    other = with_scalers(build_optimizers(resumed, config, FP32, fused=not saved_fused))
    other.w.load_state_dict(saved["w"])
    other.theta.load_state_dict(saved["theta"])
    dense = other.w.dense if isinstance(other.w, LazyRowsAdamW) else other.w
    assert bool(dense.param_groups[0]["fused"]) == (not saved_fused)  # its own kind stays
    assert bool(other.theta.param_groups[0]["fused"]) == (not saved_fused)
    train(resumed, other, steps[4:])  # through an enabled GradScaler: found_inf is passed
    assert close(resumed.parameters(), straight.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_loss_scaled_fused_step_on_cuda_never_waits_for_the_gpu():
    model = supernet().cuda()
    fp16 = Amp(True, torch.float16, "cuda")
    opts = build_optimizers(model, CONFIG, fp16)
    assert opts.w.param_groups[0]["fused"] and opts.w_scaler.is_enabled()
    images, meta, labels = (t.cuda() for t in batches(1)[0])
    train_step(model, images, meta, labels, "w", opts, fp16)  # optimiser state exists
    with fp16.autocast():
        loss = torch.nn.functional.cross_entropy(model(images, meta).float(), labels)
    opts.w_scaler.scale(loss).backward()
    opts.w_scaler.unscale_(opts.w)
    torch.cuda.set_sync_debug_mode("error")  # any host sync raises
    try:
        opts.w_scaler.step(opts.w)
        opts.w_scaler.update()
    finally:
        torch.cuda.set_sync_debug_mode("default")
