"""The CUDA-only paths, on a real GPU: AMP fp16 with loss scaling, the memory cap, the
adaptive batch search with real out-of-memory errors, `bionas train/evaluate --device cuda`
end to end, and NCCL under torchrun. Skipped where CUDA is absent (CI); run on a lent GPU
with `pytest tests/test_gpu.py` and recorded in BENCHMARKS.md section 9."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.cli import main
from bionas.trainer.batch_size import (
    cap_gpu_memory,
    release_cached_memory,
    restoring_probe,
    search_batch_size,
)
from bionas.trainer.config import TrainConfig, resolve_amp
from bionas.trainer.logs import read_jsonl
from bionas.trainer.model import ModelConfig, build_model
from bionas.trainer.optimizers import build_optimizers
from bionas.trainer.step import train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")
CONFIG = TrainConfig(dataset_dir=".", run_dir=".")


def supernet(channels: int = 8, cells: int = 3):
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=5, meta_cardinalities=(("dna_bin", 50), ("class", 4)),
                      channels=channels, cells=cells, embed_dim=32, meta_embed_dim=8)  # fmt: skip
    return build_model(cfg).to(CUDA)


def batch(size: int, image_size: int = 64):
    g = torch.Generator(device=CUDA).manual_seed(1)
    images = torch.randn(size, 3, image_size, image_size, device=CUDA, generator=g)
    meta = torch.randint(0, 4, (size, 2), device=CUDA, generator=g)
    labels = torch.randint(0, 5, (size,), device=CUDA, generator=g)
    return images, meta, labels


@pytest.fixture
def uncapped():
    """Each test starts and ends with the whole device (the cap is per process)."""
    torch.cuda.set_per_process_memory_fraction(1.0, 0)
    yield
    torch.cuda.set_per_process_memory_fraction(1.0, 0)
    release_cached_memory()


def test_cuda_default_is_fp16_autocast_with_one_loss_scaler_per_optimiser(uncapped):
    amp = resolve_amp(CONFIG, CUDA)
    assert amp.enabled and amp.dtype == torch.float16 and amp.loss_scaling
    model = supernet()
    opts = build_optimizers(model, CONFIG, amp)
    assert opts.w_scaler is not opts.theta_scaler
    assert opts.w_scaler.is_enabled() and opts.theta_scaler.is_enabled()
    seen = []
    hook = model.image_encoder.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    theta_before = [p.detach().clone() for p in model.arch_parameters()]
    w_before = [p.detach().clone() for p in model.weight_parameters()]
    losses = []
    for step in range(8):
        kind = "w" if step % 2 == 0 else "theta"
        losses.append(train_step(model, *batch(16), kind, opts, amp).loss)
    hook.remove()
    assert torch.float16 in seen, seen  # the image encoder ran in half precision
    assert all(torch.isfinite(torch.tensor(losses)))
    for scaler in (opts.w_scaler, opts.theta_scaler):
        assert 0 < scaler.get_scale() < float("inf")
    assert any(
        not torch.equal(a, b) for a, b in zip(theta_before, model.arch_parameters(), strict=True)
    )
    assert any(
        not torch.equal(a, b) for a, b in zip(w_before, model.weight_parameters(), strict=True)
    )
    # master weights stay fp32 under autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_autocast_needs_no_loss_scaling(uncapped):

    amp = resolve_amp(replace(CONFIG, amp_dtype="bf16"), CUDA)
    assert amp.dtype == torch.bfloat16 and not amp.loss_scaling
    model = supernet()
    opts = build_optimizers(model, CONFIG, amp)
    assert not opts.w_scaler.is_enabled()
    result = train_step(model, *batch(16), "w", opts, amp)
    assert torch.isfinite(torch.tensor(result.loss))


def test_the_memory_cap_turns_an_oversized_step_into_an_out_of_memory_error(uncapped):
    fraction = cap_gpu_memory(1.0, CUDA)  # 1 GiB of an 80 GiB card
    assert 0 < fraction < 0.05
    with pytest.raises(torch.OutOfMemoryError):
        torch.empty(2 * 2**30, dtype=torch.uint8, device=CUDA)


def test_batch_search_finds_the_largest_step_that_fits_under_the_cap(uncapped):
    """With a cap that a batch of 512 overflows, the search lands between the largest
    fitting and the smallest failing size, and puts the model back as it found it."""
    cap_gpu_memory(2.0, CUDA)
    model = supernet(channels=16, cells=5)
    amp = resolve_amp(CONFIG, CUDA)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def step(size: int) -> None:
        opts = build_optimizers(model, CONFIG, amp)
        for kind in ("w", "theta"):
            train_step(model, *batch(size, 128), kind, opts, amp)

    tried: list[tuple[int, bool]] = []
    probe = restoring_probe(model, step)

    def fits(size: int) -> bool:
        tried.append((size, probe(size)))
        return tried[-1][1]

    chosen = search_batch_size(fits)
    assert 32 <= chosen < 512 and chosen % 8 == 0, tried
    assert (chosen, True) in tried
    failed = [size for size, ok in tried if not ok]
    assert failed and min(failed) > chosen, tried
    assert len(tried) <= 10
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    print(f"batch search under a 2 GiB cap: {tried} -> {chosen}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("gpu") / "ds", n=160, image_size=64)


def bionas(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


SMALL = ["--image-size", "64", "--cells", "3", "--channels", "8", "--workers", "2", "--quiet"]


def test_train_resume_and_evaluate_on_cuda_with_an_automatic_batch_size(
    dataset, tmp_path, uncapped
):
    run = tmp_path / "run"
    args = ["train", dataset, "--out", run, "--device", "cuda", "--batch-size", "auto",
            "--gpu-memory-gb", "4", *SMALL]  # fmt: skip
    result = bionas(*args, "--epochs", "1")
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["amp"] == {"enabled": True, "dtype": "float16"}
    assert config["batch_size"] == 160, (
        config
    )  # searched; all fits, so capped by the 160 train samples
    resumed = bionas(*args, "--epochs", "2", "--resume")
    assert resumed.exit_code == 0, resumed.output
    epochs = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["train_loss"] == e["train_loss"] for e in epochs)  # not NaN
    report = bionas("evaluate", run, "--device", "cuda", "--split", "val")
    assert report.exit_code == 0, report.output


def test_nccl_process_group_under_torchrun(dataset, tmp_path, uncapped):
    """One rank per GPU: here one rank on the one GPU, over NCCL."""
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "1", "-m", "bionas", "-v", "train", str(dataset), "--out",
               str(run), "--device", "cuda", "--batch-size", "16", "--epochs", "1", *SMALL]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert "nccl" in (done.stdout + done.stderr).lower()
    assert (run / "model.pt").is_file()


# --- issue 14: the step options, the probe's margin and out-of-memory recovery on CUDA ---


def alternating_steps(options, amp, steps: int = 6, backend: str | None = None):
    """Losses of w/θ steps of the small supernet (no dropout) under `options`, and the model."""
    from bionas.trainer.step_options import apply_step_options

    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=5, meta_cardinalities=(("dna_bin", 50), ("class", 4)),
                      channels=8, cells=3, embed_dim=32, meta_embed_dim=8, dropout=0.0)  # fmt: skip
    model = build_model(cfg).to(CUDA)
    opts = build_optimizers(model, CONFIG, amp)
    apply_step_options(model, options, backend=backend)
    losses = [train_step(model, *batch(16), "w" if i % 2 == 0 else "theta", opts, amp).loss
              for i in range(steps)]  # fmt: skip
    return losses, model


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_compiled_and_channels_last_steps_give_the_eager_losses_on_cuda(uncapped, precision):
    from bionas.trainer.config import Amp
    from bionas.trainer.step_options import StepOptions

    amp = (Amp(False, torch.float32, "cuda") if precision == "fp32"
           else resolve_amp(CONFIG, CUDA))  # fmt: skip
    tolerance = 1e-4 if precision == "fp32" else 2e-2
    eager, _ = alternating_steps(StepOptions(), amp)
    torch._dynamo.reset()
    compiled, _ = alternating_steps(StepOptions(compile=True), amp)  # inductor (Triton)
    torch._dynamo.reset()
    nhwc, model = alternating_steps(StepOptions(channels_last=True), amp)
    assert compiled == pytest.approx(eager, abs=tolerance), (compiled, eager)
    assert nhwc == pytest.approx(eager, abs=tolerance), (nhwc, eager)
    conv = next(p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last)


def test_the_probe_keeps_its_margin_and_leaves_the_cuda_rng_alone(uncapped):
    from bionas.trainer.batch_size import MEMORY_MARGIN, cuda_peak_bytes

    budget = 2 * 2**30
    cap_gpu_memory(2.0, CUDA)
    model = supernet(channels=16, cells=5)
    amp = resolve_amp(CONFIG, CUDA)

    def step(size: int) -> None:
        opts = build_optimizers(model, CONFIG, amp)
        for kind in ("w", "theta"):
            train_step(model, *batch(size, 128), kind, opts, amp)

    peaks: dict[int, int] = {}
    cuda_rng, cpu_rng = torch.cuda.get_rng_state(), torch.get_rng_state()
    probe = restoring_probe(model, step, budget=budget, peaks=peaks, rng_devices=[0],
                            measure=cuda_peak_bytes)  # fmt: skip
    chosen = search_batch_size(probe)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)
    assert torch.equal(torch.get_rng_state(), cpu_rng)
    assert peaks[chosen] <= (1 - MEMORY_MARGIN) * budget, (chosen, peaks)
    larger = [size for size, peak in peaks.items() if size > chosen]
    assert all(peaks[s] > (1 - MEMORY_MARGIN) * budget for s in larger), peaks
    print(f"probe under a 2 GiB budget, {MEMORY_MARGIN:.0%} kept: peaks {peaks} -> {chosen}")


def test_a_real_out_of_memory_mid_training_halves_the_batch_and_finishes(
    dataset, tmp_path, uncapped
):
    """A cap between the peaks of batch 64 and batch 128 (measured on this card first):
    a run started at 128 runs out of memory, halves to 64 and trains on."""
    from bionas.trainer.config import TrainConfig
    from bionas.trainer.loop import train

    base = TrainConfig(dataset_dir=dataset, run_dir=tmp_path / "probe", device="cuda",
                       image_size=64, cells=3, channels=8, workers=0, quiet=True,
                       epochs=1, max_steps=2)  # fmt: skip
    peaks = {}
    for size in (64, 128):
        torch.cuda.reset_peak_memory_stats()
        train(replace(base, batch_size=size, run_dir=tmp_path / f"probe{size}"))
        peaks[size] = torch.cuda.max_memory_allocated()
        release_cached_memory()
    assert peaks[64] < peaks[128], peaks
    cap = (peaks[64] + peaks[128]) / 2 / 2**30
    config = replace(base, batch_size=128, gpu_memory_gb=cap, max_steps=None,
                            run_dir=tmp_path / "run")  # fmt: skip
    (epoch,) = train(config)
    events = read_jsonl(config.run_dir / "events.jsonl")
    assert events and events[0]["reason"] == "out_of_memory", events
    assert (events[0]["from"], events[-1]["to"]) == (128, 64), events
    steps = read_jsonl(config.run_dir / "steps.jsonl")
    assert all(s["samples"] == 64 for s in steps), steps
    print(f"peaks {peaks}, cap {cap:.3f} GiB: {events}")
