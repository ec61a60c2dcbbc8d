"""Supernet w + θ step pair under the step options of `bionas.trainer.step_options`.

Same model config, same synthetic batch, same seed, one process, one run; the real
`bionas.trainer.step.train_step`:

  baseline       bionas before these options: torch's default Adam/AdamW implementation
                 (a per-tensor loop on CPU, foreach on CUDA), eager, contiguous (NCHW)
  fused          fused Adam/AdamW (what `bionas train` now builds wherever torch has them)
  channels_last  baseline + model and images in channels_last
  compile        baseline + torch.compile of the forward (`--backend`, default inductor)
  all            fused + channels_last + compile

Per variant: a fresh model, then the first w + θ pair (its time is reported apart: for
`compile` it is mostly compiling), `--warmup` more untimed pairs, then `--steps` timed
pairs with a device sync around each step; pair = median w step + median θ step;
img/s = 2B / pair. The dna_bin table is at `--dna-bins` rows and lazy (SparseAdam) as
`--sparse-embeddings auto` makes it at paper scale. `last loss` (the last θ step's) is the
same in the eager variants up to float rounding; compiled ones differ by their dropout
draws (inductor has its own RNG; tests/test_compile_step.py compares without dropout).

    python benchmarks/bench_step_options.py --quick                # CPU, 2-cell C=8, 32 px
    python benchmarks/bench_step_options.py --cells 5 --channels 16 --image-size 64 \
        --batch-size 16 --steps 5 --warmup 2                       # the CPU figures quoted
    python benchmarks/bench_step_options.py --device cuda          # 5-cell C=16, 224 px, AMP
    python benchmarks/bench_step_options.py --variants baseline,fused
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common_train import StepSetup, build, median, step, synthetic_batch
from reporting import format_table, machine_line

from bionas.trainer.config import Amp, TrainConfig
from bionas.trainer.optimizers import build_optimizers
from bionas.trainer.step_options import StepOptions, apply_step_options

VARIANTS = {
    "baseline": StepOptions(),
    "fused": StepOptions(fused_optimizers=True),
    "channels_last": StepOptions(channels_last=True),
    "compile": StepOptions(compile=True),
    "all": StepOptions(compile=True, channels_last=True, fused_optimizers=True),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="2 cells, C=8, 32 px, batch 8, 5 pairs")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    p.add_argument("--cells", type=int, default=5)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dna-bins", type=int, default=324_412)
    p.add_argument("--steps", type=int, default=10, help="timed w + θ pairs")
    p.add_argument("--warmup", type=int, default=3, help="untimed pairs after the first")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="auto: fp16 + loss scaling on CUDA, off on CPU (bionas's defaults)")  # fmt: skip
    p.add_argument("--backend", default="inductor", help="torch.compile backend")
    p.add_argument("--threads", type=int, default=1, help="CPU torch threads")
    args = p.parse_args(argv)
    if args.quick:
        args.cells, args.channels, args.image_size, args.batch_size = 2, 8, 32, 8
        args.dna_bins, args.steps, args.warmup = 100_000, 5, 2
    return args


def amp_for(mode: str, device: torch.device) -> Amp:
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return Amp(False, torch.float32, device.type)
    if device.type == "cuda":
        return Amp(True, torch.float16, "cuda")
    return Amp(True, torch.bfloat16, "cpu")


def measure(options: StepOptions, args: argparse.Namespace, device: torch.device) -> dict:
    """First-pair seconds, median w and θ step seconds, img/s and the last losses."""
    torch._dynamo.reset()  # every compiled variant starts from an empty cache
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    setup = StepSetup(
        image_size=args.image_size, channels=args.channels, cells=args.cells,
        batch_size=args.batch_size, dna_bins=args.dna_bins,
    )  # fmt: skip
    amp = amp_for(args.amp, device)
    model, _ = build(setup, device, amp)
    config = TrainConfig(dataset_dir=Path("."), run_dir=Path("."))
    opts = build_optimizers(model, config, amp, fused=options.fused_optimizers)  # + scalers
    apply_step_options(model, options, backend=args.backend)
    batch = synthetic_batch(setup, device)
    start = time.perf_counter()
    for kind in ("w", "theta"):
        step(model, batch, kind, opts, amp, sync)
    first = time.perf_counter() - start
    for _ in range(args.warmup):
        for kind in ("w", "theta"):
            step(model, batch, kind, opts, amp, sync)
    times: dict[str, list[float]] = {"w": [], "theta": []}
    for _ in range(args.steps):
        for kind in ("w", "theta"):
            seconds, result = step(model, batch, kind, opts, amp, sync)
            times[kind].append(seconds)
    w, theta = median(times["w"]), median(times["theta"])
    return {"first_s": first, "w_s": w, "theta_s": theta, "img_s": 2 * setup.batch_size / (w + theta),
            "loss": result.loss}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cudnn.benchmark = True  # as `bionas train` sets it on CUDA
    names = [n.strip() for n in args.variants.split(",")]
    results = {name: measure(VARIANTS[name], args, device) for name in names}
    base = results.get("baseline")
    rows = [
        [name, f"{r['first_s']:.2f}", f"{r['w_s'] * 1e3:.1f}", f"{r['theta_s'] * 1e3:.1f}",
         f"{r['img_s']:.1f}", f"{r['img_s'] / base['img_s']:.2f}x" if base else "-",
         f"{r['loss']:.4f}"]
        for name, r in results.items()
    ]  # fmt: skip
    print(machine_line())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device: {where}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"{args.cells} cells, C={args.channels}, {args.image_size} px, batch {args.batch_size}, "
        f"dna_bin {args.dna_bins} rows; amp {amp_for(args.amp, device).to_dict()}; "
        f"compile backend {args.backend}; {args.steps} timed pairs after {args.warmup} + 1"
    )
    header = ["variant", "first pair s", "w ms", "θ ms", "img/s", "vs baseline", "last loss"]
    print(format_table(header, rows))


if __name__ == "__main__":
    main()
