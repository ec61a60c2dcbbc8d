"""`--decode cpu` vs `--decode gpu`: where the training JPEGs should be decoded, measured
end to end on one dataset in one run. Its figures decide `--decode auto`
(`bionas.trainer.batch_decode.AUTO_DECODE`).

  cpu (baseline)  PIL in the DataLoader workers (DCT-scaled decode, resize, crop), uint8
                  batches copied to the device and normalised there (on a CPU device the
                  workers normalise), as `bionas train` runs today
  gpu             the workers ship JPEG bytes; the training process decodes each batch
                  with torchvision's decode_jpeg on --device (nvJPEG on CUDA; on CPU the
                  same code in one process), resizes and crops there, then normalises

(a) loader: batches through `_loader`'s path (BatchStream -> DataLoader -> decode ->
    `to_device`), no model: the img/s the loader can feed, for each --workers count,
    variants taking turns (order alternating) so that background load hits both alike;
    CPU-s/img is the CPU time of the whole process tree (workers included) per image.
(b) pixels: |gpu - cpu| per channel value (0..255) of the same images, on the dataset's
    first --pixel-images samples and on the real photos of --real (1024 x 768, which PIL
    decodes at 1/2 scale before resizing to 224); `cpu, full decode` leaves PIL's DCT
    scaling out, which isolates the resize.
(c) --train-steps N: `bionas train` itself (the search supernet, --batch-size, AMP as the
    device's default) for N steps with each --decode: img/s of the steps after the first
    --log-every window (worker start, cuDNN autotune).

The dataset is `bionas synth` + `bionas ingest` (256 px JPEGs, as ingest writes them),
made once under --work.

    python benchmarks/bench_decode.py --quick                  # CPU, workers 0 and 2
    python benchmarks/bench_decode.py --device cuda --workers 1,2,4,8 --train-steps 120
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import tempfile
import time
from pathlib import Path

import psutil
import torch
from _common_data import run_bionas, synth_once
from PIL import Image
from reporting import format_table, machine_line, write_results

from bionas.manifests.manifest import load_manifest
from bionas.shards.reader import read_samples
from bionas.trainer.batch_decode import EncodedImages, decode_batches, decode_pixels
from bionas.trainer.config import TrainConfig
from bionas.trainer.data import BatchStream, StreamSpec, check_shards_exist, make_loader
from bionas.trainer.encoding import load_encoding
from bionas.trainer.logs import read_jsonl
from bionas.trainer.loop import train
from bionas.trainer.step import to_device
from bionas.trainer.transforms import decode_image

DECODES = ("cpu", "gpu")  # baseline first
META_FIELDS = ("dna_bin", "class")
SHARD_SAMPLES = 100  # small shards, so that every worker gets several


def prepare(work: Path, n: int) -> Path:
    """An ingested synthetic dataset of `n` images (made once)."""
    synth = synth_once(work / f"synth-{n}", n)
    ds = work / f"ds-{n}"
    if not (ds / "manifest.json").exists():
        run_bionas(
            "ingest", synth / "metadata.csv", "--images", synth / "images" / "original_full",
            "--bbox", synth / "bbox.tsv", "--out", ds, "--shard-size", SHARD_SAMPLES,
            "--min-class-count", 20, "--quiet",
        )  # fmt: skip
    return ds


def batches(ds: Path, decode: str, workers: int, args: argparse.Namespace):
    """Endless batches on the device as the training loop gets them (`loop._loader`)."""
    manifest = load_manifest(ds)
    encoding = load_encoding(manifest, "order", META_FIELDS)
    cuda = args.device.type == "cuda"
    spec = StreamSpec(shards=tuple(check_shards_exist(manifest, "train")),
                      batch_size=args.batch_size, image_size=args.image_size, passes=None,
                      uint8=cuda, encoded=decode == "gpu")  # fmt: skip
    loader = make_loader(BatchStream(spec, encoding), workers, pin_memory=cuda)
    if decode == "gpu":
        loader = decode_batches(loader, spec.image_size, args.device)
    for batch in loader:
        yield to_device(batch, args.device)


def tree_cpu_seconds() -> float:
    """CPU time of this process and its live children (the DataLoader workers)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker that just ended
            total += sum(child.cpu_times()[:2])
    return total


def take(stream, count: int, device: torch.device) -> tuple[int, float, float]:
    """(images, wall s, CPU s) of `count` batches from `stream`."""
    images = 0
    wall, cpu = time.perf_counter(), tree_cpu_seconds()
    for _ in range(count):
        pixels, _, _ = next(stream)
        images += pixels.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images, time.perf_counter() - wall, tree_cpu_seconds() - cpu


def loader_rates(ds: Path, workers: int, args: argparse.Namespace) -> dict[str, dict]:
    """(a): the variants take turns (order alternating), each turn a fresh loader whose
    first `--warm` batches (worker start, first shards) are not timed, so that no idle
    loader's workers prefetch for the next turn."""
    totals = {decode: [0, 0.0, 0.0] for decode in DECODES}
    for turn in range(args.turns):
        for decode in DECODES if turn % 2 == 0 else DECODES[::-1]:
            stream = batches(ds, decode, workers, args)
            take(stream, args.warm, args.device)
            for i, value in enumerate(take(stream, args.batches, args.device)):
                totals[decode][i] += value
            stream.close()  # ends the DataLoader's workers
    return {
        decode: {"img_per_s": n / wall, "cpu_s_per_img": cpu / n}
        for decode, (n, wall, cpu) in totals.items()
    }


def pixel_rows(name: str, jpegs: list[bytes], args: argparse.Namespace) -> list[list[str]]:
    """(b): max and mean |gpu - cpu| over `jpegs`, against PIL as the workers run it and
    against PIL without DCT scaling."""
    size = args.image_size
    ours = torch.stack(decode_pixels(EncodedImages.of(jpegs).tensors(), size, args.device))
    rows = []
    for label, pil in (
        ("cpu (workers)", lambda jpeg: decode_image(jpeg, size)),
        ("cpu, full decode", lambda jpeg: decode_image(Image.open(io.BytesIO(jpeg)), size)),
    ):
        theirs = torch.stack([pil(jpeg) for jpeg in jpegs]).to(args.device)
        diff = (ours.float() - theirs.float()).abs()
        rows.append([name, len(jpegs), label, f"{diff.max():.0f}", f"{diff.mean():.3f}"])
    return rows


def pixel_differences(ds: Path, args: argparse.Namespace) -> list[list[str]]:
    shards = load_manifest(ds).shard_paths("train")
    samples = itertools.islice(read_samples(shards, shuffle_shards=False), args.pixel_images)
    rows = pixel_rows(f"{ds.name} (ingest, 256 px)", [s.jpg for s in samples], args)
    real = sorted(args.real.rglob("*.jpg")) if args.real.is_dir() else []
    if real:
        rows += pixel_rows("real photos (1024 x 768)", [p.read_bytes() for p in real], args)
    return rows


def train_rate(ds: Path, decode: str, workers: int, args: argparse.Namespace) -> float:
    """(c): img/s of `bionas train` steps after the first log window."""
    with tempfile.TemporaryDirectory() as run:
        config = TrainConfig(dataset_dir=ds, run_dir=Path(run), target="order",
                             meta_fields=META_FIELDS, batch_size=args.batch_size,
                             image_size=args.image_size, max_steps=args.train_steps,
                             workers=workers, decode=decode, device=args.device.type,
                             log_every=args.log_every, epochs=1000, quiet=True)  # fmt: skip
        train(config)
        steps = read_jsonl(Path(run) / "steps.jsonl")[args.log_every :]
    return sum(s["samples"] for s in steps) / sum(s["samples"] / s["img_per_s"] for s in steps)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="600 images, 2 short turns, 112 px")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", default=None, help="comma-separated (default 0,2; CUDA 1,2,4,8)")
    p.add_argument("--images", type=int, help="synthetic images (default 2000; quick 600)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, help="default 224 (quick: 112)")
    p.add_argument("--turns", type=int, help="turns per variant in (a) (default 4; quick 2)")
    p.add_argument("--batches", type=int, help="timed batches per turn (default 20; quick 8)")
    p.add_argument("--warm", type=int, default=3, help="untimed batches before (a)")
    p.add_argument("--train-steps", type=int, default=0, help="(c): steps per run; 0: skip")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--pixel-images", type=int, default=200, help="(b): dataset images")
    p.add_argument(
        "--real",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared/fixtures/bioscan-real/images",
        help="(b): a folder of real photos (skipped when absent)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    p.add_argument("--work", type=Path, default=Path("/tmp/bionas-bench/decode"))
    args = p.parse_args()
    args.device = torch.device(args.device)
    cuda = args.device.type == "cuda"
    args.workers = [int(w) for w in (args.workers or ("1,2,4,8" if cuda else "0,2")).split(",")]
    args.images = args.images or (600 if args.quick else 2000)
    args.image_size = args.image_size or (112 if args.quick else 224)
    args.turns = args.turns or (2 if args.quick else 4)
    args.batches = args.batches or (8 if args.quick else 20)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    ds = prepare(args.work, args.images)
    device = str(args.device)
    if args.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(args.device)})"
    print(machine_line())
    print(f"device {device}; batch {args.batch_size}; {args.image_size} px; {ds}")
    rows, results = [], {"device": device, "loader": {}, "train": {}}
    for workers in args.workers:
        rates = loader_rates(ds, workers, args)
        results["loader"][workers] = rates
        cpu, gpu = rates["cpu"], rates["gpu"]
        rows.append([workers, f"{cpu['img_per_s']:.0f}", f"{gpu['img_per_s']:.0f}",
                     f"{gpu['img_per_s'] / cpu['img_per_s']:.2f}",
                     f"{cpu['cpu_s_per_img'] * 1e3:.2f}", f"{gpu['cpu_s_per_img'] * 1e3:.2f}"])  # fmt: skip
    print("\n(a) loader + decode + to_device, img/s (no model)")
    header = ["workers", "cpu img/s", "gpu img/s", "gpu/cpu", "cpu CPU-ms/img", "gpu CPU-ms/img"]
    print(format_table(header, rows))
    print(f"\n(b) |gpu - cpu| pixel values (0..255) at {args.image_size} px")
    rows = pixel_differences(ds, args)
    results["pixels"] = rows
    print(format_table(["images", "n", "against", "max", "mean"], rows))
    if args.train_steps:
        rows = []
        for workers in args.workers:
            rates = {d: train_rate(ds, d, workers, args) for d in DECODES}
            results["train"][workers] = rates
            ratio = rates["gpu"] / rates["cpu"]
            rows.append([workers, f"{rates['cpu']:.0f}", f"{rates['gpu']:.0f}", f"{ratio:.2f}"])
        print(f"\n(c) bionas train, img/s after the first {args.log_every} steps")
        print(format_table(["workers", "cpu img/s", "gpu img/s", "gpu/cpu"], rows))
    write_results(f"decode-{args.device.type}.json", results)


if __name__ == "__main__":
    main()
