"""What every benchmark prints: the machine it ran on, how busy it was, result tables, and
the JSON file of its results.

Imported by the scripts beside it (`python benchmarks/<script>.py` puts this folder on
`sys.path`). Measurements on a shared machine are only as good as the quiet around them,
so `LoadMeter` reports, per measurement, the 1-minute load average, how many cores our
own process tree used and how many *other* processes used (system busy time minus ours).
A one-process measurement counts as disturbed when it got less than 0.95 of a core; a
measurement that needs every core, when others used more than 0.25 core.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import psutil

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
DISTURBED_CORES = 0.25  # a whole-machine measurement is suspect when others use more
MIN_OWN_SHORTFALL = 0.05  # a one-process measurement is suspect below 0.95 of a core


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def code_version() -> str:
    """The commit the benchmark ran on, `+dirty` when ingest/ or shards/ had local edits."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "ingest", "shards"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "-"
    return (sha or "-") + ("+dirty" if dirty else "")


def machine() -> dict[str, object]:
    """CPU, cores, memory, Python and the libraries a benchmark's figures depend on."""
    import PIL
    from PIL import features

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "pil": PIL.__version__,
        # pillow-simd versions end in .postN; both distributions install the same PIL/
        "pil_flavour": "pillow-simd" if ".post" in PIL.__version__ else "Pillow",
        "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
        "polars": _version("polars"),
        "pandas": _version("pandas"),
        "bioscan_dataset": _version("bioscan-dataset"),
        "bionas_code": code_version(),
    }


def machine_line(info: dict[str, object] | None = None) -> str:
    m = info or machine()
    return (
        f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{m['ram_gib']} GiB RAM; Python {m['python']}; PIL {m['pil']} ({m['pil_flavour']}, "
        f"libjpeg-turbo {'yes' if m['libjpeg_turbo'] else 'no'}); Polars {m['polars']}; "
        f"pandas {m['pandas']}; bioscan-dataset {m['bioscan_dataset']}; "
        f"bionas at {m.get('bionas_code', '-')}"
    )


def _own_cpu_seconds() -> float:
    t = os.times()  # children's times count once they have been waited for
    return t.user + t.system + t.children_user + t.children_system


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


@dataclass
class Load:
    """How busy the machine was during one measurement that needed `cores` cores."""

    load1: float  # 1-minute load average at the end of the measurement
    others_cores: float  # mean cores used by processes other than ours meanwhile
    own_cores: float  # mean cores our process (and its waited-for children) used
    cores: int  # cores the measurement needs: 1 for one process, N for N workers

    @property
    def disturbed(self) -> bool:
        if self.cores == 1:
            # one busy thread: disturbed exactly when it did not get a whole core
            return self.own_cores < 1.0 - MIN_OWN_SHORTFALL
        return self.others_cores > DISTURBED_CORES

    def __str__(self) -> str:
        flag = " DISTURBED" if self.disturbed else ""
        return (
            f"load1 {self.load1:.2f}, ours {self.own_cores:.2f} / others "
            f"{self.others_cores:.2f} cores{flag}"
        )


class LoadMeter:
    """`with LoadMeter(cores) as m: ...` then `m.load`: how busy the rest of the machine was."""

    def __init__(self, cores: int = 1) -> None:
        self.cores = cores

    def __enter__(self) -> LoadMeter:
        self._wall = time.perf_counter()
        self._busy = _busy_seconds()
        self._own = _own_cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.perf_counter() - self._wall, 1e-9)
        own = _own_cpu_seconds() - self._own
        others = (_busy_seconds() - self._busy) - own
        self.load = Load(os.getloadavg()[0], max(0.0, others) / wall, own / wall, self.cores)


def wait_for_quiet(max_wait_s: float, cores: int = 1, probe_s: float = 2.0) -> float:
    """Wait until other processes leave `cores` cores free (we are idle while probing).

    Returns the cores others used in the last probe; gives up after `max_wait_s`.
    """
    ncpu = len(os.sched_getaffinity(0))
    allowed = max(DISTURBED_CORES, ncpu - cores - 0.1)
    deadline = time.monotonic() + max_wait_s
    while True:
        before = _busy_seconds()
        time.sleep(probe_s)
        others = (_busy_seconds() - before) / probe_s
        if others < allowed or time.monotonic() >= deadline:
            return others


def warm_page_cache(*paths: Path) -> None:
    """Read the files once, so that no measurement pays for the disk and all pay alike."""
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass


def uptime_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average: {one:.2f}, {five:.2f}, {fifteen:.2f}"


def format_table(header: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (it reads fine in a terminal too)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def write_results(name: str, body: dict[str, object]) -> Path:
    """Write `body` and the command that made it to OUT_DIR/`name` (JSON); says where."""
    os.makedirs(OUT_DIR, exist_ok=True)
    command = " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    path = Path(OUT_DIR, name)
    path.write_text(json.dumps({**body, "command": command}, indent=2, default=str) + "\n")
    print(f"results: {path}")
    return path
