"""`--arch-data heldout`: what the θ and w streams read from the shards in one epoch, and
what resuming the endless θ stream costs after N passes over it, side by side:

  by-key (baseline)  bionas before: the held-out slice is every sample whose
                     crc32(processid) % 10000 < fraction x 10000, so both streams read
                     and un-tar every train shard and drop what is not theirs; the θ
                     stream's position is one cursor over the whole endless stream, and a
                     resume skips (islice) everything it ever read
  by-shard (bionas)  round(fraction x shards) whole train shards for θ, the others for w
                     (`bionas.trainer.heldout`); the θ stream's position is (pass, samples
                     in the pass) and a resume reads only that pass up to the position

The baseline is that old composition rebuilt from today's reader (the trainer no longer
has it): `read_samples` over all train shards, the crc32 filter, islice for the resume.
What it reads (shards opened, samples un-tarred, member bytes: `ReadStats`, the shuffle
buffer's read-ahead included) is what the old code read; only its shuffle seeds differ
(the buffer was one across passes), which does not change what is read. Both sides stop
at raw samples: a kept sample costs the same JPEG decode on either side; the difference
is in what is read and thrown away.

One epoch, one rank, batch `--batch-size`: the w stream takes (w samples // batch) batches
(by-key: w samples estimated as int(train x (1 - fraction)), as the old code did; by-shard:
exact manifest counts), and the θ stream as many. Resume: the θ stream is rebuilt at
N passes + half a pass of its samples (by-key: N x the keys inside the slice + half),
then timed to its first sample; median of `--repeats`.

    python benchmarks/bench_heldout.py --quick   # 1,500 synthetic rows, 41 train shards
    python benchmarks/bench_heldout.py           # 6,000 rows, ~80 train shards
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from _common_data import run_bionas, synth_once
from reporting import (
    format_table,
    machine,
    machine_line,
    uptime_line,
    warm_page_cache,
    write_results,
)

from bionas.manifests.manifest import load_manifest
from bionas.shards.reader import RawSample, ReadStats, read_samples
from bionas.trainer.heldout import split_heldout


def prepare(work: Path, n: int, shard_size: int) -> Path:
    """A `bionas synth` + `bionas ingest` dataset (random 80/10/10 split), made once."""
    synth = synth_once(work / f"synth-{n}", n)
    ds = work / f"ds-{n}-{shard_size}"
    if not (ds / "manifest.json").exists():
        print(f"bionas ingest -> {ds} (once) ...", flush=True)
        run_bionas(
            "ingest", synth / "metadata.csv", "--images", synth / "images" / "original_full",
            "--bbox", synth / "bbox.tsv", "--out", ds, "--split-source", "random",
            "--split-ratios", "0.8,0.1,0.1", "--splits", "train", "--shard-size", shard_size,
            "--min-class-count", "1", "--quiet",
        )  # fmt: skip
    return ds


def inside(key: str, fraction: float) -> bool:
    """The baseline's held-out test (bionas before: `HeldOut` in trainer/data.py)."""
    return zlib.crc32(key.encode()) % 10_000 < fraction * 10_000


class Counted:
    """A stream (by-key: filtered) with the reader's counters."""

    def __init__(self, make: Callable[[ReadStats], Iterator[RawSample]], keep=None) -> None:
        self.stats = ReadStats()
        raw = make(self.stats)
        self.samples = raw if keep is None else (s for s in raw if keep(s.key))

    def take(self, n: int) -> Counted:
        for _ in itertools.islice(self.samples, n):
            pass
        return self

    def row(self) -> dict[str, float]:
        return {"shards": self.stats.shards_opened, "samples": self.stats.samples_read,
                "mb": self.stats.bytes_read / 1e6}  # fmt: skip


def epoch_reads(train: list[Path], f: float, batch: int, buffer: int) -> dict[str, dict]:
    """What each stream of each side reads in one epoch of held-out training."""
    manifest = load_manifest(train[0].parents[2])
    split = split_heldout(manifest, train, f)
    total = manifest.num_samples("train")
    old_batches = int(total * (1 - f)) // batch
    new_batches = split.w_samples // batch

    def stream(shards, keep=None):
        def make(stats):
            return read_samples(shards, passes=None, shuffle_buffer=buffer, stats=stats)

        return Counted(make, keep)

    runs = {
        ("theta", "by-key"): stream(train, lambda k: inside(k, f)).take(old_batches * batch),
        ("w", "by-key"): stream(train, lambda k: not inside(k, f)).take(old_batches * batch),
        ("theta", "by-shard"): stream(split.arch).take(new_batches * batch),
        ("w", "by-shard"): stream(split.w).take(new_batches * batch),
    }
    out = {f"{s}/{side}": r.row() for (s, side), r in runs.items()}
    out["kept"] = {"by-key": old_batches * batch, "by-shard": new_batches * batch}
    out["split"] = split.to_dict()
    return out


def resume_cost(train: list[Path], f: float, passes: int, buffer: int, repeats: int) -> dict:
    """Rebuild the θ stream at `passes` passes + half a pass and read its first sample."""
    manifest = load_manifest(train[0].parents[2])
    split = split_heldout(manifest, train, f)
    old_pass = sum(inside(s.key, f) for s in read_samples(train))  # keys in the slice

    def by_key(stats: ReadStats) -> Iterator[RawSample]:  # skips its whole history
        raw = read_samples(train, passes=None, shuffle_buffer=buffer, stats=stats)
        cursor = passes * old_pass + old_pass // 2
        return itertools.islice((s for s in raw if inside(s.key, f)), cursor, None)

    def by_shard(stats: ReadStats) -> Iterator[RawSample]:  # reads its current pass only
        skip = split.arch_samples // 2
        return read_samples(split.arch, passes=None, first_pass=passes, skip=skip,
                            shuffle_buffer=buffer, stats=stats)  # fmt: skip

    sides = {"by-key": by_key, "by-shard": by_shard}
    out = {}
    for side, make in sides.items():
        seconds, stats = [], ReadStats()
        for _ in range(repeats):
            stats = ReadStats()
            start = time.perf_counter()
            next(make(stats))
            seconds.append(time.perf_counter() - start)
        out[side] = {"s": statistics.median(seconds), "shards": stats.shards_opened,
                     "samples": stats.samples_read, "mb": stats.bytes_read / 1e6}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bionas-bench/heldout"))
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shuffle-buffer", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n, shard_size, passes = (1500, 30, (1, 4, 16)) if args.quick else (6000, 60, (1, 4, 16, 64))
    ds = prepare(args.work, n, shard_size)
    train = load_manifest(ds).shard_paths("train")
    warm_page_cache(*train)
    print(machine_line())
    print(f"{len(train)} train shards, {load_manifest(ds).num_samples('train')} samples; "
          f"fraction {args.fraction}, batch {args.batch_size}, buffer {args.shuffle_buffer}")  # fmt: skip
    epoch = epoch_reads(train, args.fraction, args.batch_size, args.shuffle_buffer)
    rows = []
    for stream in ("theta", "w"):
        old, new = epoch[f"{stream}/by-key"], epoch[f"{stream}/by-shard"]
        rows.append([stream, old["shards"], old["samples"], f"{old['mb']:.1f}", new["shards"],
                     new["samples"], f"{new['mb']:.1f}", f"{old['mb'] / new['mb']:.1f}x"])  # fmt: skip
    print("\nOne epoch of held-out training: what each stream reads from the shards")
    print(format_table(["stream", "by-key shards", "by-key samples", "by-key MB",
                        "by-shard shards", "by-shard samples", "by-shard MB", "MB ratio"], rows))  # fmt: skip
    print(f"samples kept per stream: by-key {epoch['kept']['by-key']}, "
          f"by-shard {epoch['kept']['by-shard']}; split {epoch['split']}")  # fmt: skip
    resume = {p: resume_cost(train, args.fraction, p, args.shuffle_buffer, args.repeats)
              for p in passes}  # fmt: skip
    rows = [[p, r["by-key"]["samples"], f"{r['by-key']['mb']:.1f}", f"{r['by-key']['s'] * 1e3:.0f}",
             r["by-shard"]["samples"], f"{r['by-shard']['mb']:.1f}",
             f"{r['by-shard']['s'] * 1e3:.0f}",
             f"{r['by-key']['s'] / r['by-shard']['s']:.1f}x"] for p, r in resume.items()]  # fmt: skip
    print("\nResuming the θ stream after N passes + half a pass (time to its first sample)")
    print(format_table(["passes N", "by-key samples", "by-key MB", "by-key ms",
                        "by-shard samples", "by-shard MB", "by-shard ms", "time ratio"], rows))  # fmt: skip
    print(uptime_line())
    write_results("bench_heldout.json", {"machine": machine(), "epoch": epoch,
                                         "resume": resume, "args": vars(args)})  # fmt: skip


if __name__ == "__main__":
    main()
