"""Before any image work: does `--images` hold the planned images at all?

A wrong root (the dataset folder instead of its image package, one level too deep)
otherwise turns every row into a `missing_file` reject, hours later at BIOSCAN-5M scale,
and an empty dataset. A spread sample of planned paths is looked up; when none exists
the ingest stops with the path it expected and, if a neighbouring folder holds the
images, the `--images` to use. Some missing files are normal: they become rejects.
"""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path

import numpy as np

from bionas.errors import BionasError
from bionas.ingest.plan import Plan
from bionas.ingest.profiles import DatasetProfile
from bionas.ingest.scan import path_expression, path_parts

SAMPLED = 200
_NEIGHBOURS = 64  # subfolders of the root tried as the root that was meant
_LISTED = 4096  # entries of a folder looked at for them


def sampled_paths(plan: Plan, profile: DatasetProfile, count: int = SAMPLED) -> list[str]:
    """Image paths (relative to the root) of up to `count` samples spread over the plan."""
    n = plan.samples.height
    picks = np.unique(np.linspace(0, n - 1, num=min(count, n)).astype(np.int64))
    rows = plan.rows(plan.samples["row"].to_numpy()[picks])
    expression = path_expression(profile.image_path, path_parts(profile))
    return rows.select(expression).to_series().to_list()


def check_image_root(root: Path, paths: list[str]) -> None:
    """Raise a BionasError when none of `paths` is a file under `root`."""
    if not paths or any((root / p).is_file() for p in paths):
        return
    message = (
        f"none of {len(paths)} images sampled from the plan exists under --images {root} "
        f"(the first would be {root / paths[0]}). --images is the folder the metadata's "
        "image paths are relative to: for BIOSCAN-5M, an image package folder such as "
        ".../images/original_full."
    )
    meant = _root_meant(root, paths)
    if meant is not None:
        message += f" {meant} holds them: did you mean --images {meant}?"
    raise BionasError(message)


def _root_meant(root: Path, paths: list[str]) -> Path | None:
    """A folder near `root` (its parent or a subfolder, two levels down) holding the images."""
    candidates = [root.parent] if root.parent != root else []
    for child in _subfolders(root):
        candidates += [child, *_subfolders(child)]
    probe = paths[:20]
    for candidate in candidates:
        if any((candidate / p).is_file() for p in probe):
            return candidate
    return None


def _subfolders(path: Path) -> list[Path]:
    """Up to _NEIGHBOURS subfolders, sorted, from the folder's first _LISTED entries: a
    wrong root may be a flat folder of millions of photos (scandir: no stat per entry)."""
    try:
        with os.scandir(path) as entries:
            listed = list(islice(entries, _LISTED))
    except OSError:
        return []
    return sorted(Path(e.path) for e in listed if e.is_dir())[:_NEIGHBOURS]
