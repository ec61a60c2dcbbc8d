"""Ray vs local executor: the same `bionas ingest` on the same synthetic images.

Both runs use 2 workers (2 process-pool workers / a local Ray with 2 CPUs) and write
byte-identical shards; the table gives wall time and images/s of the execute stage as
the ingest summary reports it, plus whole-command wall time (Ray's start-up included).

    python benchmarks/bench_ray_ingest.py [--quick] [--n 1500]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


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
    bionas = [sys.executable, "-m", "bionas"]
    with tempfile.TemporaryDirectory(prefix="bionas-ray-bench-") as tmp:
        data = Path(tmp) / "data"
        run([*bionas, "synth", str(data), "--n", str(n), "--quiet"])
        common = [str(data / "metadata.csv"), "--images", str(data / "images" / "original_full"),
                  "--bbox", str(data / "bbox.tsv"), "--workers", "2", "--quiet",
                  "--shard-size", "100"]  # fmt: skip
        rows = []
        for executor in ("local", "ray"):
            out_dir = Path(tmp) / executor
            wall, out = run(
                [*bionas, "ingest", *common, "--out", str(out_dir), "--executor", executor]
            )
            match = re.search(r"processed (\d+) images in ([\d.]+) s \((\d+) img/s\)", out)
            images, seconds, rate = int(match[1]), float(match[2]), int(match[3])
            rows.append((executor, images, seconds, rate, wall))
            shards = sorted(p.read_bytes() for p in (out_dir / "shards").glob("*/*.tar"))
            rows[-1] += (hash(tuple(shards)),)
        shutil.rmtree(data, ignore_errors=True)
    print(f"{'executor':<8} {'images':>7} {'execute s':>10} {'img/s':>7} {'command s':>10}")
    for executor, images, seconds, rate, wall, _ in rows:
        print(f"{executor:<8} {images:>7} {seconds:>10.1f} {rate:>7} {wall:>10.1f}")
    print(f"ray / local img/s: {rows[1][3] / rows[0][3]:.2f}")
    print("identical shards:", rows[0][5] == rows[1][5])


if __name__ == "__main__":
    main()
