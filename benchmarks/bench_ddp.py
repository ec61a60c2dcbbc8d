"""Training throughput on CPU: two ranks (torchrun + DistributedDataParallel, gloo) vs one
process, on the same synthetic dataset and model.

Setups, each a fresh `bionas train` (workers 0: decoding is part of the step):

  1 process, 2 threads, batch B          baseline: one process on both cores
  1 process, 1 thread,  batch B          one core
  2 ranks x 1 thread,   batch B per rank same per-rank batch (global batch 2B)
  2 ranks x 1 thread,   batch B/2 per rank  same global batch B

img/s = the last epoch's `img_per_s` in epochs.jsonl: the samples of all ranks over rank
0's train-step time (data loading, forward, backward, all-reduce, optimiser; validation
and checkpoints excluded). On 2 cores this compares two ways of using both cores (two
intra-op threads in one process, or one rank per core), and shows what DDP's collectives
cost per step; it is not a forecast for GPUs. A process with 2 OpenMP threads slows down
badly while other processes hold a core (its threads wait for each other): read the
`load` column, and `--setups 1,4` re-measures single rows.

    python benchmarks/bench_ddp.py --quick      # 1-4 min
    python benchmarks/bench_ddp.py              # 2-10 min, depending on the load
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common_data import BIONAS
from reporting import LoadMeter, format_table, machine, machine_line, uptime_line, write_results

ROOT = Path(__file__).resolve().parent.parent
SETUPS = (  # name, processes, threads per process, per-rank batch as a fraction of B
    ("1 process, 2 threads", 1, 2, 1.0),
    ("1 process, 1 thread", 1, 1, 1.0),
    ("2 ranks x 1 thread, same per-rank batch", 2, 1, 1.0),
    ("2 ranks x 1 thread, same global batch", 2, 1, 0.5),
)
FULL = {"samples": 1536, "image_size": 64, "batch": 32, "epochs": 3, "channels": 8}
QUICK = {"samples": 384, "image_size": 32, "batch": 16, "epochs": 2, "channels": 4}


def make_dataset(folder: Path, samples: int, image_size: int) -> Path:
    """The trainer tests' synthetic dataset (bionas's own writer, vocabularies, manifest)."""
    if (folder / "manifest.json").exists():
        return folder
    sys.path.insert(0, str(ROOT / "tests"))
    from datasets import make_tiny_dataset

    return make_tiny_dataset(folder, n=samples, image_size=2 * image_size, shards_per_split=8)


def run_setup(dataset: Path, out: Path, processes: int, threads: int, batch: int, p: dict) -> dict:
    """One training run in a subprocess; its steady-state throughput and wall time."""
    launcher = BIONAS
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", str(processes), "-m", "bionas"]  # fmt: skip
    command = [*launcher, "train", str(dataset), "--out", str(out), "--device", "cpu",
               "--image-size", str(p["image_size"]), "--channels", str(p["channels"]),
               "--cells", "3", "--batch-size", str(batch), "--workers", "0",
               "--epochs", str(p["epochs"]), "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with LoadMeter() as meter:
        started = time.perf_counter()
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    epochs = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    last = epochs[-1]
    return {
        "img_per_s": last["img_per_s"],
        "steps_per_epoch": last["steps"],
        "step_s": last["seconds"] / last["steps"],
        "wall_s": wall,
        "load": str(meter.load),
        "disturbed": meter.load.disturbed,
        "command": f"OMP_NUM_THREADS={threads} python " + " ".join(command[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smaller dataset and model")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bionas-ddp-bench"))
    parser.add_argument(
        "--setups", default="1,2,3,4", help="which setups to run, 1-based (default: all)"
    )
    args = parser.parse_args()
    chosen = [SETUPS[int(i) - 1] for i in args.setups.split(",")]
    p = QUICK if args.quick else FULL
    info = machine()
    print(f"{machine_line(info)}\n{uptime_line()}\n", flush=True)
    name = "quick" if args.quick else "full"
    dataset = make_dataset(args.work / f"ds-{name}", p["samples"], p["image_size"])
    results = []
    for label, processes, threads, share in chosen:
        out = args.work / f"run-{name}-{len(results)}"
        shutil.rmtree(out, ignore_errors=True)
        batch = int(p["batch"] * share)
        print(f"{label}: batch {batch} per rank ...", flush=True)
        r = run_setup(dataset, out, processes, threads, batch, p)
        results.append({"setup": label, "processes": processes, "threads": threads,
                        "batch_per_rank": batch, "global_batch": batch * processes, **r})  # fmt: skip
    by_setup = {r["setup"]: r["img_per_s"] for r in results}
    two, one = (by_setup.get(SETUPS[i][0]) for i in (0, 1))

    def ratio(value: float, base: float | None) -> str:
        return f"{value / base:.2f}x" if base else "-"

    rows = [[r["setup"], r["batch_per_rank"], r["global_batch"], r["steps_per_epoch"],
             f"{r['step_s'] * 1000:.0f}", f"{r['img_per_s']:.0f}", ratio(r["img_per_s"], two),
             ratio(r["img_per_s"], one), f"{r['wall_s']:.0f}", r["load"]]
            for r in results]  # fmt: skip
    print(f"\n## Train throughput on CPU, {p['samples']} samples, {p['image_size']} px, "
          f"{p['channels']} channels, 3 cells, epoch {p['epochs']} of {p['epochs']}\n")  # fmt: skip
    header = ["setup", "batch/rank", "global batch", "steps/epoch", "ms/step", "img/s",
              "vs 1 proc 2 threads", "vs 1 proc 1 thread", "wall s", "load"]  # fmt: skip
    print(format_table(header, rows))
    print(f"\n{machine_line(info)}\n{uptime_line()}")
    suffix = "" if len(chosen) == len(SETUPS) else "-setups-" + args.setups.replace(",", "")
    write_results(
        f"bench_ddp-{name}{suffix}.json", {"params": p, "results": results, "machine": info}
    )


if __name__ == "__main__":
    main()
