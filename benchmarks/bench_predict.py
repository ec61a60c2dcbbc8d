"""Batch prediction from raw 1024x768 photos on CPU: `bionas predict --metadata` vs the
decode floor vs the two-step path (`bionas ingest` + `bionas predict --dataset`).

On the same synthetic photos (`bionas synth`, 1024x768 JPEGs with bbox.tsv), in one run,
each path with the same number of worker processes (`--workers`, default 2):

  a. floor      DataLoader workers only decode each photo with PIL (`Image.load()`,
                full frame); nothing else: no crop, no model
  a'. image path  the same DataLoader over bionas's `TableImages` (read inside --images,
                crop + resize + JPEG as ingest, decode to the model's size), no model
  b. one-step   `bionas predict RUN --metadata … --images … --bbox … --out p.parquet`
                (`predict_to_file`): read + crop + resize + JPEG as ingest, decode, model,
                output table
  c. two-step   `bionas ingest` (`run_ingest`, every row in one split) then
                `bionas predict RUN --dataset … --split train --out p.parquet`

Each is timed in this process from its call to its return (the table read, model load
and DataLoader start included; Python's start-up is not). The model is a fixed network
(`--genotype manual`) at the given --image-size, trained for one step (its weights do not
change the cost). "model only" is the model's forward alone on the same number of photos
(batches of --batch-size in the main process): the part of (b) no image path can save.
Rates count photos that got a prediction (the two-step path drops the rows ingest
rejects: empty order, duplicate id). Every measurement is repeated `--rounds` times; the
fastest is reported, with the load beside it.

    python benchmarks/bench_predict.py --quick          # 200 photos, one round
    python benchmarks/bench_predict.py                  # 600 photos, 2 rounds
    python benchmarks/bench_predict.py --wait-quiet 300 # on a shared, busy machine
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
from _common_data import run_bionas, synth_once
from PIL import Image
from reporting import (
    OUT_DIR,
    LoadMeter,
    format_table,
    machine_line,
    uptime_line,
    wait_for_quiet,
    write_results,
)
from torch.utils.data import DataLoader, Dataset

from bionas.batch_predict import BatchPredictConfig, predict_to_file
from bionas.ingest.config import IngestConfig
from bionas.ingest.pipeline import run_ingest
from bionas.ingest.profiles import BIOSCAN_5M
from bionas.predict_sources import read_table_rows
from bionas.trainer.predict import normalize
from bionas.trainer.predictor import load_predictor

TARGET_VS_FLOOR = 0.8


class DecodeOnly(Dataset):
    """The floor: each photo decoded by PIL, full frame, and nothing else."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> int:
        try:
            with Image.open(self.paths[i]) as image:
                image.load()
            return 1
        except (OSError, ValueError, SyntaxError):
            return 0


def count_ok(items: list[int]) -> int:
    return sum(items)


def floor(paths: list[Path], workers: int, batch_size: int) -> int:
    loader = DataLoader(DecodeOnly(paths), batch_size=batch_size, num_workers=workers,
                        collate_fn=count_ok)  # fmt: skip
    return sum(loader)


def image_path(folder: Path, run: Path, out: Path, workers: int, batch_size: int) -> int:
    from bionas.batch_predict import open_table_images

    cfg = BatchPredictConfig(model_dir=run, out=out / "unused.parquet",
                             metadata=folder / "metadata.csv", images=images_of(folder),
                             bbox=folder / "bbox.tsv", workers=workers, device="cpu")  # fmt: skip
    table = open_table_images(cfg, load_predictor(run, "cpu"))
    return sum(len(batch["pixels"]) for batch in table.batches(batch_size, workers, False))


def model_only(run: Path, photos: int, batch_size: int) -> int:
    predictor = load_predictor(run, "cpu")
    size = predictor.image_size
    pixels = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
    meta = torch.zeros(batch_size, len(predictor.meta_fields), dtype=torch.long)
    done = 0
    while done < photos:
        n = min(batch_size, photos - done)
        predictor.probabilities(normalize(pixels[:n], predictor.preprocessing), meta[:n])
        done += n
    return done


def one_step(folder: Path, run: Path, out: Path, workers: int, batch_size: int) -> int:
    cfg = BatchPredictConfig(model_dir=run, out=out / "one-step.parquet",
                             metadata=folder / "metadata.csv", images=images_of(folder),
                             bbox=folder / "bbox.tsv", workers=workers, batch_size=batch_size,
                             device="cpu", progress=False)  # fmt: skip
    return predict_to_file(cfg).statuses["ok"]


def two_step(folder: Path, run: Path, out: Path, workers: int, batch_size: int) -> int:
    dataset = out / "two-step-ds"
    shutil.rmtree(dataset, ignore_errors=True)
    start = time.perf_counter()
    run_ingest(ingest_config(folder, dataset, workers), progress=False)
    print(f"    (ingest {time.perf_counter() - start:.2f} s of it)", flush=True)
    cfg = BatchPredictConfig(model_dir=run, out=out / "two-step.parquet", dataset=dataset,
                             split="train", workers=workers, batch_size=batch_size,
                             device="cpu", progress=False)  # fmt: skip
    return predict_to_file(cfg).statuses["ok"]


def ingest_config(folder: Path, out: Path, workers: int) -> IngestConfig:
    """Every row into one split (`train`), default image options (256 px, q90, 10%)."""
    return IngestConfig(metadata=folder / "metadata.csv", images=images_of(folder),
                        bbox=folder / "bbox.tsv", out=out, workers=workers,
                        min_class_count=1, split_ratios=(1.0, 0.0, 0.0))  # fmt: skip


def images_of(folder: Path) -> Path:
    return folder / "images" / "original_full"


def make_run(folder: Path, out: Path, image_size: int) -> Path:
    """A fixed-network run trained one step on the photos ingested once (reused)."""
    run = out / f"run-{image_size}"
    if not (run / "model.pt").exists():
        dataset = out / "model-ds"
        if not (dataset / "manifest.json").exists():
            run_ingest(ingest_config(folder, dataset, 2), progress=False)
        shutil.rmtree(run, ignore_errors=True)
        run_bionas("train", dataset, "--out", run, "--genotype", "manual", "--max-steps", 1,
                   "--image-size", image_size, "--batch-size", 8, "--workers", 0,
                   "--device", "cpu", "--quiet")  # fmt: skip
    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="200 photos, one round")
    parser.add_argument("--n", type=int, help="synthetic photos (default 600, quick 200)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, every path")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224, help="the model's input size")
    parser.add_argument("--rounds", type=int, help="tries per path (default 2, quick 1)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each try, wait up to this long for other processes to idle")  # fmt: skip
    args = parser.parse_args()
    n = args.n or (200 if args.quick else 600)
    rounds = args.rounds or (1 if args.quick else 2)
    out = Path(OUT_DIR) / f"bench_predict-n{n}"
    out.mkdir(parents=True, exist_ok=True)
    folder = synth_once(Path(OUT_DIR) / f"predict-synth-n{n}", n, "--seed", 0)
    run = make_run(folder, out, args.image_size)
    rows = read_table_rows(folder / "metadata.csv", folder / "bbox.tsv", BIOSCAN_5M, ())
    paths = [images_of(folder) / p for p in rows.paths]
    w, b = args.workers, args.batch_size
    paths_to_time = {
        "floor: PIL decode only": lambda: floor(paths, w, b),
        "image path only (no model)": lambda: image_path(folder, run, out, w, b),
        "bionas predict --metadata (one step)": lambda: one_step(folder, run, out, w, b),
        "bionas ingest + predict --dataset": lambda: two_step(folder, run, out, w, b),
    }
    print(machine_line())
    print(f"{len(paths)} photos (1024x768 JPEG), {w} workers, batch {b}, model input "
          f"{args.image_size} px, {rounds} round(s); {uptime_line()}")  # fmt: skip
    results = {}
    for name, fn in paths_to_time.items():
        tries = []
        for _ in range(rounds):
            wait_for_quiet(args.wait_quiet, cores=w) if args.wait_quiet else None
            with LoadMeter(cores=w) as meter:
                start = time.perf_counter()
                photos = fn()
                seconds = time.perf_counter() - start
            tries.append((seconds, photos, meter.load))
            print(f"  {name}: {photos} photos in {seconds:.2f} s ({meter.load})", flush=True)
        seconds, photos, load = min(tries, key=lambda t: t[0] / max(t[1], 1))
        results[name] = {"photos": photos, "seconds": seconds, "rate": photos / seconds,
                         "load": str(load)}  # fmt: skip
    start = time.perf_counter()
    model_photos = model_only(run, len(paths), b)
    model_s = time.perf_counter() - start
    report(results, model_photos / model_s, args, len(paths))


def report(results: dict, model_rate: float, args, photos: int) -> None:
    floor_rate = results["floor: PIL decode only"]["rate"]
    two = results["bionas ingest + predict --dataset"]["rate"]
    table = [
        [name, r["photos"], f"{r['seconds']:.2f}", f"{r['rate']:.1f}",
         f"{r['rate'] / floor_rate:.2f}", r["load"]]
        for name, r in results.items()
    ]  # fmt: skip
    table.append(["model only (forward, main process)", photos, "", f"{model_rate:.1f}", "", ""])
    print()
    print(format_table(["path", "photos", "s", "photos/s", "vs floor", "load"], table))
    one = results["bionas predict --metadata (one step)"]["rate"]
    print(f"\none step vs floor: {one / floor_rate:.2f} (goal >= {TARGET_VS_FLOOR}); "
          f"one step vs two-step path: {one / two:.2f}x")  # fmt: skip
    write_results(f"bench_predict-n{photos}-w{args.workers}-s{args.image_size}.json",
                  {"machine": machine_line(), "results": results, "model_only_rate": model_rate,
                   "workers": args.workers, "image_size": args.image_size})  # fmt: skip


if __name__ == "__main__":
    main()
