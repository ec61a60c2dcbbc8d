"""Ray vs local executor: the same `bionas ingest` on the same synthetic images.

Both runs use 2 workers (2 process-pool workers / a local Ray with 2 CPUs) and write
byte-identical shards; the table gives wall time and images/s of the execute stage as
the ingest summary reports it, plus whole-command wall time (Ray's start-up included).

    python benchmarks/bench_ray_ingest.py [--quick] [--n 1500]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from pathlib import Path

from _common_data import BIONAS
from reporting import format_table, machine_line, uptime_line


def run(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400 images")
    parser.add_argument("--n", type=int, default=1500)
    args = parser.parse_args()
    n = 400 if args.quick else args.n
    print(f"{machine_line()}\n{uptime_line()}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="bionas-ray-bench-") as tmp:
        data = Path(tmp) / "data"
        run([*BIONAS, "synth", str(data), "--n", str(n), "--quiet"])
        common = [str(data / "metadata.csv"), "--images", str(data / "images" / "original_full"),
                  "--bbox", str(data / "bbox.tsv"), "--workers", "2", "--quiet",
                  "--shard-size", "100"]  # fmt: skip
        rows, shards = [], {}
        for executor in ("local", "ray"):
            out_dir = Path(tmp) / executor
            wall, out = run(
                [*BIONAS, "ingest", *common, "--out", str(out_dir), "--executor", executor]
            )
            match = re.search(r"processed (\d+) images in ([\d.]+) s \((\d+) img/s\)", out)
            images, seconds, rate = int(match[1]), float(match[2]), int(match[3])
            rows.append([executor, images, f"{seconds:.1f}", rate, f"{wall:.1f}"])
            shards[executor] = sorted(p.read_bytes() for p in (out_dir / "shards").glob("*/*.tar"))
    print(format_table(["executor", "images", "execute s", "img/s", "command s"], rows))
    print(f"ray / local img/s: {rows[1][3] / rows[0][3]:.2f}")
    print("identical shards:", shards["local"] == shards["ray"])


if __name__ == "__main__":
    main()
