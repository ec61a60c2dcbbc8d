"""`--log-every N` and BatchNorm buffer save/restore: what the host-side bookkeeping around
the real `train_step` costs.

Cadence: w/θ step pairs of the real supernet with the loop's bookkeeping around each step:

  per-step   bionas before --log-every: after every step read loss, correct count, grad norm
             and the mean α entropy on the host (`float`, `int`: one sync each) and append
             one steps.jsonl line (open + write)
  N=1..50    `StepWindow`: results stay on the device; every N steps one read (one sync)
             and N lines written with one open

Buffers: a θ step's copy of every buffer and its restore, per buffer (`b.clone()` then
`b.copy_(saved)`, bionas before) vs `save_buffers`/`restore_buffers` (one foreach clone and
one foreach copy per (device, dtype) group); the aten ops each issues are counted too.

On CPU the device is the host: a "sync" costs nothing, so the cadence rows differ by the
Python work and the file appends only. On CUDA (`--device cuda`) the per-step read makes
the host wait for every step, so it cannot queue the next step's kernels early; there the
difference is the point (BENCHMARKS.md, "log cadence").

    python benchmarks/bench_log_cadence.py --quick   # 64 px, 20 pairs, 2 rounds (~1 min)
    python benchmarks/bench_log_cadence.py           # 112 px, 50 pairs, 3 rounds
    python benchmarks/bench_log_cadence.py --device cuda --image-size 224 --batch-size 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch
from _common_train import StepSetup, build, sync, synthetic_batch
from reporting import format_table, machine_line
from torch.utils._python_dispatch import TorchDispatchMode

from bionas.trainer.config import Amp
from bionas.trainer.distributed import SINGLE
from bionas.trainer.logs import append_jsonl, mean_alpha_entropy
from bionas.trainer.step import StepWindow, restore_buffers, save_buffers, train_step


def run_steps(model, opts, batch, amp, pairs: int, every: int | None, log: Path) -> float:
    """Seconds for `pairs` w+θ pairs with the bookkeeping of `every` (None: per step)."""
    device = batch[0].device
    window, entropy = StepWindow(), mean_alpha_entropy(model.alphas())
    sync(device)
    start = time.perf_counter()
    for step in range(1, 2 * pairs + 1):
        kind = "w" if step % 2 else "theta"
        began = time.perf_counter()
        result = train_step(model, *batch, kind, opts, amp)
        if kind == "theta":
            entropy = mean_alpha_entropy(model.alphas())
        if every is None:  # bionas before: every value read as the step ends
            record = {"step": step, "loss": float(result.loss_on_device),
                      "correct": int(result.correct_on_device),
                      "grad_norm": float(result.grad_norm_on_device),
                      "alpha_entropy": float(entropy)}  # fmt: skip
            append_jsonl(log, record)
            continue
        window.add(step, result, entropy, began)
        if step % every == 0 or step == 2 * pairs:
            records = [{"step": s, **vars(v)} for s, v in window.read(SINGLE)]
            append_jsonl(log, *records)
    sync(device)
    return time.perf_counter() - start


def bookkeeping_us(model, opts, batch, amp, every: int | None, log: Path, steps=2000) -> float:
    """µs per step of the bookkeeping alone: one real step's result, logged `steps` times."""
    result = train_step(model, *batch, "w", opts, amp)
    entropy = mean_alpha_entropy(model.alphas())
    window = StepWindow()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if every is None:
            record = {"step": step, "loss": float(result.loss_on_device),
                      "correct": int(result.correct_on_device),
                      "grad_norm": float(result.grad_norm_on_device),
                      "alpha_entropy": float(entropy)}  # fmt: skip
            append_jsonl(log, record)
            continue
        window.add(step, result, entropy, time.perf_counter())
        if step % every == 0:
            append_jsonl(log, *[{"step": s, **vars(v)} for s, v in window.read(SINGLE)])
    return (time.perf_counter() - start) / steps * 1e6


class AtenCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def per_buffer_save_restore(model) -> None:
    saved = [(b, b.clone()) for b in model.buffers()]
    with torch.no_grad():
        for buffer, copy in saved:
            buffer.copy_(copy)


def foreach_save_restore(model) -> None:
    restore_buffers(*save_buffers(model))


def buffer_rows(model, device: torch.device, repeats: int) -> list[list[object]]:
    rows = []
    for name, fn in (("per buffer", per_buffer_save_restore), ("foreach", foreach_save_restore)):
        with AtenCalls() as aten:
            fn(model)
        fn(model)
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn(model)
        sync(device)
        ms = (time.perf_counter() - start) / repeats * 1e3
        rows.append([name, sum(aten.calls.values()), f"{ms:.3f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pairs", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = args.image_size or (64 if args.quick else 112)
    pairs = args.pairs or (20 if args.quick else 50)
    rounds = args.rounds or (2 if args.quick else 3)
    # C=16, 5 cells as in the paper; a small dna_bin table keeps the CPU run short
    setup = StepSetup(image_size=size, batch_size=args.batch_size, dna_bins=1000)
    amp = (
        Amp(device.type == "cuda", torch.float16, device.type)
        if device.type == "cuda"
        else (Amp(False, torch.float32, "cpu"))
    )
    model, opts = build(setup, device, amp)
    batch = synthetic_batch(setup, device)
    variants: list[tuple[str, int | None]] = [("per-step", None), ("N=1", 1), ("N=10", 10),
                                              ("N=50", 50)]  # fmt: skip
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp, "steps.jsonl")
        run_steps(model, opts, batch, amp, 2, 1, log)  # warm-up
        for r in range(rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for name, every in order:
                seconds = run_steps(model, opts, batch, amp, pairs, every, log)
                best[name] = min(best.get(name, float("inf")), seconds)
        alone = {name: bookkeeping_us(model, opts, batch, amp, every, log)
                 for name, every in variants}  # fmt: skip
    base = best["per-step"]
    rows = [
        [name, f"{best[name] / (2 * pairs) * 1e3:.2f}",
         f"{2 * pairs * setup.batch_size / best[name]:.1f}", f"{base / best[name]:.3f}",
         f"{alone[name]:.0f}"]
        for name, _ in variants
    ]  # fmt: skip
    print(machine_line())
    print(f"device {device}, threads {args.threads}, supernet C=16, 5 cells, {size} px, "
          f"batch {setup.batch_size}, {pairs} w+θ pairs, best of {rounds} rounds")  # fmt: skip
    print(format_table(["bookkeeping", "ms/step", "img/s", "vs per-step",
                        "bookkeeping alone µs/step"], rows))  # fmt: skip
    n_buffers = len(list(model.buffers()))
    print(f"\nθ step buffer save + restore ({n_buffers} buffers):")
    print(format_table(["how", "aten ops", "ms"], buffer_rows(model, device, 20)))
    # the paper-scale model's buffer count (224 px does not change it)
    big, _ = build(replace(setup, image_size=32), device, amp)
    print(f"(the supernet at C=16, 5 cells has {len(list(big.buffers()))} buffers)")


if __name__ == "__main__":
    main()
