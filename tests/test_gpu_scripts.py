"""The scripts a lent GPU runs (benchmarks/gpu_session.sh) work on CPU at toy sizes, so a GPU
session, which may come once and lasts 15 minutes, is not spent on a broken script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(*argv: str, timeout: int = 300) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, *argv], cwd=BENCHMARKS, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_bench_gpu_loop_measures_every_variant_against_the_legacy_loop():
    out = run_script(
        "bench_gpu_loop.py", "--smoke-cpu", "--batches", "4,auto",
        "--variants", "legacy,bionas,channels-last",
    )  # fmt: skip
    rows = re.findall(r"^\| (4|auto)\s+\| (\d+)\s+\| (\S+)\s+\| (\d+)\s+\| ([\d.]+)x", out, re.M)
    assert {(batch, variant) for batch, _, variant, _, _ in rows} == {
        (b, v) for b in ("4", "auto") for v in ("legacy", "bionas", "channels-last")
    }, out
    assert all(int(img_s) > 0 for *_, img_s, _ in rows)
    auto_sizes = {size for batch, size, *_ in rows if batch == "auto"}
    assert auto_sizes <= {"2", "4", "8"}, auto_sizes  # the CPU smoke's toy search range


def test_bench_e2e_gpu_trains_evaluates_and_compares_with_compute_only(tmp_path):
    out = run_script("bench_e2e_gpu.py", "--smoke-cpu", "--work", str(tmp_path), timeout=600)
    assert re.search(r"train shards: \d+;", out), out
    assert re.search(r"end to end after epoch 1: \d+ img/s = [\d.]+ of compute-only", out), out
    assert re.search(r"E009 row \(derived network\): [\d.]+ GFLOPs", out), out
    assert (tmp_path / "run" / "eval" / "test" / "metrics.json").exists()


def test_the_gpu_session_script_runs_only_scripts_that_exist():
    script = (BENCHMARKS / "gpu_session.sh").read_text()
    named = re.findall(r"python3 (\w+\.py)", script)
    assert named, script
    missing = [name for name in named if not (BENCHMARKS / name).exists()]
    assert not missing, missing
    limits = [int(s) for s in re.findall(r"^step \S+ (\d+) ", script, re.M)]
    assert sum(limits) <= 600, limits  # one device call runs at most 10 minutes
