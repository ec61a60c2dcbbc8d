"""Extrapolated wall time of `bionas ingest` over all 5,150,850 BIOSCAN-5M images.

Reads the measurements of bench_ingest_images.py (and, when present, the 5.15M-row plan
time of bench_metadata_plan.py) from benchmarks/out/ and projects them to 6 and 16 cores.

Model (stated, not measured beyond 2 cores): ingest is CPU-bound on JPEG decode/resize/
encode, each core runs one worker at the per-worker rate measured with --workers 1, and
adding cores keeps the parallel efficiency measured from 1 to 2 workers
(rate(c) = c * r1 * e): r1 is the 1-worker pipeline rate after the pool's start-up, e half
the median 1 -> 2 ratio of the quiet back-to-back pairs (start-up and the last shard's
tail included, so e is, if anything, low for a 5M-image run). Disk, page cache and memory bandwidth are
assumed not to limit (the input bandwidth this needs is printed so it can be checked).
The per-core speed is this machine's; another CPU scales the figures by its own
per-core rate.

    python benchmarks/extrapolate_ingest.py            # uses bench_ingest_images.json
    python benchmarks/extrapolate_ingest.py --quick    # uses the --quick results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reporting import OUT_DIR, format_table, machine_line

BIOSCAN_5M_IMAGES = 5_150_850
CORES = (1, 2, 6, 16)


def hms(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}h {rest // 60:02d}m"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="use bench_ingest_images-quick.json")
    parser.add_argument("--images", type=int, default=BIOSCAN_5M_IMAGES)
    args = parser.parse_args()
    name = "bench_ingest_images-quick.json" if args.quick else "bench_ingest_images.json"
    path = Path(OUT_DIR, name)
    if not path.exists():
        quick = " --quick" if args.quick else ""
        raise SystemExit(
            f"{path} not found: run python benchmarks/bench_ingest_images.py{quick} first"
        )
    bench = json.loads(path.read_text())
    # r1: one worker, after the (negligible) start-up; e: the median 1 -> 2 ratio of the
    # back-to-back quiet pairs, start-up and shard tail included (so rather low than high)
    r1 = bench["pipeline"]["1"]["steady_img_s"]
    scaling = bench["ratios"]["scaling_1_to_2"]
    efficiency = min(1.0, scaling / 2)
    disturbed = [w for w in ("1", "2") if bench["pipeline"][w].get("disturbed")]
    r_core = bench["img_s_per_core"]["bionas"]
    plan_path = Path(OUT_DIR, f"bench_metadata_plan-{BIOSCAN_5M_IMAGES}.json")
    plan_s = None
    if plan_path.exists():
        plan_s = json.loads(plan_path.read_text())["results"].get("bionas", {}).get("seconds")
    mean_bytes = bench["mean_source_bytes"]

    print(
        f"from {path}: pipeline {r1:.1f} img/s with 1 worker; 1 -> 2 workers {scaling:.2f}x "
        f"(efficiency {efficiency:.0%}); process_image alone {r_core:.1f} img/s per core"
    )
    if disturbed:
        print(f"WARNING: the --workers {'/'.join(disturbed)} run was disturbed by other processes")
    if plan_s is not None:
        print(f"plan of 5,150,850 rows (bench_metadata_plan.py): {plan_s:.1f} s, added once")
    rows = []
    for cores in CORES:
        rate = cores * r1 * (efficiency if cores > 1 else 1.0)
        images_s = args.images / rate
        total = images_s + (plan_s or 0.0)
        ideal = args.images / (cores * r_core)
        rows.append(
            [
                cores,
                f"{rate:,.0f}",
                hms(images_s),
                hms(total) if plan_s is not None else "-",
                hms(ideal),
                f"{rate * mean_bytes / 1e6:,.0f}",
            ]
        )
    print(f"\n## Extrapolated ingest of {args.images:,} images\n")
    print(
        format_table(
            [
                "cores",
                "img/s (pipeline, measured efficiency)",
                "images wall time",
                "+ plan",
                "bound: process_image only, perfect scaling",
                "input read MB/s needed",
            ],
            rows,
        )
    )
    print(f"\nmean source JPEG {mean_bytes / 1024:.0f} KiB (synthetic); measured on:")
    print(machine_line(bench["machine"]))


if __name__ == "__main__":
    main()
