"""What the data benchmarks share: the `bionas` CLI of this Python, and synthetic datasets
made once with `bionas synth` and reused by later runs.

Imported by the scripts beside it (`python benchmarks/<script>.py` puts this folder on
`sys.path`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

# `python -m bionas`, not the `bionas` script found on PATH: always the bionas of the
# interpreter running the benchmark, whichever virtual environment that is.
BIONAS = [sys.executable, "-m", "bionas"]


def run_bionas(*args: object, env: Mapping[str, str] | None = None) -> None:
    """Run `bionas ARGS` to completion (its stdout discarded); fails loudly when it fails."""
    command = [*BIONAS, *map(str, args)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)


def synth_once(folder: Path, n: int, *options: object) -> Path:
    """`bionas synth FOLDER --n N OPTIONS`, unless an earlier run left FOLDER/metadata.csv."""
    if not (folder / "metadata.csv").exists():
        print(f"generating {n:,} synthetic rows in {folder} (once) ...", flush=True)
        start = time.perf_counter()
        run_bionas("synth", folder, "--n", n, *options, "--overwrite", "--quiet")
        print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return folder
