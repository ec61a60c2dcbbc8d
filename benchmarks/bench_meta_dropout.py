"""What `--meta-dropout` buys when metadata goes missing: synthetic BIOSCAN-5M -> Insects-1M.

Trains small searched models on synthetic BIOSCAN-5M with metadata `dna_bin` + `class`
(the leakage guard's default for target `order`), identical but for --meta-dropout, and
an image-only model (`--meta-fields none`) as the baseline without metadata. Each is
evaluated on

  BIOSCAN test            its own test split, metadata as recorded
  BIOSCAN test, no BIN    the same samples with dna_bin fed as unknown (index 0), as if
                          the barcode were missing (the run's dna_bin vocabulary emptied)
  Insects-1M test         synthetic Insects-1M through `bionas evaluate --dataset`: no
                          dna_bin at all (fed as unknown), class known; accuracy on the
                          classes the model knows (the rest are counted, not scored)

Accuracy and macro F1 are the mean over --seeds. Datasets are cached under --data.

    python benchmarks/bench_meta_dropout.py --quick   # 600 + 600 images, 10 epochs, 1 seed
    python benchmarks/bench_meta_dropout.py           # 2000 + 2000 images, 12 epochs, 2 seeds
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from _common_data import run_bionas
from reporting import LoadMeter, format_table, machine, machine_line, uptime_line, write_results

MODELS = {  # name -> extra `bionas train` options
    "meta-dropout 0": ["--meta-dropout", "0"],
    "meta-dropout 0.5": ["--meta-dropout", "0.5"],
    "image only": ["--meta-fields", "none"],
}
TRAIN = ["--device", "cpu", "--channels", "8", "--cells", "3", "--image-size", "32",
         "--batch-size", "32", "--workers", "1", "--quiet"]  # fmt: skip


def bionas(*args: object) -> None:
    # One torch thread: on a small shared CPU a tiny model trains ~10-30x faster than with
    # the default thread count (measured: 9 vs 270 img/s on 2 busy cores).
    run_bionas(*args, env={**os.environ, "OMP_NUM_THREADS": "1"})


def prepare(data: Path, n: int, min_count: int) -> tuple[Path, Path]:
    """Synthetic BIOSCAN-5M and Insects-1M, ingested at 64 px (cached)."""
    ds_b, ds_i = data / "ds-bioscan", data / "ds-insects"
    if not (ds_b / "manifest.json").exists():
        print(f"synth + ingest {n} BIOSCAN-5M images ...", flush=True)
        bionas("synth", data / "bioscan", "--n", n, "--seed", 11, "--quiet", "--overwrite")
        bionas("ingest", data / "bioscan" / "metadata.csv", "--images",
               data / "bioscan" / "images" / "original_full", "--bbox",
               data / "bioscan" / "bbox.tsv", "--out", ds_b, "--size", 64,
               "--min-class-count", min_count, "--quiet")  # fmt: skip
    if not (ds_i / "manifest.json").exists():
        print(f"synth + ingest {n} Insects-1M images ...", flush=True)
        bionas("synth", data / "insects", "--profile", "insects-1m", "--n", n, "--seed", 12,
               "--quiet", "--overwrite")  # fmt: skip
        bionas("ingest", data / "insects" / "metadata.csv", "--images",
               data / "insects" / "images", "--out", ds_i, "--profile", "insects-1m",
               "--split-source", "random", "--split-ratios", "0.1,0.1,0.8", "--size", 64,
               "--min-class-count", min_count, "--quiet")  # fmt: skip
    return ds_b, ds_i


def evaluate(run_dir: Path, dataset: Path | None, out: Path, drop_bin: bool = False) -> dict:
    from bionas.manifests.vocab import build_vocab
    from bionas.trainer.evaluate import EvaluateConfig, evaluate_trained
    from bionas.trainer.run import load_trained

    run = load_trained(run_dir)
    if drop_bin and "dna_bin" in run.vocabs:
        vocabs = {**run.vocabs, "dna_bin": build_vocab("dna_bin", {})}  # every BIN -> unknown
        run = dataclasses.replace(run, vocabs=vocabs)
    cfg = EvaluateConfig(run_dir=run_dir, dataset_dir=dataset, split="test", out_dir=out,
                         latency_runs=1, progress=False)  # fmt: skip
    report = evaluate_trained(run, cfg)
    every = report["metrics"]["all"]
    return {
        "accuracy": every["accuracy"],
        "f1_macro": every["f1_macro"],
        "evaluated": report["samples"]["evaluated"],
        "unknown_class_samples": report["samples"]["unknown_class_samples"],
    }


def run_model(name: str, seed: int, epochs: int, ds_b: Path, ds_i: Path, data: Path) -> dict:
    run_dir = data / "runs" / f"{name.replace(' ', '-')}-e{epochs}-seed{seed}"
    if not (run_dir / "model.pt").exists():
        with LoadMeter() as meter:
            start = time.perf_counter()
            bionas("train", ds_b, "--out", run_dir, "--epochs", epochs, "--seed", seed,
                   *TRAIN, *MODELS[name])  # fmt: skip
        print(f"  trained {name} (seed {seed}) in {time.perf_counter() - start:.0f} s "
              f"({meter.load})", flush=True)  # fmt: skip
    return {
        "bioscan": evaluate(run_dir, None, run_dir / "eval" / "bioscan"),
        "bioscan_no_bin": evaluate(run_dir, None, run_dir / "eval" / "no-bin", drop_bin=True),
        "insects": evaluate(run_dir, ds_i, run_dir / "eval" / "insects"),
    }


def mean(results: list[dict], where: str, key: str) -> float:
    return sum(r[where][key] for r in results) / len(results)


def report(results: dict[str, list[dict]], seeds: int) -> list[list[str]]:
    rows = []
    for name, runs in results.items():
        cells = [name]
        for where in ("bioscan", "bioscan_no_bin", "insects"):
            cells.append(
                f"{mean(runs, where, 'accuracy'):.3f} / {mean(runs, where, 'f1_macro'):.3f}"
            )
        first = runs[0]["insects"]
        cells.append(f"{first['evaluated']} (+{first['unknown_class_samples']} unknown)")
        rows.append(cells)
    header = ["model", "BIOSCAN test acc / F1m", "BIOSCAN test, dna_bin unknown",
              "Insects-1M test (no dna_bin)", "Insects-1M scored"]  # fmt: skip
    print(f"\n## --meta-dropout on synthetic BIOSCAN-5M -> Insects-1M (mean of {seeds} seed(s))\n")
    print(format_table(header, rows))
    base = results.get("meta-dropout 0")
    ours = results.get("meta-dropout 0.5")
    if base and ours:
        print("\nchange from p=0 to p=0.5 (accuracy, points): " + ", ".join(
            f"{w} {100 * (mean(ours, w, 'accuracy') - mean(base, w, 'accuracy')):+.1f}"
            for w in ("bioscan", "bioscan_no_bin", "insects")
        ))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="600 images, 10 epochs, 1 seed")
    parser.add_argument("--n", type=int, help="images per dataset (default 2000, quick 600)")
    parser.add_argument("--epochs", type=int, help="training epochs (default 12, quick 10)")
    parser.add_argument("--seeds", type=int, help="training seeds per model (default 2, quick 1)")
    parser.add_argument(
        "--data", type=Path, help="cache folder (default /tmp/bionas-meta-dropout-N)"
    )
    args = parser.parse_args()
    n = args.n or (600 if args.quick else 2000)
    epochs = args.epochs or (10 if args.quick else 12)
    seeds = args.seeds or (1 if args.quick else 2)
    data = args.data or Path(f"/tmp/bionas-meta-dropout-{n}")
    info = machine()
    print(f"{machine_line(info)}\n{uptime_line()}\n", flush=True)
    import torch

    torch.set_num_threads(1)  # evaluation of tiny models: one thread is fastest on a small CPU
    ds_b, ds_i = prepare(data, n, min_count=max(5, n // 150))
    results = {
        name: [run_model(name, seed, epochs, ds_b, ds_i, data) for seed in range(seeds)]
        for name in MODELS
    }
    report(results, seeds)
    print(f"\n{machine_line(info)}\n{uptime_line()}")
    name = "bench_meta_dropout-quick.json" if args.quick else "bench_meta_dropout.json"
    body = {"n": n, "epochs": epochs, "seeds": seeds, "results": results, "machine": info}
    write_results(name, body)


if __name__ == "__main__":
    main()
