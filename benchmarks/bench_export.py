"""CPU inference of one model in its three forms: eager PyTorch vs TorchScript vs onnxruntime.

The same trained run, exported by `bionas export` in both formats (each export passed its
own parity check), on the same random inputs:

  eager        `load_trained(RUN).model` in eval mode under `torch.inference_mode()`
  TorchScript  `torch.jit.load(model.pt)` (traced), under `torch.inference_mode()`
  onnxruntime  `InferenceSession(model.onnx)`, CPU provider, default graph optimisations

Each form runs through the callable `bionas predict` uses (bionas.trainer.export_formats
`model_runner`; numpy in and out for onnxruntime, zero-copy). Latency: batch 1, the median
and p90 of `--reps` timed calls after warm-up calls. Throughput: batch 64, images/s from
the median of `--reps64` timed calls. The forms take turns call by call (round-robin), so
a burst of load on a shared machine hits all three alike.

Models: by default `bionas demo --n 400 --epochs 1 --retrain-epochs 1` is trained once in
benchmarks/out/export-demo (its final model: 64 px, 8 channels, 3 cells, dna_bin + class
metadata), and the same genotype is trained for 2 steps at the paper's 224 px and 16
channels (latency does not depend on the weights' values). `--run RUN_DIR` measures that
run's final model instead.

Threads: `--threads` (default 1) for torch's intra-op pool and onnxruntime's intra-op
threads alike; one thread gives comparable figures on a small shared machine (see
bench_supernet_step.py), `--threads 2` measures what two cores give.

    python benchmarks/bench_export.py --quick          # ~2 min
    python benchmarks/bench_export.py                  # more calls
    python benchmarks/bench_export.py --run run/ --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _common_data import run_bionas
from reporting import OUT_DIR, LoadMeter, format_table, machine_line, uptime_line, write_results

FORMS = ("eager", "torchscript", "onnx")
DEMO = Path(OUT_DIR) / "export-demo"


def demo_runs() -> list[Path]:
    """The demo's final model and its genotype at 224 px (trained once, then reused)."""
    run = DEMO / "run"
    if not (run / "final" / "model.pt").exists():
        print(f"training a demo run in {DEMO} (once) ...", flush=True)
        run_bionas("demo", "--out", DEMO, "--n", 400, "--epochs", 1, "--retrain-epochs", 1, "--quiet")  # fmt: skip
    wide = DEMO / "paper224"
    if not (wide / "model.pt").exists():
        run_bionas("train", DEMO / "dataset", "--out", wide, "--genotype", run / "genotype.json",
                   "--image-size", 224, "--channels", 16, "--max-steps", 2, "--batch-size", 8,
                   "--workers", 0, "--device", "cpu", "--quiet")  # fmt: skip
    return [run, wide]


def forms_of(run_dir: Path, threads: int) -> tuple[dict, dict]:
    """name -> logits callable for the three forms, and what the model is."""
    from bionas.trainer.export import final_model_dir
    from bionas.trainer.export_formats import model_runner
    from bionas.trainer.run import load_trained

    model_dir, _ = final_model_dir(run_dir)
    run = load_trained(model_dir)
    model = run.model.eval()
    forms = {"eager": lambda images, meta: model(images, meta if run.meta_fields else None)}
    for fmt in ("torchscript", "onnx"):
        out = run_dir.parent / f"{run_dir.name}-{fmt}"
        run_bionas("export", run_dir, "--format", fmt, "--out", out)
        path = out / ("model.pt" if fmt == "torchscript" else "model.onnx")
        forms[fmt] = model_runner(fmt, path, bool(run.meta_fields), threads=threads)
    params = sum(p.numel() for p in model.parameters())
    about = {"run": str(model_dir), "image_size": run.image_size,
             "channels": run.model_config.channels, "cells": run.model_config.cells,
             "meta_fields": run.meta_fields, "parameters": params}  # fmt: skip
    return forms, about


def inputs(about: dict, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    size = about["image_size"]
    images = torch.randn(batch, 3, size, size, generator=generator)
    meta = torch.zeros(batch, len(about["meta_fields"]), dtype=torch.long)
    return images, meta


def measure(forms: dict, about: dict, batch: int, reps: int, warmup: int) -> dict:
    """Seconds per call of each form, round-robin; and each form's max |Δ logit| vs eager."""
    images, meta = inputs(about, batch)
    times: dict[str, list[float]] = {name: [] for name in FORMS}
    with torch.inference_mode(), LoadMeter(cores=1) as meter:
        outputs = {name: forms[name](images, meta) for name in FORMS}
        for _ in range(warmup):
            for name in FORMS:
                forms[name](images, meta)
        for i in range(reps):
            for name in FORMS if i % 2 == 0 else FORMS[::-1]:
                start = time.perf_counter()
                forms[name](images, meta)
                times[name].append(time.perf_counter() - start)
    diffs = {n: float((outputs[n] - outputs["eager"]).abs().max()) for n in FORMS}
    return {"times": times, "max_abs_diff": diffs, "load": str(meter.load)}


def p90(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.9 * len(values)) - 1)]


def rows_for(about: dict, lat: dict, thr: dict) -> list[list[str]]:
    model = f"{about['image_size']} px, {about['channels']} ch, {about['cells']} cells"
    rows = []
    median = {n: statistics.median(lat["times"][n]) * 1e3 for n in FORMS}
    tail = {n: p90(lat["times"][n]) * 1e3 for n in FORMS}
    rows.append([model, "batch 1 latency, median ms (p90)",
                 *(f"{median[n]:.2f} ({tail[n]:.2f})" for n in FORMS),
                 *(f"{median['eager'] / median[n]:.2f}x" for n in FORMS[1:])])  # fmt: skip
    rate = {n: 64 / statistics.median(thr["times"][n]) for n in FORMS}
    rows.append([model, "batch 64 throughput, images/s",
                 *(f"{rate[n]:.0f}" for n in FORMS),
                 *(f"{rate[n] / rate['eager']:.2f}x" for n in FORMS[1:])])  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", help="a run folder (repeatable)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=200, help="timed batch-1 calls per form")
    parser.add_argument("--reps64", type=int, default=20, help="timed batch-64 calls per form")
    parser.add_argument("--quick", action="store_true", help="--reps 50 --reps64 5")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.reps64 = 50, 5
    torch.set_num_threads(args.threads)
    print(machine_line())
    print(f"torch {torch.__version__}, {args.threads} thread(s) for torch and onnxruntime")
    runs = args.run or demo_runs()
    rows, results = [], []
    for run_dir in runs:
        forms, about = forms_of(Path(run_dir), args.threads)
        print(f"model: {about}", flush=True)
        lat = measure(forms, about, 1, args.reps, warmup=10)
        thr = measure(forms, about, 64, args.reps64, warmup=2)
        print(f"  batch 1: {lat['load']}; batch 64: {thr['load']}", flush=True)
        print(f"  max |logit - eager logit| at batch 64: {thr['max_abs_diff']}", flush=True)
        rows += rows_for(about, lat, thr)
        results.append({"model": about, "batch1": lat, "batch64": thr})
    print()
    header = ["model", "measure", *FORMS, "TorchScript speed-up", "onnxruntime speed-up"]
    print(format_table(header, rows))
    print(uptime_line())
    suffix = "-quick" if args.quick else ""
    write_results(f"bench_export-t{args.threads}{suffix}.json",
                  {"threads": args.threads, "results": results, "table": rows})  # fmt: skip


if __name__ == "__main__":
    main()
