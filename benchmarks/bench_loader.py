"""Training loader: bionas shards vs the official `bioscan-dataset` loader (`BIOSCAN5M`).

Two questions, each answered side by side in the same run:

(a) Steady state, img/s on a warm page cache, on the *same images*: the train split of a
    `bionas synth` + `bionas ingest` dataset. The official loader reads the very JPEG bytes
    that are in the shards, extracted to its own layout
    (`bioscan5m/images/cropped_256/train/<processid>.jpg`, CSV at
    `bioscan5m/metadata/csv/BIOSCAN_5M_Insect_Dataset_metadata.csv`). Same batch size, same
    DataLoader `num_workers` (0 and 2), same transform: decode -> resize shorter side to
    224 -> centre-crop 224 -> tensor -> normalise (BIOSCAN mean/std).
      bionas            BatchStream (tar shards, shuffle buffer 1000, JSON record decode,
                        vocab lookups for `order` + meta fields dna_bin, class) + make_loader
      official+same-tf  BIOSCAN5M(modality=image, target=order), transform =
                        bionas.trainer.transforms.preprocess_image: isolates the loader itself
      official+tv-tf    the same with the usual torchvision Compose(Resize, CenterCrop,
                        ToTensor, Normalize), as a user of the official loader writes it
    The official DataLoader uses shuffle=True and persistent_workers (no worker restart at
    epoch ends); the first `warm` batches are not timed. The three loaders live side by
    side and take turns in chunks of 10 batches (order alternating), so background load
    hits all alike; totals over all turns are reported (see `interleaved` for how
    prefetching workers are handled). img/CPU-s = images per CPU-second of the whole
    process tree (workers included): the cost per image, which a busy machine disturbs
    far less than img/s.

(b) Start-up with a 5.15M-row metadata table behind it (time to first batch, peak memory
    of the loader process tree), each in a fresh subprocess, after imports:
      official   BIOSCAN5M(split="all") on a 5,150,850-row synthetic metadata CSV (the
                 paper trains on a random split of all records, so it reads them all;
                 pandas reads the whole CSV whatever the split). Images exist for the first
                 rows only (symlinks to real 256-px JPEGs), so its DataLoader reads in
                 order (shuffle=False). Its own integrity check (md5 of the CSV, and of a
                 few listed image files) cannot pass on synthetic files and is skipped:
                 that favours the baseline; the md5 time of the CSV is shown apart.
      bionas     manifest -> vocabularies (sha256-checked) -> shard list -> first batch,
                 on a dataset whose vocabulary files were rebuilt from the same 5.15M-row
                 table (`bionas vocab`: every dna_bin of the table, 269k in the synthetic
                 one, 324k in the real release) and whose manifest lists as many shards
                 as a 5.15M-sample ingest would (~100 MB each, symlinks to the real
                 ones); and on the small dataset, to show the start does not grow.
    bionas's start is measured `--start-repeats` times (median start, largest peak), the
    official one once.

(c) The reader's stream check (each shard's bytes, sha256 and sample count compared with
    its manifest record while it streams), side by side in the same run: the same train
    shards given as plain paths (no check), as ShardRefs without a sha256 (size + count)
    and as the full ShardRefs `bionas train` reads (size + count + sha256). Two views:
      reader only   `read_samples` passes over all train shards (no decoding), the
                    variants in alternating order; MB/s of shard files per CPU-second:
                    the check's cost at its most visible
      loader        BatchStream + DataLoader as in (a), the variants taking turns
    `--check-only` runs (c) alone (no official loader, no big table).
    Memory: peak over the run of the summed RSS of the process and its DataLoader workers
    (psutil, polled every 10 ms), and the summed PSS (shared pages counted once: the
    forked workers share most of the parent's pages, which summed RSS counts again).

Torch threads: 1 in the main process (`--threads`), as DataLoader workers have: with one
OpenMP thread per core on a small shared machine, a busy neighbour stalls the pool
(torch.stack of one batch took 0.4 s here under load).

    python benchmarks/bench_loader.py --quick     # 600 images, 200,000-row table (~2 min)
    python benchmarks/bench_loader.py --check-only  # (c) alone, on the 2,000 images
    python benchmarks/bench_loader.py             # 2,000 images, 5,150,850-row table
                                                  # (~4.3 GB CSV; the official loader
                                                  # needs ~9 GB RAM and minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from reporting import format_table, machine, machine_line, uptime_line, warm_page_cache

FULL_ROWS = 5_150_850
QUICK_ROWS = 200_000
BIG_CSV_CANDIDATES = (  # full-size tables other benchmarks may have generated already
    "/tmp/bionas-bench/meta-{rows}/metadata.csv",
    "/tmp/big5m/metadata.csv",
)
META_FIELDS = ("dna_bin", "class")  # bionas's default for target `order`
TARGET = "order"
SHARD_SAMPLES = 200  # small shards, so 2 workers each get several
TARGET_SHARD_BYTES = 100_000_000  # what `bionas ingest --shard-size auto` aims at
FIRST_ROWS_WITH_IMAGES = 256
DISTURBED_CORES = 0.25  # others using more than this -> the figure is suspect
CHUNK = 10  # batches per turn when loaders take turns (num_workers=0)
TARGET_STEADY = 1.0  # bionas img/s >= official
TARGET_START = 50.0  # official time-to-first-batch / bionas
TARGET_MEMORY = 10.0  # official peak / bionas
TARGET_CHECK_COST = 3.0  # % of loader throughput the stream check may cost
CHECK_LEVELS = ("none", "size+count", "size+count+sha256")


def bionas_cli() -> str:
    exe = Path(sys.executable).with_name("bionas")
    return str(exe) if exe.exists() else "bionas"


def run_cli(*args: str) -> None:
    subprocess.run([bionas_cli(), *args, "--quiet"], check=True, stdout=subprocess.DEVNULL)


# ---- data preparation (cached under --work) ----------------------------------------


def prepare_images(work: Path, n: int) -> tuple[Path, Path]:
    """A synthetic BIOSCAN-5M folder + its ingested dataset; returns (synth, dataset)."""
    synth, ds = work / f"synth-{n}", work / f"ds-{n}"
    if not (synth / "metadata.csv").exists():
        print(f"  bionas synth {synth} --n {n} (once) ...", flush=True)
        run_cli("synth", str(synth), "--n", str(n), "--overwrite")
    if not (ds / "manifest.json").exists():
        print(f"  bionas ingest -> {ds} (once) ...", flush=True)
        run_cli(
            "ingest", str(synth / "metadata.csv"),
            "--images", str(synth / "images" / "original_full"),
            "--bbox", str(synth / "bbox.tsv"), "--out", str(ds),
            "--shard-size", str(SHARD_SAMPLES), "--min-class-count", "20",
        )  # fmt: skip
    return synth, ds


def official_root_for(ds: Path, synth: Path) -> Path:
    """The official layout holding exactly the train samples of `ds`, byte for byte."""
    import pandas as pd

    from bionas.manifests.manifest import load_manifest

    root = ds.parent / f"official-{ds.name}"
    base = root / "bioscan5m"
    csv = base / "metadata" / "csv" / "BIOSCAN_5M_Insect_Dataset_metadata.csv"
    if csv.exists():
        return root
    images = base / "images" / "cropped_256" / "train"
    images.mkdir(parents=True, exist_ok=True)
    keys = []
    for shard in load_manifest(ds).shard_paths("train"):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, ext = member.name.rpartition("/")[2].partition(".")
                if ext == "jpg":
                    (images / f"{key}.jpg").write_bytes(tar.extractfile(member).read())
                    keys.append(key)
    meta = pd.read_csv(synth / "metadata.csv", dtype=str, keep_default_na=False)
    meta = meta[meta["processid"].isin(set(keys))].copy()
    meta["split"], meta["chunk"] = "train", ""  # every image sits in train/, no chunk
    csv.parent.mkdir(parents=True, exist_ok=True)
    meta.to_csv(csv, index=False)
    return root


def find_big_csv(rows: int, work: Path) -> Path:
    """A `bionas synth --no-images` table of `rows` rows: one already generated (another
    benchmark's, in a folder named for its row count, or /tmp/big5m), else make one."""
    for pattern in BIG_CSV_CANDIDATES:
        path = Path(pattern.format(rows=rows))
        named = f"meta-{rows}" in str(path)
        if path.exists() and (named or (rows == FULL_ROWS and path.stat().st_size > 3e9)):
            return path
    folder = work / f"meta-{rows}"
    if not (folder / "metadata.csv").exists():
        print(f"  bionas synth {folder} --n {rows} --no-images (once) ...", flush=True)
        run_cli("synth", str(folder), "--n", str(rows), "--no-images", "--overwrite")
    return folder / "metadata.csv"


def bionas_big_dataset(ds: Path, big_csv: Path, rows: int) -> Path:
    """`ds` with vocabularies rebuilt from the big table and a train shard list as long as
    a `rows`-sample ingest would write (symlinks to ds's real shards)."""
    from bionas.manifests.manifest import load_manifest, write_manifest

    out = ds.parent / f"{ds.name}-vocab{rows}"
    if (out / "manifest.json").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copy2(ds / "manifest.json", out / "manifest.json")
    shutil.copytree(ds / "manifests", out / "manifests")
    print(f"  bionas vocab {big_csv} --out {out} (once) ...", flush=True)
    t = time.perf_counter()
    subprocess.run([bionas_cli(), "vocab", str(big_csv), "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    print(f"    {time.perf_counter() - t:.0f} s", flush=True)
    manifest, original = load_manifest(out), load_manifest(ds)
    body = json.loads(json.dumps(manifest.body))
    for split, share in (("train", 0.7), ("val", 0.2), ("test", 0.1)):
        real = original.shard_paths(split) if split in original.splits else []
        if not real:
            continue
        records = manifest.shards(split)
        per_sample = sum(r["bytes"] for r in records) / sum(r["samples"] for r in records)
        per_shard = max(1, int(TARGET_SHARD_BYTES / per_sample))
        samples = int(rows * share)
        count = -(-samples // per_shard)
        folder = out / "shards" / split
        folder.mkdir(parents=True, exist_ok=True)
        entries = []
        for i in range(count):
            source = records[i % len(records)]
            name = f"{split}-{i:06d}.tar"
            os.symlink(real[i % len(real)].resolve(), folder / name)
            entries.append({**source, "name": name, "samples": min(per_shard, samples)})
            samples -= per_shard
        body["splits"][split] = {
            "bytes": sum(e["bytes"] for e in entries),
            "samples": sum(e["samples"] for e in entries),
            "shards": entries,
        }
    body.pop("schema", None)
    write_manifest(out, body)
    return out


def official_big_root(work: Path, big_csv: Path, official_small: Path, rows: int) -> Path:
    """The official layout over the big CSV; the first rows' images are symlinks."""
    import pandas as pd

    root = work / f"official-big-{rows}"
    base = root / "bioscan5m"
    csv = base / "metadata" / "csv" / "BIOSCAN_5M_Insect_Dataset_metadata.csv"
    if csv.is_symlink() and csv.resolve() == big_csv.resolve():
        return root
    shutil.rmtree(root, ignore_errors=True)
    csv.parent.mkdir(parents=True)
    os.symlink(big_csv.resolve(), csv)
    sources = sorted((official_small / "bioscan5m/images/cropped_256/train").glob("*.jpg"))
    head = pd.read_csv(big_csv, nrows=FIRST_ROWS_WITH_IMAGES, dtype=str, keep_default_na=False)
    for i, row in enumerate(head.itertuples()):
        parts = [row.split] + ([row.chunk] if row.chunk else []) + [f"{row.processid}.jpg"]
        target = base / "images" / "cropped_256" / Path(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(sources[i % len(sources)].resolve(), target)
    return root


# ---- loaders ------------------------------------------------------------------------


def official_dataset(root: Path, split: str, transform_kind: str):
    """BIOSCAN5M with its integrity check (md5s of the real release) switched off."""
    from bioscan_dataset import BIOSCAN5M

    class OfficialOnSynthetic(BIOSCAN5M):
        def _check_integrity(self, verbose: int = 1) -> bool:
            return True

    return OfficialOnSynthetic(
        str(root), split=split, modality=("image",), target_type=TARGET,
        transform=make_transform(transform_kind),
    )  # fmt: skip


def make_transform(kind: str):
    from bionas.trainer.transforms import BIOSCAN_MEAN, BIOSCAN_STD, preprocess_image

    if kind == "same":
        return preprocess_image  # a PIL image in: the exact bionas transform
    from torchvision import transforms as T

    return T.Compose(
        [T.Resize(224), T.CenterCrop(224), T.ToTensor(), T.Normalize(BIOSCAN_MEAN, BIOSCAN_STD)]
    )


def official_loader(root: Path, split: str, tf: str, workers: int, batch: int, shuffle: bool):
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(
        official_dataset(root, split, tf),
        batch_size=batch,
        shuffle=shuffle,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )


def bionas_loader(ds: Path, workers: int, batch: int, check: str = CHECK_LEVELS[-1]):
    from bionas.manifests.manifest import load_manifest
    from bionas.trainer.data import BatchStream, StreamSpec, make_loader
    from bionas.trainer.encoding import load_encoding

    manifest = load_manifest(ds)
    encoding = load_encoding(manifest, TARGET, META_FIELDS)
    spec = StreamSpec(shards=checked_shards(manifest, check), batch_size=batch)
    return make_loader(BatchStream(spec, encoding), workers)


def checked_shards(manifest, check: str) -> tuple:
    """The train shards as `bionas train` gets them (ShardRefs, every check), without
    their sha256, or as bare paths (unchecked)."""
    from dataclasses import replace

    from bionas.trainer.data import check_shards_exist

    refs = check_shards_exist(manifest, "train")
    if check == "none":
        return tuple(r.path for r in refs)
    return tuple(refs if check == CHECK_LEVELS[-1] else (replace(r, sha256=None) for r in refs))


def endless(loader):
    while True:
        yield from loader


def batch_images(batch) -> int:
    return len(batch) if hasattr(batch, "keys") else len(batch[0])


# ---- (a) steady state ---------------------------------------------------------------


def tree_cpu_seconds() -> float:
    """CPU time of this process, its reaped children and its live descendants (the
    DataLoader workers, which `os.times` would only count once they exit)."""
    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        try:
            c = child.cpu_times()
        except psutil.Error:
            continue
        total += c.user + c.system
    return total


@dataclass
class TreeLoad:
    """How busy the machine was: load average, and the cores our process tree and the
    other processes used meanwhile (live DataLoader workers counted as ours)."""

    load1: float
    own_cores: float
    others_cores: float

    def __str__(self) -> str:
        flag = " DISTURBED" if self.others_cores > DISTURBED_CORES else ""
        return (
            f"load1 {self.load1:.2f}, ours {self.own_cores:.2f} / others "
            f"{self.others_cores:.2f} cores{flag}"
        )


class TreeMeter:
    """Wall time, our process tree's CPU time, and the cores others used meanwhile."""

    def __enter__(self) -> TreeMeter:
        self._wall, self._cpu = time.perf_counter(), tree_cpu_seconds()
        self._busy = busy_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = max(time.perf_counter() - self._wall, 1e-9)
        self.cpu = tree_cpu_seconds() - self._cpu
        others = max(0.0, busy_seconds() - self._busy - self.cpu)
        self.load = TreeLoad(os.getloadavg()[0], self.cpu / self.wall, others / self.wall)


def busy_seconds() -> float:
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in BUSY_FIELDS)


BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")


def interleaved(makers: dict, workers: int, args) -> dict[str, tuple[float, float, TreeLoad]]:
    """The loaders live side by side and take turns in chunks of CHUNK batches (order
    alternating), so background load hits all alike; totals per loader.

    With workers, a loader's turn first drops the batches its workers prefetched while it
    waited (2 per worker, made during others' turns), then times CHUNK batches; its
    workers finish at most those 2 per worker in the next loader's turn. Every loader
    costs about the same per batch, so that spill-over evens out.
    """
    streams = {name: endless(make(workers)) for name, make in makers.items()}
    for stream in streams.values():
        for _ in range(args.warm):
            next(stream)
    totals = {name: [0, 0.0, 0.0] for name in streams}  # images, wall, CPU
    names = list(streams)
    chunks = max(1, args.rounds * args.count // CHUNK)
    with TreeMeter() as meter:
        for c in range(chunks):
            for name in names if c % 2 == 0 else names[::-1]:
                for _ in range(2 * workers):
                    next(streams[name])
                wall, cpu = time.perf_counter(), tree_cpu_seconds()
                images = sum(batch_images(next(streams[name])) for _ in range(CHUNK))
                t = totals[name]
                t[0] += images
                t[1] += time.perf_counter() - wall
                t[2] += tree_cpu_seconds() - cpu
    for name, (images, wall, cpu) in totals.items():
        print(f"  workers {workers} {name:<17} {images / wall:7.1f} img/s, "
              f"{images / cpu:6.1f} img/CPU-s ({chunks} turns of {CHUNK} batches)",
              flush=True)  # fmt: skip
    del streams
    return {name: (t[0] / t[1], t[0] / t[2], meter.load) for name, t in totals.items()}


def steady_state(ds: Path, official: Path, args) -> list[list[str]]:
    makers = {
        "bionas": lambda w: bionas_loader(ds, w, args.batch_size),
        "official+same-tf": lambda w: official_loader(
            official, "train", "same", w, args.batch_size, True
        ),
        "official+tv-tf": lambda w: official_loader(
            official, "train", "tv", w, args.batch_size, True
        ),
    }
    rows = []
    for workers in args.workers:
        best = interleaved(makers, workers, args)
        ours = best["bionas"]
        for name in ("official+same-tf", "official+tv-tf"):
            base = best[name]
            rows.append([
                workers, name, f"{base[0]:.0f}", f"{ours[0]:.0f}", f"{ours[0] / base[0]:.2f}x",
                f"{base[1]:.0f}", f"{ours[1]:.0f}", f"{ours[1] / base[1]:.2f}x",
                f"{base[2]} / {ours[2]}",
            ])  # fmt: skip
    return rows


# ---- (c) the reader's stream check --------------------------------------------------


def reader_rates(ds: Path, passes: int) -> dict[str, float]:
    """check level -> MB of shard files per CPU-second of raw `read_samples` passes (no
    decoding; the median pass, levels alternating in order pass by pass), and "sha256
    alone": hashlib over the same files."""
    import hashlib
    import statistics

    from bionas.manifests.manifest import load_manifest
    from bionas.shards.reader import read_samples

    manifest = load_manifest(ds)
    shards = {check: checked_shards(manifest, check) for check in CHECK_LEVELS}
    mb = sum(r.size for r in shards[CHECK_LEVELS[-1]]) / 1e6
    seconds: dict[str, list[float]] = {check: [] for check in (*CHECK_LEVELS, "sha256 alone")}
    for i in range(passes):
        for check in CHECK_LEVELS if i % 2 == 0 else CHECK_LEVELS[::-1]:
            start = time.process_time()
            for _ in read_samples(shards[check], shuffle_shards=False):
                pass
            seconds[check].append(time.process_time() - start)
        start = time.process_time()
        for ref in shards[CHECK_LEVELS[-1]]:
            hashlib.sha256(ref.path.read_bytes()).hexdigest()
        seconds["sha256 alone"].append(time.process_time() - start)
    return {check: mb / max(statistics.median(t), 1e-9) for check, t in seconds.items()}


def stream_check_cost(ds: Path, args) -> list[list[str]]:
    from bionas.manifests.manifest import load_manifest

    rates = reader_rates(ds, args.check_passes)
    records = load_manifest(ds).shards("train")
    mb_per_image = sum(r["bytes"] for r in records) / sum(r["samples"] for r in records) / 1e6
    rows = []
    for check in CHECK_LEVELS[1:]:
        rows.append(["reader only, MB/CPU-s", check, f"{rates['none']:.0f}",
                     f"{rates[check]:.0f}", cost(rates["none"], rates[check]), "", ""])  # fmt: skip
    makers = {check: (lambda w, c=check: bionas_loader(ds, w, args.batch_size, c))
              for check in CHECK_LEVELS}  # fmt: skip
    for workers in args.workers:
        got = interleaved(makers, workers, args)
        base = got["none"]
        for check in CHECK_LEVELS[1:]:
            ours = got[check]
            rows.append([
                f"loader, workers {workers}, img/CPU-s", check, f"{base[1]:.0f}",
                f"{ours[1]:.0f}", cost(base[1], ours[1]),
                f"{base[0]:.0f} / {ours[0]:.0f} img/s wall, {cost(base[0], ours[0])}",
                f"{base[2]} / {ours[2]}",
            ])  # fmt: skip
        # the hash's share of a CPU-second of the unchecked loader: the cost a noiseless
        # machine would show
        implied = 100 * base[1] * mb_per_image / rates["sha256 alone"]
        rows.append([f"loader, workers {workers}: sha256 alone", "hashlib over the files",
                     f"{rates['sha256 alone']:.0f} MB/CPU-s", "", f"+{implied:.1f} % implied",
                     f"{base[1] * mb_per_image:.1f} MB/CPU-s loader", ""])  # fmt: skip
    return rows


def cost(base: float, ours: float) -> str:
    """Throughput lost to the check, in % of the unchecked throughput."""
    return f"{100 * (1 - ours / base):+.1f} %"


# ---- (b) start-up: children + process-tree memory -----------------------------------


def child_main(spec: dict) -> None:
    import torch  # imports are not timed; both sides import torch

    torch.set_num_threads(spec["threads"])

    import bionas.trainer.data  # noqa: F401

    if spec["kind"] == "official":
        import bioscan_dataset  # noqa: F401
        import pandas  # noqa: F401
    rss_imports = psutil.Process().memory_info().rss
    start = time.perf_counter()
    if spec["kind"] == "official":
        loader = official_loader(Path(spec["root"]), "all", "same", spec["workers"], 32, False)
        rows = len(loader.dataset)
    else:
        loader = bionas_loader(Path(spec["root"]), spec["workers"], 32)
        rows = len(loader.dataset.encoding.vocabs["dna_bin"])
    ready = time.perf_counter()
    batches = iter(loader)
    batch = next(batches)
    first = time.perf_counter()
    result = {
        "setup_s": ready - start,
        "first_batch_s": first - start,
        "images": batch_images(batch),
        "rows_or_dna_bins": rows,
        "rss_after_imports": rss_imports,
        "self_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    print(json.dumps(result), flush=True)
    del batches  # joins the DataLoader workers, so their CPU time is accounted to us
    os._exit(0)  # no teardown of a 10 GB heap: the measurement is over


def tree_memory(proc: psutil.Process) -> tuple[int, int]:
    """(summed RSS, summed PSS) of a process and its descendants."""
    rss = pss = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


def poll_tree(pid: int, peak: dict, stop: threading.Event) -> None:
    try:
        proc = psutil.Process(pid)
        while not stop.is_set():
            rss, pss = tree_memory(proc)
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            stop.wait(0.01)
    except psutil.Error:
        pass


def run_child(spec: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    peak, stop = {"rss": 0, "pss": 0}, threading.Event()
    with TreeMeter() as meter:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        poller = threading.Thread(target=poll_tree, args=(proc.pid, peak, stop), daemon=True)
        poller.start()
        out, _ = proc.communicate()
        stop.set()
        poller.join()
    if proc.returncode != 0:
        raise SystemExit(f"child {spec} failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(peak_tree_rss=peak["rss"], peak_tree_pss=peak["pss"], load=str(meter.load))
    print(f"  {spec['label']:<34} first batch {result['first_batch_s']:8.2f} s, peak tree "
          f"RSS {gb(peak['rss'])} GB / PSS {gb(peak['pss'])} GB ({meter.load})", flush=True)  # fmt: skip
    return result


def gb(n: float) -> str:
    return f"{n / 1e9:.3f}" if n < 1e9 else f"{n / 1e9:.2f}"


def md5_seconds(path: Path) -> float:
    from torchvision.datasets.utils import calculate_md5

    start = time.perf_counter()
    calculate_md5(str(path))
    return time.perf_counter() - start


def prepare_big(work: Path, ds: Path, official_small: Path, rows: int) -> tuple[Path, Path, Path]:
    """(big CSV, bionas dataset with its vocabularies, official layout over it)."""
    big_csv = find_big_csv(rows, work)
    ds_big = bionas_big_dataset(ds, big_csv, rows)
    official_big = official_big_root(work, big_csv, official_small, rows)
    return big_csv, ds_big, official_big


def startup(work: Path, ds: Path, official_small: Path, args) -> tuple[list, list, float | None]:
    rows = args.rows
    big_csv, ds_big, official_big = prepare_big(work, ds, official_small, rows)
    warm_page_cache(big_csv)
    md5 = md5_seconds(big_csv) if args.md5 else None
    results = {}
    for workers in args.start_workers:
        for label, spec in (
            (f"bionas, {rows:,}-row vocabs", {"kind": "bionas", "root": str(ds_big)}),
            ("bionas, small vocabs", {"kind": "bionas", "root": str(ds)}),
            (f"official, {rows:,}-row CSV", {"kind": "official", "root": str(official_big)}),
        ):
            if spec["kind"] == "official" and workers not in args.official_workers:
                continue
            label = f"{label}, workers {workers}"
            spec = {**spec, "workers": workers, "label": label, "threads": args.threads}
            # bionas starts in about a second: repeat it, keep the median start and the
            # largest peak; the official loader takes minutes and ~10 GB: once
            repeats = args.start_repeats if spec["kind"] == "bionas" else 1
            results[label] = summarise([run_child(spec) for _ in range(repeats)])
    return start_rows(results, rows, args), [big_csv, ds_big, official_big], md5


def summarise(runs: list[dict]) -> dict:
    by_start = sorted(runs, key=lambda r: r["first_batch_s"])
    result = dict(by_start[len(by_start) // 2])
    for key in ("peak_tree_rss", "peak_tree_pss"):
        result[key] = max(r[key] for r in runs)
    return result


def start_rows(results: dict, rows: int, args) -> list[list[str]]:
    table = []
    for workers in args.start_workers:
        if workers not in args.official_workers:
            continue
        base = results[f"official, {rows:,}-row CSV, workers {workers}"]
        for which in (f"{rows:,}-row vocabs", "small vocabs"):
            ours = results[f"bionas, {which}, workers {workers}"]
            table.append([
                workers, f"bionas ({which})", "time to first batch, s",
                f"{base['first_batch_s']:.2f}", f"{ours['first_batch_s']:.3f}",
                f"{base['first_batch_s'] / ours['first_batch_s']:.0f}x faster",
                f"{base['load']} / {ours['load']}",
            ])  # fmt: skip
            for key, name in (
                ("peak_tree_rss", "peak RSS, sum"),
                ("peak_tree_pss", "peak PSS, sum"),
            ):
                table.append([
                    workers, f"bionas ({which})", f"{name}, GB", gb(base[key]), gb(ours[key]),
                    f"1/{base[key] / ours[key]:.0f}", "",
                ])  # fmt: skip
    return table


# ---- main ---------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="600 images, 200,000-row table")
    p.add_argument("--work", type=Path, default=Path("/tmp/bionas-bench/loader"))
    p.add_argument("--images", type=int, help="synthetic images (default 2000; quick 600)")
    p.add_argument("--rows", type=int, help=f"metadata rows for (b) (default {FULL_ROWS:,})")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the main process (DataLoader workers use 1)")  # fmt: skip
    p.add_argument(
        "--rounds",
        type=int,
        help="(a) times rounds x 100 batches per loader, in turns (default 5; quick 1)",
    )
    p.add_argument("--prepare-only", action="store_true", help="make the data, measure nothing")
    p.add_argument("--skip-steady", action="store_true", help="only (b)")
    p.add_argument("--skip-start", action="store_true", help="only (a)")
    p.add_argument("--start-repeats", type=int, default=3, help="runs of each bionas start")
    p.add_argument("--no-md5", dest="md5", action="store_false",
                   help="do not time the md5 of the big CSV")  # fmt: skip
    p.add_argument("--check-only", action="store_true", help="only (c), the stream check")
    p.add_argument("--skip-check", action="store_true", help="leave out (c)")
    p.add_argument("--check-passes", type=int, help="(c) reader passes per level (default 30)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.images = args.images or (600 if args.quick else 2000)
    args.rows = args.rows or (QUICK_ROWS if args.quick else FULL_ROWS)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.check_passes = args.check_passes or (10 if args.quick else 30)
    args.warm, args.count = (4, 60) if args.quick else (8, 100)
    args.workers = (0, 2)
    args.start_workers = (0, 2)
    args.official_workers = (2,) if args.rows > 1_000_000 else (0, 2)  # 5M pandas: once
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return
    import torch

    info = machine()
    print(f"{machine_line(info)}; torch {torch.__version__}, {args.threads} thread(s) in the "
          f"main process (default would be {torch.get_num_threads()}), 1 per worker")  # fmt: skip
    torch.set_num_threads(args.threads)
    print(uptime_line(), flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    synth, ds = prepare_images(args.work, args.images)
    if args.check_only:
        report_check(ds, args)
        print(uptime_line())
        return
    official_small = official_root_for(ds, synth)
    if args.prepare_only:
        for path in prepare_big(args.work, ds, official_small, args.rows):
            print(f"  ready: {path}")
        return
    if not args.skip_steady:
        print("(a) steady state", flush=True)
        rows = steady_state(ds, official_small, args)
        print(f"\n(a) steady state, train split of {ds} (batch {args.batch_size}; "
              f"{args.rounds * args.count} timed batches per loader in turns of {CHUNK}, after "
              f"{args.warm}); target ratio >= {TARGET_STEADY}")  # fmt: skip
        print(format_table(
            ["workers", "baseline", "baseline img/s", "bionas img/s", "ratio",
             "baseline img/CPU-s", "bionas img/CPU-s", "ratio", "load (base / ours)"],
            rows,
        ))  # fmt: skip
    if not args.skip_start:
        print("\n(b) start-up", flush=True)
        table, used, md5 = startup(args.work, ds, official_small, args)
        print(f"\n(b) start with a {args.rows:,}-row metadata table ({used[0]}); targets "
              f">= {TARGET_START:.0f}x faster, <= 1/{TARGET_MEMORY:.0f} memory")  # fmt: skip
        print(format_table(
            ["workers", "bionas on", "measure", "official", "bionas", "ratio",
             "load (base / ours)"],
            table,
        ))  # fmt: skip
        if md5 is not None:
            print(f"not included above: the official integrity check's md5 of the CSV takes "
                  f"{md5:.1f} s more on every construction")  # fmt: skip
    if not args.skip_check:
        report_check(ds, args)
    print(uptime_line())


def report_check(ds: Path, args) -> None:
    print("\n(c) stream check", flush=True)
    rows = stream_check_cost(ds, args)
    print(f"\n(c) the reader's stream check, train split of {ds} (batch {args.batch_size}; "
          f"reader: {args.check_passes} passes per level); cost = throughput lost vs "
          f"unchecked, target <= {TARGET_CHECK_COST:.0f} %")  # fmt: skip
    print(format_table(
        ["measure", "check", "unchecked", "checked", "cost", "wall clock", "load"], rows
    ))  # fmt: skip


if __name__ == "__main__":
    main()
