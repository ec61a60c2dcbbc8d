"""Metadata plan at BIOSCAN-5M scale: bionas's Polars plan vs the official loader's pandas.

On a synthetic metadata CSV with all 23 official columns (660-nt barcodes) plus its
bbox TSV, each method runs in a fresh subprocess (so neither inherits the other's heap):

  bionas           bionas.ingest.plan.make_plan: Polars lazy scan of only the needed
                   columns (no dna_barcode), bbox join, validation, split, sample order,
                   shard assignment (`--split-source random`, the ingest default)
  bionas-official  the same with `--split-source official`
  pandas           the official `bioscan-dataset` loader as `BIOSCAN5M(split="all")` calls
                   it: load_bioscan5m_metadata(csv, usecols=USECOLS) (pd.read_csv with its
                   COLUMN_DTYPES, barcodes cut to 660 nt, label codes, image paths), then
                   pd.merge with the bbox table read by pd.read_csv(sep="\\t")
  pandas-object    the same with pandas' object strings (`future.infer_string=False`,
                   i.e. pandas <= 2 behaviour; pandas 3 stores strings in Arrow by default)
  polars-read      the floor under any Polars-based plan: Polars reads the plan's columns
                   of both files as plain strings (no casts, no checks, nothing after),
                   both files at once, as the plan does; pandas / this is the largest
                   speed-up a plan that reads with Polars can show on the machine

Time = the work inside the child (after imports). Peak RSS = the child's kernel high-water
mark (os.wait4 ru_maxrss), cross-checked by psutil polling of the child and its children.
Both files are read once (page cache warmed) before every child. A run counts as
undisturbed when pandas (one core) got >= 0.95 of a core, or, for Polars (all cores),
other processes used < 0.25 core; `--wait-quiet` waits for that before each run.

    python benchmarks/bench_metadata_plan.py --quick   # 200,000 rows
    python benchmarks/bench_metadata_plan.py           # 5,150,850 rows (~4.3 GB CSV, ~10 GB RAM)
    python benchmarks/bench_metadata_plan.py --wait-quiet 900   # on a shared, busy machine
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from _common_data import synth_once
from reporting import (
    LoadMeter,
    format_table,
    machine,
    machine_line,
    uptime_line,
    wait_for_quiet,
    warm_page_cache,
    write_results,
)

FULL_ROWS = 5_150_850
QUICK_ROWS = 200_000
METHODS = ("bionas", "bionas-official", "pandas", "pandas-object", "polars-read")
TARGET_SPEEDUP = 10.0
TARGET_PEAK_GB = 3.0


# ---- children: each prints one JSON line -------------------------------------------


def child_bionas(folder: Path, split_source: str) -> dict:
    from bionas.ingest.config import IngestConfig
    from bionas.ingest.plan import make_plan
    from bionas.ingest.profiles import get_profile

    cfg = IngestConfig(
        metadata=folder / "metadata.csv",
        images=folder / "images" / "original_full",
        bbox=folder / "bbox.tsv",
        out=folder / "unused-out",
        split_source=split_source,
    )
    profile = get_profile(cfg.profile)
    rss_imports = psutil.Process().memory_info().rss
    start = time.perf_counter()
    plan = make_plan(cfg, profile)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rows": plan.samples.height + plan.rejects.height,
        "samples": plan.samples.height,
        "rss_after_imports": rss_imports,
    }


def child_pandas(folder: Path, object_strings: bool) -> dict:
    import pandas as pd

    if object_strings:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pd.set_option("future.infer_string", False)
    from bioscan_dataset.bioscan5m import USECOLS, load_bioscan5m_metadata

    rss_imports = psutil.Process().memory_info().rss
    start = time.perf_counter()
    # what BIOSCAN5M(root, split="all")._load_metadata() does
    df = load_bioscan5m_metadata(folder / "metadata.csv", split="all", usecols=USECOLS)
    bbox = pd.read_csv(folder / "bbox.tsv", sep="\t")
    df = df.merge(bbox, on="processid", how="left")
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rows": len(df),
        "samples": len(df),
        "rss_after_imports": rss_imports,
    }


def child_polars_read(folder: Path) -> dict:
    import polars as pl

    from bionas.ingest.profiles import BBOX_COLUMNS, get_profile
    from bionas.ingest.scan import bounded_read_ahead

    columns = get_profile("bioscan-5m").raw_columns()
    rss_imports = psutil.Process().memory_info().rss
    start = time.perf_counter()
    scans = [
        pl.scan_csv(folder / "metadata.csv", infer_schema=False).select(columns),
        pl.scan_csv(folder / "bbox.tsv", separator="\t", infer_schema=False).select(
            BBOX_COLUMNS[:7]
        ),
    ]
    with bounded_read_ahead():
        frame, _ = pl.collect_all(scans, engine="streaming")
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rows": frame.height,
        "samples": frame.height,
        "rss_after_imports": rss_imports,
    }


def run_child(method: str, folder: Path) -> dict:
    if method == "bionas":
        return child_bionas(folder, "random")
    if method == "bionas-official":
        return child_bionas(folder, "official")
    if method == "pandas":
        return child_pandas(folder, object_strings=False)
    if method == "pandas-object":
        return child_pandas(folder, object_strings=True)
    if method == "polars-read":
        return child_polars_read(folder)
    raise SystemExit(f"unknown method {method}")


# ---- parent ------------------------------------------------------------------------


def _poll_rss(pid: int, peak: list[int], stop: threading.Event) -> None:
    try:
        proc = psutil.Process(pid)
        while not stop.is_set():
            try:
                rss = proc.memory_info().rss + sum(
                    c.memory_info().rss for c in proc.children(recursive=True)
                )
            except psutil.Error:
                break
            peak[0] = max(peak[0], rss)
            stop.wait(0.02)
    except psutil.Error:
        pass


def measure(method: str, folder: Path, max_wait_s: float = 0.0) -> dict:
    """Run one method in a fresh subprocess; its result plus wall time and peak RSS."""
    warm_page_cache(folder / "metadata.csv", folder / "bbox.tsv")
    # pandas runs on one core; Polars uses every core
    cores = 1 if method.startswith("pandas") else len(os.sched_getaffinity(0))
    wait_for_quiet(max_wait_s, cores)
    cmd = [sys.executable, __file__, "--child", method, "--data", str(folder)]
    with LoadMeter(cores) as meter:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        peak, stop = [0], threading.Event()
        poller = threading.Thread(target=_poll_rss, args=(proc.pid, peak, stop), daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        stop.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(
        method=method,
        wall_s=wall,
        peak_rss=usage.ru_maxrss * 1024,
        polled_peak_rss=peak[0],
        load=str(meter.load),
        disturbed=meter.load.disturbed,
    )
    print(
        f"  {method:<16} {result['seconds']:8.2f} s work, {wall:8.2f} s wall, "
        f"peak {gb(result['peak_rss'])} GB ({meter.load})",
        flush=True,
    )
    return result


def measure_until_quiet(
    method: str, folder: Path, repeats: int, max_tries: int, max_wait_s: float
) -> dict:
    """Fastest of `repeats` undisturbed runs (others < 0.25 core), trying at most `max_tries`.

    The peak RSS reported is the largest of all tries (memory does not depend on load).
    """
    best, peak, good = None, 0, 0
    for _ in range(max_tries):
        r = measure(method, folder, max_wait_s)
        peak = max(peak, r["peak_rss"])
        if best is None or (r["disturbed"], r["seconds"]) < (best["disturbed"], best["seconds"]):
            best = r
        good += not r["disturbed"]
        if good >= repeats:
            break
    return {**best, "peak_rss": peak}


def gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def report(rows: int, csv_bytes: int, results: dict[str, dict], info: dict) -> list[list[str]]:
    base = results.get("pandas") or results.get("pandas-object")
    table = []
    for method in METHODS:
        r = results.get(method)
        if r is None:
            continue
        table.append(
            [
                method,
                f"{r['rows']:,}",
                f"{r['seconds']:.2f}",
                f"{r['wall_s']:.2f}",
                gb(r["peak_rss"]),
                gb(r["peak_rss"] - r["rss_after_imports"]),
                f"{base['seconds'] / r['seconds']:.1f}x" if base else "-",
                f"{base['peak_rss'] / r['peak_rss']:.1f}x" if base else "-",
                r["load"],
            ]
        )
    print(
        f"\n## Metadata plan: {rows:,} rows, CSV {csv_bytes / 1e9:.2f} GB (fastest undisturbed run)\n"
    )
    print(
        format_table(
            [
                "method",
                "rows",
                "work s",
                "wall s (incl. imports)",
                "peak RSS GB",
                "of it above imports GB",
                "speed-up vs pandas",
                "memory ratio vs pandas",
                "load",
            ],
            table,
        )
    )
    ours = results.get("bionas")
    if ours and base:
        speed = base["seconds"] / ours["seconds"]
        checks = [
            [
                "bionas >= 10x faster than pandas (work time)",
                f"{speed:.1f}x",
                "met" if speed >= TARGET_SPEEDUP else "MISSED",
            ],
            [
                "bionas peak RSS < 3 GB",
                f"{gb(ours['peak_rss'])} GB",
                "met" if ours["peak_rss"] < TARGET_PEAK_GB * 1e9 else "MISSED",
            ],
        ]
        obj = results.get("pandas-object")
        if obj:
            checks.append(
                ["(info) vs pandas object strings", f"{obj['seconds'] / ours['seconds']:.1f}x", "-"]
            )
        floor = results.get("polars-read")
        if floor:
            checks.append(
                [
                    "(info) ceiling: pandas / Polars' read of the same columns alone",
                    f"{base['seconds'] / floor['seconds']:.1f}x",
                    "-",
                ]
            )
        print("\n## Targets (issue 2)\n")
        print(format_table(["target", "measured", "verdict"], checks))
        if rows != FULL_ROWS:
            print(f"(the targets are for {FULL_ROWS:,} rows; this run has {rows:,})")
    print(f"\n{machine_line(info)}\n{uptime_line()}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows, 2 repeats")
    parser.add_argument(
        "--rows", type=int, help=f"rows of synthetic metadata (default {FULL_ROWS:,})"
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="a `bionas synth --no-images` folder (default /tmp/bionas-metadata-bench/meta-ROWS)",
    )
    parser.add_argument(
        "--repeats", type=int, help="undisturbed runs per method, fastest kept (default 1, quick 2)"
    )
    parser.add_argument(
        "--max-tries",
        type=int,
        help="runs per method at most, waiting for quiet (default 2, quick 3)",
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS)
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each run, wait up to this many seconds for other processes to go idle",
    )
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.data)))
        return
    rows = args.rows or (QUICK_ROWS if args.quick else FULL_ROWS)
    repeats = args.repeats or (2 if args.quick else 1)
    max_tries = args.max_tries or (3 if args.quick else 2)
    folder = args.data or Path("/tmp/bionas-metadata-bench") / f"meta-{rows}"
    info = machine()
    print(f"{machine_line(info)}\n{uptime_line()}\n")
    if rows >= 1_000_000:
        free = shutil.disk_usage(folder.parent if folder.parent.exists() else "/tmp").free
        print(f"free disk for the data: {free / 1e9:.0f} GB")
    synth_once(folder, rows, "--no-images")
    csv_bytes = (folder / "metadata.csv").stat().st_size
    results: dict[str, dict] = {}
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        results[method] = measure_until_quiet(method, folder, repeats, max_tries, args.wait_quiet)
    report(rows, csv_bytes, results, info)
    name = "bench_metadata_plan-quick.json" if args.quick else f"bench_metadata_plan-{rows}.json"
    body = {"rows": rows, "csv_bytes": csv_bytes, "results": results, "machine": info}
    write_results(name, body)


if __name__ == "__main__":
    main()
