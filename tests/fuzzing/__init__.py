"""Seeded fuzzing of ingest's three boundaries: image bytes, metadata tables, shards.

A hand-rolled mutator (`mutate`, no fuzzing library) turns valid inputs into hostile
ones. Each target (`Images`, `Tables`, `Shards`) runs case `index` as a pure function of
(seed, index) and checks it against SPEC §8: bad input is a documented reject, a clean
error or a counted loss; never a traceback, a hang or a silent loss. `fuzz` runs a
target's cases in a child process killed when a case outlives its timeout, so a hang (or a
crash inside C code) is a reported case, not a blocked run.

Shared by tests/test_fuzz.py (seconds per target) and benchmarks/fuzz_ingest.py (minutes
per target). Reproduce a reported case in-process:

    prepare(workdir); Tables(workdir).run(seed, index)
"""

from .dataset import prepare
from .images import Images
from .runner import Outcome, Report, fuzz
from .shards import Shards
from .tables import Tables

TARGETS = {"images": Images, "tables": Tables, "shards": Shards}

__all__ = ["TARGETS", "Images", "Outcome", "Report", "Shards", "Tables", "fuzz", "prepare"]
