"""Supernet training on one CUDA GPU under an RTX 3060-sized memory cap: img/s and peak memory.

Needs a CUDA GPU; on a machine without one it says so and exits (status 2) before
measuring anything. `--help` works anywhere.

Everything runs the real `bionas.trainer.step.train_step` on synthetic inputs of the real
shapes (224 px images, dna_bin + class metadata indices at paper scale, 21 classes), one
w step (AdamW on the weights) and one θ step (Adam on the logits) alternating as in
Algorithm 1, with the process capped at `--gpu-memory-gb` (default 12) through
`bionas.trainer.batch_size.cap_gpu_memory` (torch.cuda.set_per_process_memory_fraction):

  precision   amp  = fp16 autocast + dynamic loss scaling (bionas's CUDA default)
              fp32 = no autocast (the baseline for the AMP column)
  mixed op    bionas (as shipped), opwise and stacked (earlier bionas forms, see
              benchmarks/_common_train.py) and, for reference, naive-stack: the DARTS-style
              (stack(outputs) * α.view(-1,1,1,1,1)).sum(0), which under autocast promotes
              the stack to fp32 (see the issue's "Known traps")
  batch       32, 64, 128 (a batch that does not fit the cap is reported as OOM)

Per configuration: a fresh model (same seed), `--warmup` untimed w + θ pairs (cudnn
benchmark picks its algorithms there), then `--steps` timed pairs with a device sync
around each step. img/s = 2B / (t_w + t_θ) over the median pair; peak = the largest
`torch.cuda.max_memory_allocated` during the timed steps (reset after warm-up, so
cudnn's autotuning workspaces are not counted; parameters, optimiser state, gradients
and activations are), plus max reserved by the caching allocator.

Then the adaptive batch size: the search `bionas train --batch-size auto` runs
(`search_batch_size` over a `restoring_probe` of a real w + θ step, doubling from 32 to
512, then bisecting on multiples of 8), for amp and fp32, with the time it took.

    python benchmarks/bench_gpu.py --quick            # batches 32, 64; 3 timed pairs
    python benchmarks/bench_gpu.py                    # batches 32, 64, 128; 10 pairs
    python benchmarks/bench_gpu.py --gpu-memory-gb 24 --dilated separable
"""

from __future__ import annotations

import argparse
import sys

NO_GPU_EXIT = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Needs CUDA; exits with status 2 and a message where there is none.",
    )
    p.add_argument("--quick", action="store_true", help="batches 32, 64 and 3 timed pairs")
    p.add_argument("--batches", default=None, help="comma list (default 32,64,128)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--cells", type=int, default=5)
    p.add_argument("--dilated", choices=("full", "separable"), default="full")
    p.add_argument("--gpu-memory-gb", type=float, default=12.0, help="cap (RTX 3060: 12)")
    p.add_argument("--precisions", default="amp,fp32", help="from amp, bf16, fp32")
    p.add_argument(
        "--variants", default="bionas,naive-stack", help="from bionas, naive-sum, naive-stack"
    )
    p.add_argument("--steps", type=int, help="timed w + θ pairs (default 10; quick 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed pairs first")
    p.add_argument("--no-search", dest="search", action="store_false", help="skip the batch search")
    # runs the same code on CPU at toy sizes, without CUDA memory figures: a smoke test
    p.add_argument("--smoke-cpu", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    default_batches = "2,4" if args.smoke_cpu else ("32,64" if args.quick else "32,64,128")
    args.batches = [int(b) for b in (args.batches or default_batches).split(",")]
    args.steps = args.steps or (3 if args.quick or args.smoke_cpu else 10)
    args.precisions = [x for x in args.precisions.split(",") if x]
    args.variants = [x for x in args.variants.split(",") if x]
    if args.smoke_cpu:
        args.image_size, args.warmup = 32, 1
    return args


def require_cuda(args: argparse.Namespace) -> None:
    import torch

    if args.smoke_cpu or torch.cuda.is_available():
        return
    built = torch.version.cuda or "none (CPU-only build)"
    print(
        "bench_gpu.py measures CUDA training and needs an NVIDIA GPU, but "
        f"torch.cuda.is_available() is False here (torch {torch.__version__}, CUDA build: "
        f"{built}). Run it on a machine with a GPU; on CPU use "
        "benchmarks/bench_supernet_step.py.",
        file=sys.stderr,
    )
    raise SystemExit(NO_GPU_EXIT)


# ---- measurement (torch and bionas are imported only once CUDA is known to be there) ---


def device_line(device) -> str:
    import torch

    if device.type != "cuda":
        return f"device: CPU smoke run (no CUDA figures); torch {torch.__version__}"
    props = torch.cuda.get_device_properties(device)
    return (
        f"device: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
        f"{props.major}.{props.minor}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}"
    )


def amp_for(precision: str, device):
    import torch

    from bionas.trainer.config import Amp

    if precision == "fp32":
        return Amp(False, torch.float32, device.type)
    if device.type != "cuda":  # CPU smoke run: autocast on CPU is bf16
        return Amp(True, torch.bfloat16, "cpu")
    return Amp(True, torch.float16 if precision == "amp" else torch.bfloat16, "cuda")


class Cuda:
    """The CUDA calls, as no-ops on the CPU smoke run."""

    def __init__(self, device) -> None:
        import torch

        self.torch, self.on = torch, device.type == "cuda"
        self.device = device

    def sync(self) -> None:
        if self.on:
            self.torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.on:
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def peaks(self) -> tuple[int, int]:
        if not self.on:
            return 0, 0
        c = self.torch.cuda
        return c.max_memory_allocated(self.device), c.max_memory_reserved(self.device)

    def release(self) -> None:
        import gc

        gc.collect()
        if self.on:
            self.torch.cuda.empty_cache()


def measure_one(setup, variant: str, precision: str, args, cuda: Cuda) -> dict:
    """img/s and peak memory of alternating w / θ steps, or {"ok": False} on OOM."""
    from bionas.trainer.batch_size import is_out_of_memory

    out_of_memory = False
    try:
        result = _timed_steps(setup, variant, precision, args, cuda)
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        out_of_memory = True  # leave the except block first, so the failed step's frames go
    cuda.release()
    return {"ok": False} if out_of_memory else result


def _timed_steps(setup, variant: str, precision: str, args, cuda: Cuda) -> dict:
    from _common_train import build, median, mixed_op_variant, step, synthetic_batch

    amp = amp_for(precision, cuda.device)
    with mixed_op_variant(variant):
        model, opts = build(setup, cuda.device, amp)
        batch = synthetic_batch(setup, cuda.device)
        for _ in range(args.warmup):
            for kind in ("w", "theta"):
                step(model, batch, kind, opts, amp, cuda.sync)
        cuda.reset_peak()
        times: dict[str, list[float]] = {"w": [], "theta": []}
        for _ in range(args.steps):
            for kind in ("w", "theta"):
                seconds, result = step(model, batch, kind, opts, amp, cuda.sync)
                times[kind].append(seconds)
    allocated, reserved = cuda.peaks()
    w, theta = median(times["w"]), median(times["theta"])
    return {
        "ok": True, "w_s": w, "theta_s": theta, "img_s": 2 * setup.batch_size / (w + theta),
        "peak_allocated": allocated, "peak_reserved": reserved, "loss": result.loss,
    }  # fmt: skip


def search(setup, precision: str, args, cuda: Cuda) -> tuple[int, float]:
    """The batch size `--batch-size auto` picks under the cap, and the seconds it took."""
    import time

    import torch
    from _common_train import build, synthetic_batch

    from bionas.trainer.batch_size import MAX_BATCH, MIN_BATCH, restoring_probe, search_batch_size
    from bionas.trainer.step import train_step

    amp = amp_for(precision, cuda.device)
    model, opts = build(setup, cuda.device, amp)

    def probe_step(batch_size: int) -> None:
        # as bionas's own probe: loss scale 1, so fp16 steps are not skipped as overflowed
        # and the optimiser state (part of what a real step needs) is allocated
        scaler = torch.amp.GradScaler("cuda", init_scale=1.0, enabled=amp.loss_scaling)
        opts.w_scaler = opts.theta_scaler = scaler
        images, meta, labels = synthetic_batch(
            type(setup)(**{**vars(setup), "batch_size": batch_size}), cuda.device
        )
        for kind in ("w", "theta"):
            train_step(model, images, meta, labels, kind, opts, amp)

    start = time.perf_counter()
    low, high = (MIN_BATCH, MAX_BATCH) if cuda.on else (2, 8)  # smoke: toy sizes
    chosen = search_batch_size(restoring_probe(model, probe_step), low, high)
    return chosen, time.perf_counter() - start  # the caller releases the cache


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def run(args: argparse.Namespace) -> None:
    import torch
    from _common_train import StepSetup
    from reporting import format_table, machine, machine_line, uptime_line

    from bionas.trainer.batch_size import cap_gpu_memory

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke_cpu else "cpu")
    print(machine_line(machine()))
    print(device_line(device))
    cuda = Cuda(device)
    if not cuda.on:
        torch.set_num_threads(1)  # the smoke run checks the code path, not speed
    if cuda.on:
        torch.backends.cudnn.benchmark = True  # as `bionas train` does on CUDA
        fraction = cap_gpu_memory(args.gpu_memory_gb, device)
        print(f"memory cap: {args.gpu_memory_gb:g} GiB = fraction {fraction:.3f} of the device")
    print(uptime_line(), flush=True)
    results = {}
    for batch in args.batches:
        for precision in args.precisions:
            for variant in args.variants:
                setup = StepSetup(
                    channels=args.channels, cells=args.cells, image_size=args.image_size,
                    batch_size=batch, dilated=args.dilated,
                )  # fmt: skip
                r = measure_one(setup, variant, precision, args, cuda)
                results[(batch, precision, variant)] = r
                print(f"  batch {batch:4d} {precision:<5} {variant:<11} " + (
                    f"{r['img_s']:8.1f} img/s, peak {gib(r['peak_allocated'])} GiB allocated, "
                    f"{gib(r['peak_reserved'])} GiB reserved"
                    if r["ok"] else "OOM"), flush=True)  # fmt: skip
    print_tables(results, args)
    if args.search:
        rows = []
        for precision in args.precisions:
            setup = StepSetup(channels=args.channels, cells=args.cells,
                              image_size=args.image_size, dilated=args.dilated)  # fmt: skip
            chosen, seconds = search(setup, precision, args, cuda)
            cuda.release()
            rows.append([precision, f"{args.gpu_memory_gb:g} GiB", chosen, f"{seconds:.1f}"])
        print(f"\nadaptive batch size (bionas search over real w + θ steps, {args.image_size} px)")
        print(format_table(["precision", "cap", "chosen batch", "search, s"], rows))
    print(uptime_line())


def cell(r: dict | None, key: str) -> str:
    if r is None:
        return "-"
    if not r["ok"]:
        return "OOM"
    return f"{r[key]:.0f}" if key == "img_s" else gib(r[key])


def ratio(base: dict | None, ours: dict | None, key: str) -> str:
    if not (base and ours and base["ok"] and ours["ok"]) or not (base[key] and ours[key]):
        return "-"
    value = ours[key] / base[key] if key == "img_s" else base[key] / ours[key]
    return f"{value:.2f}x"


def print_tables(results: dict, args: argparse.Namespace) -> None:
    from reporting import format_table

    amp = next((p for p in args.precisions if p != "fp32"), None)
    if amp and "fp32" in args.precisions and "bionas" in args.variants:
        rows = []
        for b in args.batches:
            base, ours = results[(b, "fp32", "bionas")], results[(b, amp, "bionas")]
            rows.append([b, cell(base, "img_s"), cell(ours, "img_s"), ratio(base, ours, "img_s"),
                         cell(base, "peak_allocated"), cell(ours, "peak_allocated"),
                         ratio(base, ours, "peak_allocated")])  # fmt: skip
        print(f"\nbionas supernet, {args.image_size} px, cap {args.gpu_memory_gb:g} GiB: "
              f"fp32 (baseline) vs {amp}")  # fmt: skip
        print(format_table(["batch", "fp32 img/s", f"{amp} img/s", "speed-up",
                            "fp32 peak GiB", f"{amp} peak GiB", "memory saved"], rows))  # fmt: skip
    for baseline in (v for v in args.variants if v != "bionas"):
        rows = []
        for p in args.precisions:
            for b in args.batches:
                base, ours = results[(b, p, baseline)], results.get((b, p, "bionas"))
                rows.append([p, b, cell(base, "img_s"), cell(ours, "img_s"),
                             ratio(base, ours, "img_s"), cell(base, "peak_allocated"),
                             cell(ours, "peak_allocated"), ratio(base, ours, "peak_allocated")])  # fmt: skip
        print(f"\nmixed op: {baseline} (baseline) vs bionas")
        print(format_table(["precision", "batch", "baseline img/s", "bionas img/s", "speed-up",
                            "baseline peak GiB", "bionas peak GiB", "memory saved"], rows))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_cuda(args)
    run(args)


if __name__ == "__main__":
    main()
