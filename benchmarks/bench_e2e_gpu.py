"""End to end on one GPU (issue 14): `bionas train` with the loader on >= 30 shards against
the compute-only rate of the same model, the first epoch's start-up, and the E009 row's
latency (the derived network at batch 1, `bionas evaluate` on CUDA).

    bionas synth DIR --n N  ->  bionas ingest ... --shard-size S  ->  bionas train DS
        --device cuda --batch-size B --epochs E --gpu-memory-gb 12  ->  bionas evaluate RUN

Compute-only: the run's own model (its config.json and model.pt: same architecture, same
vocabularies), fresh optimisers as `bionas train` builds them, one synthetic batch of the
run's shapes kept on the device, w+θ pairs timed back to back as bench_gpu_loop.py does.
End to end: each epoch's img/s from RUN/epochs.jsonl (train steps and the waits for their
batches; validation excluded). Start-up: epoch 1's seconds minus what its samples would
take at the steady rate of the later epochs (cuDNN autotuning, worker start, first reads).

    python benchmarks/bench_e2e_gpu.py                  # CUDA: n 5000, 100-sample shards
    python benchmarks/bench_e2e_gpu.py --smoke-cpu      # the code path on CPU, toy sizes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_gpu_loop import Loop, amp_for, time_loop
from reporting import machine, machine_line, uptime_line

from bionas.trainer.config import TrainConfig
from bionas.trainer.logs import read_jsonl
from bionas.trainer.model import build_model
from bionas.trainer.optimizers import build_optimizers
from bionas.trainer.run import load_trained


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5000, help="synthetic specimens")
    p.add_argument("--shard-size", type=int, default=100, help="samples per shard")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--gpu-memory-gb", type=float, default=12.0)
    p.add_argument("--pairs", type=int, default=30, help="compute-only timed pairs")
    p.add_argument("--work", type=Path, default=None, help="folder for data and run (tmp)")
    p.add_argument("--smoke-cpu", action="store_true", help="run the code path on CPU, toy sizes")
    args = p.parse_args(argv)
    if args.smoke_cpu:
        args.n, args.shard_size, args.epochs, args.batch_size = 600, 40, 2, 8
        args.image_size, args.workers, args.pairs = 32, 1, 3
    return args


def bionas(*argv: str) -> float:
    """Run one bionas command (output shown); its seconds."""
    start = time.perf_counter()
    print("$ bionas " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "bionas", *argv], check=True)
    return time.perf_counter() - start


def compute_only(run_dir: Path, device: torch.device, batch_size: int, pairs: int) -> dict:
    """img/s of w+θ pairs of the run's model on one synthetic batch kept on the device."""
    trained = load_trained(run_dir)
    torch.manual_seed(0)
    model = build_model(trained.model_config).to(device).train()
    config = TrainConfig.from_stored(trained.train_config)
    amp = amp_for(device)
    opts = build_optimizers(model, config, amp)
    size = trained.image_size
    sizes = [len(trained.vocabs[f]) for f in trained.meta_fields]
    batch = (
        torch.randn(batch_size, 3, size, size, device=device),
        torch.stack([torch.randint(n, (batch_size,)) for n in sizes], 1).to(device),
        torch.randint(len(trained.class_names), (batch_size,), device=device),
    )
    loop = Loop("bionas", model, opts, amp, batch, run_dir / "compute_only.jsonl")
    return time_loop(loop, warmup=3, pairs=pairs, log_every=config.log_every)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke_cpu
    if not cuda and not args.smoke_cpu:
        print("bench_e2e_gpu.py needs a CUDA GPU (or --smoke-cpu)", file=sys.stderr)
        raise SystemExit(2)
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(1)  # the smoke run checks the code path, not speed
    print(machine_line(machine()))
    print(uptime_line(), flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="bionas-e2e-"))
    data, ds, run = work / "data", work / "ds", work / "run"
    seconds = {"synth": bionas("synth", str(data), "--n", str(args.n))}
    seconds["ingest"] = bionas(
        "ingest", str(data / "metadata.csv"), "--images", str(data / "images/original_full"),
        "--bbox", str(data / "bbox.tsv"), "--out", str(ds), "--workers", str(args.workers),
        "--shard-size", str(args.shard_size), "--min-class-count", "20", "--quiet",
    )  # fmt: skip
    manifest = json.loads((ds / "manifest.json").read_text())
    train_shards = len(manifest["splits"]["train"]["shards"])
    train = [
        "train", str(ds), "--out", str(run), "--device", device.type, "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
        "--workers", str(args.workers), "--quiet",
    ]  # fmt: skip
    if args.smoke_cpu:
        train += ["--channels", "4", "--cells", "2"]
    if cuda:
        train += ["--gpu-memory-gb", str(args.gpu_memory_gb)]
    seconds["train"] = bionas(*train)
    seconds["evaluate"] = bionas("evaluate", str(run), "--device", device.type,
                                 "--workers", str(args.workers))  # fmt: skip
    compute = compute_only(run, device, args.batch_size, args.pairs)
    epochs = read_jsonl(run / "epochs.jsonl")
    steady = [e["img_per_s"] for e in epochs[1:]] or [epochs[0]["img_per_s"]]
    steady_rate = sum(steady) / len(steady)
    first = epochs[0]
    first_samples = first["img_per_s"] * first["seconds"]
    startup = first["seconds"] - first_samples / steady_rate
    print(f"\ntrain shards: {train_shards}; seconds: " +
          ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))  # fmt: skip
    for e in epochs:
        print(f"  epoch {e['epoch']}: {e['img_per_s']:.0f} img/s over {e['seconds']:.1f} s "
              f"of steps")  # fmt: skip
    print(f"compute-only (same model, batch {args.batch_size}): {compute['img_s']:.0f} img/s")
    print(f"end to end after epoch 1: {steady_rate:.0f} img/s = "
          f"{steady_rate / compute['img_s']:.2f} of compute-only (goal >= 0.9)")  # fmt: skip
    print(f"epoch 1 start-up: {startup:.1f} s beyond the steady rate")
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    efficiency = metrics["efficiency"]
    print(f"E009 row ({metrics['network']['name']} network): "
          f"{efficiency['model'].get('gflops', float('nan')):.3f} GFLOPs; latency at batch 1: "
          + json.dumps(efficiency["latency_ms"]))  # fmt: skip
    print(uptime_line())


if __name__ == "__main__":
    main()
