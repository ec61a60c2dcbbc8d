"""Supernet train step on CPU: bionas `MixedOp` vs naive DARTS-style mixed ops.

Same model config, same synthetic batch, same seed, same run; the real `train_step` of
`bionas.trainer.loop` (a w step: AdamW on the weights; a θ step: Adam on the logits):

  bionas       MixedOp as shipped: Σ α_k o_k(x) op by op, zero op never computed, ops with
               α < 1e-6 skipped (one host-side mask per step)
  opwise       bionas before 2026-11-23: out + α_k * o_k op by op (two kernels per op)
  stacked      α[active] @ stack(active outputs), one tensordot per edge (tried, dropped)
  naive-sum    quark0/darts: sum(w * op(x) for w, op in zip(α, ops)), every op incl. zero
  naive-stack  (torch.stack([op(x) for op in ops]) * α.view(-1,1,1,1,1)).sum(0), every op

Configurations of θ: `none` (the paper's init θ ~ N(0, 1e-3): nothing is below 1e-6),
`dil` (both full dilated convs pruned on every edge, α ~ 1e-13) and `keep3` (only
dw_sep_3x3, max_pool_3x3 and skip left; what a late search can look like). The naive ops
compute everything regardless, which is the point. The metadata encoder is at paper scale
(dna_bin 324,412 x 32 embedding), the same in every variant.

Memory: every (variant, config) runs in a fresh subprocess and reports its kernel
high-water RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`). CPU tensors live in
malloc/mmap memory, so the high-water RSS is the peak of the live tensors (plus allocator
slack); tracemalloc does not see them, and torch.profiler's memory view gives per-op
allocations rather than one peak. `step peak` = high-water RSS minus the RSS just before
the first step (model, optimisers and batch built, nothing else run), so it is the memory
the steps themselves add: activations saved for backward, gradients, optimiser state.
The first w + θ pair is a warm-up; the median of the next `--steps` of each kind is shown;
`--rounds` repeats every child round-robin (order alternating) and keeps the fastest
round's times and the least memory of any round.

Threads: each child uses `--threads` (default 1). On a small machine shared with other
processes, PyTorch's OpenMP pool with one thread per core stalls at its barriers whenever
another process holds a core: 2-thread steps measured here ran 10-40x slower under load
and varied as much between runs. One thread gives stable, comparable figures; pass
`--threads 2` on a quiet machine.

    python benchmarks/bench_supernet_step.py --quick   # 112 px, batch 16 (~2 min)
    python benchmarks/bench_supernet_step.py           # 224 px, batch 32, 3 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from dataclasses import asdict, replace

import psutil
from _common_train import PRUNE_SETS, VARIANTS, StepSetup
from reporting import LoadMeter, format_table, machine, machine_line, uptime_line


def child(spec: dict) -> dict:
    import torch
    from _common_train import build, median, mixed_op_variant, step, synthetic_batch

    from bionas.trainer.config import Amp

    torch.set_num_threads(spec["threads"])
    setup = StepSetup(**spec["setup"])
    device = torch.device("cpu")
    amp = Amp(spec["amp"], torch.bfloat16 if spec["amp"] else torch.float32, "cpu")
    with mixed_op_variant(spec["variant"]):
        model, opts = build(setup, device, amp)
        batch = synthetic_batch(setup, device)
        rss_before = psutil.Process().memory_info().rss
        with torch.no_grad(), amp.autocast():
            logits = model(batch[0], batch[1])  # for the cross-variant output check
        times: dict[str, list[float]] = {"w": [], "theta": []}
        for i in range(spec["steps"] + 1):
            for kind in ("w", "theta"):
                seconds, _ = step(model, batch, kind, opts, amp)
                if i > 0:
                    times[kind].append(seconds)
    return {
        "w_s": median(times["w"]),
        "theta_s": median(times["theta"]),
        "rss_before": rss_before,
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "pruned_ops": model.pruned_op_count(),
        "logits": logits.float().flatten().tolist(),
        "threads": torch.get_num_threads(),
    }


def run_child(spec: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    with LoadMeter() as meter:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {spec} failed:\n{proc.stderr[-3000:]}")
    out = proc.stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["load"] = meter.load
    print(f"  {spec['variant']:<11} prune={spec['setup']['prune']:<5} w {result['w_s']:.3f} s, "
          f"θ {result['theta_s']:.3f} s, step peak {mb(result['maxrss'] - result['rss_before'])}"
          f" MB ({meter.load})", flush=True)  # fmt: skip
    return result


def mb(n: float) -> str:
    return f"{n / 2**20:.0f}"


def measure(args: argparse.Namespace) -> dict[tuple[str, str], dict]:
    base = StepSetup(
        channels=args.channels, cells=args.cells, image_size=args.image_size,
        batch_size=args.batch_size, dilated=args.dilated,
    )  # fmt: skip
    runs: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        for prune in args.prune:
            # alternate the order, so no variant always runs first
            for variant in list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]:
                setup = replace(base, prune=prune)
                spec = {"variant": variant, "setup": asdict(setup), "steps": args.steps,
                        "amp": args.amp, "threads": args.threads}  # fmt: skip
                runs.setdefault((prune, variant), []).append(run_child(spec))
    best = {}
    for key, results in runs.items():
        # time: the fastest round; memory (deterministic up to allocator noise): the least
        fastest = dict(min(results, key=lambda r: r["w_s"] + r["theta_s"]))
        fastest["step_peak"] = min(r["maxrss"] - r["rss_before"] for r in results)
        fastest["maxrss"] = min(r["maxrss"] for r in results)
        best[key] = fastest
    return best


def table(best: dict[tuple[str, str], dict], args: argparse.Namespace) -> list[list[str]]:
    rows = []
    for prune in args.prune:
        ours = best[(prune, "bionas")]
        for baseline in ("opwise", "stacked", "naive-sum", "naive-stack"):
            base = best[(prune, baseline)]
            diff = max(abs(a - b) for a, b in zip(base["logits"], ours["logits"], strict=True))
            same = diff <= 1e-4
            for kind in ("w", "theta"):
                rows.append([
                    prune, ours["pruned_ops"], baseline, f"{kind} step, s",
                    f"{base[kind + '_s']:.3f}", f"{ours[kind + '_s']:.3f}",
                    f"{base[kind + '_s'] / ours[kind + '_s']:.2f}x faster",
                    f"{'yes' if same else 'NO'} ({diff:.0e})",
                ])  # fmt: skip
            peak_base, peak_ours = base["step_peak"], ours["step_peak"]
            rows.append([
                prune, ours["pruned_ops"], baseline, "step peak, MB", mb(peak_base),
                mb(peak_ours), f"{peak_base / peak_ours:.2f}x less", "",
            ])  # fmt: skip
            rows.append([
                prune, ours["pruned_ops"], baseline, "process peak RSS, MB", mb(base["maxrss"]),
                mb(ours["maxrss"]), f"{base['maxrss'] / ours['maxrss']:.2f}x less", "",
            ])  # fmt: skip
    return rows


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="112 px, batch 16, 2 steps, 1 round")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--cells", type=int, default=5)
    p.add_argument("--dilated", choices=("full", "separable"), default="full")
    p.add_argument("--steps", type=int, help="timed steps of each kind (after a warm-up pair)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--prune", default="none,dil,keep3", help=f"from {sorted(PRUNE_SETS)}")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each child")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (slow without AVX512-BF16)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.image_size = args.image_size or (112 if args.quick else 224)
    args.batch_size = args.batch_size or (16 if args.quick else 32)
    args.steps = args.steps or (2 if args.quick else 3)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.prune = [p for p in args.prune.split(",") if p]
    unknown = set(args.prune) - set(PRUNE_SETS)
    if unknown:
        p.error(f"unknown --prune {sorted(unknown)}; choose from {sorted(PRUNE_SETS)}")
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    import torch

    print(f"{machine_line(machine())}; torch {torch.__version__}, {args.threads} thread(s) "
          f"per measurement (default would be {torch.get_num_threads()})")  # fmt: skip
    print(uptime_line(), flush=True)
    best = measure(args)
    print(f"\nsupernet train step, CPU, {'bf16 autocast' if args.amp else 'fp32'}: "
          f"{args.image_size} px, batch {args.batch_size}, C={args.channels}, "
          f"{args.cells} cells, dilated={args.dilated}; median of {args.steps} steps, "
          f"best of {args.rounds} round(s)")  # fmt: skip
    embedding = 324_412 * 32 * 4 / 2**20
    print(f"in every variant alike: the dna_bin embedding (324,412 x 32 fp32) = {embedding:.0f} MB"
          f" of weights, + {embedding:.0f} MB dense gradient + {2 * embedding:.0f} MB AdamW state"
          " once w steps ran")  # fmt: skip
    header = ["θ config", "pruned ops (of 135)", "baseline", "measure", "baseline", "bionas",
              "ratio", "same logits (max |diff|)"]  # fmt: skip
    print(format_table(header, table(best, args)))
    loads = sorted({str(r["load"]) for r in best.values()})
    print("loads of the kept runs: " + "; ".join(loads))
    print(uptime_line())


if __name__ == "__main__":
    main()
