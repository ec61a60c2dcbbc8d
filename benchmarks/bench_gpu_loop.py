"""Issue 14's goal: the supernet search loop as bionas runs it now vs the loop when the issue
was filed, back to back on one device under an RTX 3060-sized memory cap.

Both run the real model (224 px, C=16, 5 cells, dna_bin at paper scale, fp16 autocast with
loss scaling on CUDA) on one synthetic batch, alternating w and θ steps (Algorithm 1):

  legacy          the loop at 6c7ece1^ (benchmarks/_legacy_loop.py): host reads after every
                  step, BN buffers saved one by one, the prune mask copied to the host after
                  every θ step, dense non-fused AdamW/Adam, a steps.jsonl line per step
  bionas          `train_step` as shipped, results read every --log-every steps through a
                  `StepWindow` (the prune mask copied to the host there), optimisers as
                  `build_optimizers` makes them (fused; lazy rows for dna_bin)
  compile         bionas with the model's forward under torch.compile (--compile on)
  channels-last   bionas with model and images in channels_last (--channels-last on)

Per variant and batch: a fresh model (same seed); `--warmup` pairs whose wall time is the
start-up (cuDNN autotuning, compilation), reported separately; then `--pairs` pairs back to
back with one device sync at the end: img/s = 2 * batch * pairs / seconds. No sync between
steps, so a loop that lets the host run ahead of the GPU shows it. Peak memory is
`torch.cuda.max_memory_allocated` over the timed pairs. `auto` in --batches is the size
each loop's own `--batch-size auto` picks under the cap (legacy: the search without a
margin; bionas: as shipped).

The RTX 3060 estimate of one search epoch over BIOSCAN-5M's 3.6 M train images is a range
from the measured rate, not a measurement (printed with its assumptions).

    python benchmarks/bench_gpu_loop.py                      # CUDA: batches 64,auto
    python benchmarks/bench_gpu_loop.py --smoke-cpu          # the code path on CPU, toy sizes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common_train import StepSetup, build, sync, synthetic_batch
from _legacy_loop import legacy_optimizers, legacy_step
from reporting import format_table, machine, machine_line, uptime_line

from bionas.trainer.batch_size import (
    MAX_BATCH,
    MIN_BATCH,
    cap_gpu_memory,
    is_out_of_memory,
    memory_budget,
    release_cached_memory,
    restoring_probe,
    search_batch_size,
)
from bionas.trainer.config import Amp
from bionas.trainer.distributed import SINGLE
from bionas.trainer.logs import append_jsonl, mean_alpha_entropy
from bionas.trainer.step import StepWindow, train_step
from bionas.trainer.step_options import StepOptions, apply_step_options

NO_GPU_EXIT = 2
VARIANTS = ("legacy", "bionas", "compile", "channels-last")
BIOSCAN_TRAIN_IMAGES = 3_600_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default=None, help="comma list of sizes and/or auto (64,auto)")
    p.add_argument("--variants", default="legacy,bionas,compile,channels-last")
    p.add_argument("--pairs", type=int, default=None, help="timed w+θ pairs (default 50)")
    p.add_argument("--warmup", type=int, default=None, help="start-up pairs (default 5)")
    p.add_argument("--log-every", type=int, default=50, help="bionas: steps per host read")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--cells", type=int, default=5)
    p.add_argument("--gpu-memory-gb", type=float, default=12.0, help="cap (RTX 3060: 12)")
    p.add_argument("--smoke-cpu", action="store_true", help="run the code path on CPU, toy sizes")
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    if args.smoke_cpu:
        args.image_size, args.channels, args.cells = 32, 4, 2
    args.batches = (args.batches or ("4" if args.smoke_cpu else "64,auto")).split(",")
    args.pairs = args.pairs or (3 if args.smoke_cpu else 50)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke_cpu else 5)
    return args


def amp_for(device: torch.device) -> Amp:
    if device.type == "cuda":
        return Amp(True, torch.float16, "cuda")  # bionas's CUDA default: fp16 + loss scaling
    return Amp(False, torch.float32, "cpu")


class Loop:
    """One variant's model, optimisers, batch and step bookkeeping."""

    def __init__(self, variant, model, opts, amp: Amp, batch, log: Path) -> None:
        self.variant, self.model, self.opts, self.amp = variant, model, opts, amp
        self.batch = batch
        if variant in ("channels-last", "compile"):  # as `bionas train --<variant> on` does
            options = StepOptions(channels_last=variant == "channels-last",
                                  compile=variant == "compile")  # fmt: skip
            apply_step_options(model, options)
        self.log, self.step_count = log, 0
        self.window = StepWindow()

    @classmethod
    def build(cls, variant: str, setup: StepSetup, device: torch.device, log: Path) -> Loop:
        """The paper-scale supernet of `setup` (the legacy variant with its old optimisers)."""
        amp = amp_for(device)
        model, opts = build(setup, device, amp, dense_embeddings=variant == "legacy")
        if variant == "legacy":
            opts = legacy_optimizers(model, amp)
        return cls(variant, model, opts, amp, synthetic_batch(setup, device), log)

    def pairs(self, count: int, log_every: int) -> None:
        for _ in range(count):
            for kind in ("w", "theta"):
                self.step_count += 1
                if self.variant == "legacy":
                    legacy_step(self.model, self.batch, kind, self.opts, self.amp, self.log,
                                self.step_count)  # fmt: skip
                    continue
                started = time.perf_counter()
                result = train_step(self.model, *self.batch, kind, self.opts, self.amp)
                entropy = mean_alpha_entropy(self.model.alphas())
                self.window.add({"step": self.step_count}, result, entropy, started)
                if self.step_count % log_every == 0:
                    self.read()
        if self.variant != "legacy":
            self.read()

    def read(self) -> None:
        rows = self.window.read(SINGLE)
        self.model.sync_prune_mask()  # as run_epoch does after each read
        append_jsonl(self.log, *[{**info, "loss": v.loss} for info, v in rows])


def time_loop(loop: Loop, warmup: int, pairs: int, log_every: int) -> dict:
    """Start-up seconds of `warmup` pairs, then img/s and peak memory of `pairs` more."""
    device = loop.batch[0].device
    sync(device)
    start = time.perf_counter()
    loop.pairs(warmup, log_every)
    sync(device)
    startup = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    loop.pairs(pairs, log_every)
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    batch_size = loop.batch[0].shape[0]
    return {"ok": True, "startup_s": startup, "img_s": 2 * batch_size * pairs / seconds,
            "peak": peak}  # fmt: skip


def measure(variant: str, setup: StepSetup, device: torch.device, args) -> dict:
    """`time_loop` of a fresh paper-scale model; {"ok": False} on OOM."""
    out_of_memory, loop = False, None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            loop = Loop.build(variant, setup, device, Path(tmp) / "steps.jsonl")
            result = time_loop(loop, args.warmup, args.pairs, args.log_every)
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        out_of_memory = True  # leave the except block first, so the failed step's frames go
    del loop
    release_cached_memory()
    torch._dynamo.reset()
    return {"ok": False} if out_of_memory else result


def auto_batch(variant: str, setup: StepSetup, device: torch.device, gpu_memory_gb: float) -> int:
    """The size each loop's `--batch-size auto` picks under the cap (on CPU: toy range):
    legacy, the largest step that does not run out of memory; bionas, one whose peak stays
    within (1 - MEMORY_MARGIN) of the budget."""
    loop = Loop.build(variant, setup, device, Path(tempfile.mkdtemp()) / "probe.jsonl")

    def probe_step(batch_size: int) -> None:
        images, meta, labels = synthetic_batch(
            StepSetup(**{**vars(setup), "batch_size": batch_size}), device
        )
        scaler = torch.amp.GradScaler("cuda", init_scale=1.0, enabled=loop.amp.loss_scaling)
        loop.opts.w_scaler = loop.opts.theta_scaler = scaler
        for kind in ("w", "theta"):
            train_step(loop.model, images, meta, labels, kind, loop.opts, loop.amp)

    cuda = device.type == "cuda"
    budget = None
    if cuda and variant != "legacy":
        total = torch.cuda.get_device_properties(device).total_memory
        budget = memory_budget(gpu_memory_gb, total)
    fits = restoring_probe(loop.model, probe_step, budget=budget)
    chosen = search_batch_size(fits, *((MIN_BATCH, MAX_BATCH) if cuda else (2, 8)))
    loop = None  # the model and its optimiser state go before the next measurement
    release_cached_memory()
    return chosen


def rtx3060_epoch_hours(img_s: float) -> tuple[float, float]:
    """A range for one search epoch over 3.6 M images on an RTX 3060 from an H100/H200 rate.

    Low end: the step stays bound by kernel launches (host-side), which a 3060 issues as fast
    as an H100: the same img/s. High end: the step becomes bound by memory traffic, scaled
    by the cards' bandwidth, 3.35 TB/s (H100 SXM) / 360 GB/s (RTX 3060) = 9.3x. A 3060's
    fp16 tensor throughput is ~1/20 of an H100's, so a compute-bound step would be slower
    still; the supernet's small convolutions are not compute-bound at C=16 (section 9)."""
    hours = BIOSCAN_TRAIN_IMAGES / img_s / 3600
    return hours, hours * 3350 / 360


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke_cpu else "cpu")
    if device.type != "cuda" and not args.smoke_cpu:
        print("bench_gpu_loop.py needs a CUDA GPU (or --smoke-cpu)", file=sys.stderr)
        raise SystemExit(NO_GPU_EXIT)
    print(machine_line(machine()))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        fraction = cap_gpu_memory(args.gpu_memory_gb, device)
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
              f"cap {args.gpu_memory_gb:g} GiB (fraction {fraction:.3f})")  # fmt: skip
    print(uptime_line(), flush=True)
    base = StepSetup(channels=args.channels, cells=args.cells, image_size=args.image_size)
    rows, results = [], {}
    for label in args.batches:
        for variant in args.variants:
            size = (auto_batch(variant, base, device, args.gpu_memory_gb) if label == "auto"
                    else int(label))  # fmt: skip
            setup = StepSetup(**{**vars(base), "batch_size": size})
            r = measure(variant, setup, device, args)
            results[(label, variant)] = r
            print(f"  batch {label}={size} {variant:<13} " + (
                f"{r['img_s']:8.1f} img/s, start-up {r['startup_s']:.1f} s, "
                f"peak {r['peak'] / 2**30:.2f} GiB" if r["ok"] else "OOM"), flush=True)  # fmt: skip
            legacy = results.get((label, "legacy"))
            ratio = "-"
            if r["ok"] and legacy and legacy["ok"]:
                ratio = f"{r['img_s'] / legacy['img_s']:.2f}x"
            rows.append([label, size, variant,
                         f"{r['img_s']:.0f}" if r["ok"] else "OOM",
                         ratio,
                         f"{r['startup_s']:.1f}" if r["ok"] else "-",
                         f"{r['peak'] / 2**30:.2f}" if r["ok"] else "-"])  # fmt: skip
    print("\nsearch loop (w+θ pairs), legacy = the loop when issue 14 was filed")
    print(format_table(
        ["batch", "size", "variant", "img/s", "vs legacy", "start-up s", "peak GiB"], rows
    ))  # fmt: skip
    best = max((r["img_s"] for (_, v), r in results.items() if r["ok"] and v != "legacy"),
               default=None)  # fmt: skip
    if best and device.type == "cuda":
        low, high = rtx3060_epoch_hours(best)
        print(f"\nRTX 3060 estimate, one search epoch over {BIOSCAN_TRAIN_IMAGES:,} images at "
              f"{best:.0f} img/s measured here: {low:.1f} h (launch-bound, same rate) to "
              f"{high:.1f} h (bandwidth-bound, /9.3); see rtx3060_epoch_hours")  # fmt: skip
    print(uptime_line())


if __name__ == "__main__":
    main()
