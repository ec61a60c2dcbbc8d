"""`bionas vocab` at full scale: wall time and peak RSS on Insects-1M and BIOSCAN-5M tables.

Two synthetic metadata tables, no images:

  insects-1m   1,017,036 rows  `bionas synth DIR --profile insects-1m --n 1017036 --no-images`
  bioscan-5m   5,150,850 rows  `bionas synth DIR --n 5150850 --no-images` (23 columns with
               660-nt barcodes, ~4.3 GB); an existing one is reused (--bioscan-csv, or the
               first 5,150,850-row metadata.csv found under /tmp/*/ and /tmp/*/*/)

Each method runs in a fresh subprocess after the CSV was read once (page cache warm):

  bionas   the real command, `bionas vocab CSV --profile P --out TMP` (target `order` with
           `Other` below 500, a vocabulary for every categorical field of the profile)
  pandas   the baseline a researcher would write: pd.read_csv(CSV, usecols=<the same
           fields>, dtype=str), then Series.value_counts() per field

Wall = spawn to exit (Python start-up and imports included: what the user waits for);
work = the time the command itself reports (bionas) or the read + count (pandas).
Peak RSS = the child's kernel high-water mark (os.wait4 ru_maxrss).

    python benchmarks/bench_vocab.py --quick   # 100,000 and 200,000 rows
    python benchmarks/bench_vocab.py           # 1,017,036 and 5,150,850 rows
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common_data import BIONAS, synth_once
from reporting import (
    LoadMeter,
    format_table,
    machine,
    machine_line,
    uptime_line,
    warm_page_cache,
    write_results,
)

from bionas.ingest.profiles import get_profile

FULL = {"insects-1m": 1_017_036, "bioscan-5m": 5_150_850}
QUICK = {"insects-1m": 100_000, "bioscan-5m": 200_000}
METHODS = ("bionas", "pandas")
# the fields `bionas vocab` counts; the built-in profiles name their columns as the fields
FIELDS = {name: get_profile(name).categorical for name in FULL}


def child_pandas(csv: Path, fields: list[str]) -> dict:
    import pandas as pd

    start = time.perf_counter()
    df = pd.read_csv(csv, usecols=fields, dtype=str)
    counts = {f: df[f].value_counts() for f in fields}
    return {"seconds": time.perf_counter() - start, "values": sum(len(c) for c in counts.values())}


def count_rows(csv: Path) -> int:
    """Newlines minus the header (the synthetic CSVs quote no newlines)."""
    lines = 0
    with open(csv, "rb") as handle:
        while block := handle.read(1 << 24):
            lines += block.count(b"\n")
    return lines - 1


def find_bioscan(rows: int) -> Path | None:
    """A `bionas synth --no-images` metadata.csv with `rows` rows somewhere under /tmp."""
    candidates = sorted(glob.glob("/tmp/*/metadata.csv") + glob.glob("/tmp/*/*/metadata.csv"))
    for path in map(Path, candidates):
        with open(path, "rb") as handle:
            if not handle.readline().startswith(b"processid,sampleid,taxon"):
                continue
        if path.stat().st_size > rows * 500 and count_rows(path) == rows:
            return path
    return None


def ensure_table(profile: str, rows: int, folder: Path, given: Path | None) -> Path:
    if given is not None:
        return given
    if profile == "bioscan-5m" and rows == FULL[profile] and (found := find_bioscan(rows)):
        print(f"reusing {found} ({rows:,} rows)", flush=True)
        return found
    table = synth_once(folder / f"{profile}-{rows}", rows, "--profile", profile, "--no-images")
    return table / "metadata.csv"


def measure(method: str, profile: str, csv: Path) -> dict:
    """One run in a fresh subprocess: wall, work and peak RSS."""
    warm_page_cache(csv)
    with tempfile.TemporaryDirectory() as out:
        if method == "bionas":
            cmd = [*BIONAS, "vocab", str(csv), "--profile", profile, "--out", out]
        else:
            cmd = [sys.executable, __file__, "--child", str(csv), "--fields",
                   ",".join(FIELDS[profile])]  # fmt: skip
        with LoadMeter() as meter:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            output = proc.stdout.read()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{method} on {csv} failed:\n{output}")
        if method == "bionas":
            work = float(re.search(r"vocabularies to .* in ([\d.]+) s", output).group(1))
            classes = int(re.search(r"order: (\d+) classes", output).group(1))
        else:
            work, classes = json.loads(output.strip().splitlines()[-1])["seconds"], None
    result = {"method": method, "wall_s": wall, "work_s": work, "peak_rss": usage.ru_maxrss * 1024,
              "classes": classes, "load": str(meter.load)}  # fmt: skip
    print(f"  {profile:<11} {method:<7} {wall:7.2f} s wall, {work:7.2f} s work, "
          f"peak {result['peak_rss'] / 2**20:,.0f} MiB ({meter.load})", flush=True)  # fmt: skip
    return result


def report(results: list[dict], info: dict) -> None:
    rows = []
    for r in results:
        base = next(b for b in results if b["profile"] == r["profile"] and b["method"] == "pandas")
        rows.append([
            r["profile"], f"{r['rows']:,}", f"{r['csv_bytes'] / 1e9:.2f}", r["method"],
            f"{r['wall_s']:.2f}", f"{r['work_s']:.2f}", f"{r['peak_rss'] / 2**20:,.0f}",
            f"{base['wall_s'] / r['wall_s']:.1f}x", f"{base['peak_rss'] / r['peak_rss']:.1f}x",
            r["classes"] if r["classes"] is not None else "-", r["load"],
        ])  # fmt: skip
    header = ["table", "rows", "CSV GB", "method", "wall s", "work s", "peak RSS MiB",
              "wall vs pandas", "memory vs pandas", "order classes", "load"]  # fmt: skip
    print("\n## bionas vocab (every categorical field; fastest of the repeats)\n")
    print(format_table(header, rows))
    print(f"\n{machine_line(info)}\n{uptime_line()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small tables, 2 repeats")
    parser.add_argument("--repeats", type=int, help="runs per method, fastest kept (default 1)")
    parser.add_argument("--bioscan-csv", type=Path, help="an existing BIOSCAN-5M metadata CSV")
    parser.add_argument("--insects-csv", type=Path, help="an existing Insects-1M metadata CSV")
    parser.add_argument("--data", type=Path, default=Path("/tmp/bionas-vocab-bench"),
                        help="where generated tables go")  # fmt: skip
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fields", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_pandas(args.child, args.fields.split(","))))
        return
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or (2 if args.quick else 1)
    given = {"insects-1m": args.insects_csv, "bioscan-5m": args.bioscan_csv}
    info = machine()
    print(f"{machine_line(info)}\n{uptime_line()}\n", flush=True)
    results = []
    for profile, rows in sizes.items():
        csv = ensure_table(profile, rows, args.data, given[profile])
        for method in METHODS:
            runs = [measure(method, profile, csv) for _ in range(repeats)]
            best = min(runs, key=lambda r: r["wall_s"])
            best["peak_rss"] = max(r["peak_rss"] for r in runs)
            results.append({**best, "profile": profile, "rows": rows, "csv": str(csv),
                            "csv_bytes": csv.stat().st_size})  # fmt: skip
    report(results, info)
    name = "bench_vocab-quick.json" if args.quick else "bench_vocab.json"
    write_results(name, {"results": results, "machine": info})


if __name__ == "__main__":
    main()
