"""The output folder while an ingest writes it (SPEC §8: consistent at every instant).

One ingest at a time holds `DATASET_DIR/.ingest.lock` (flock, released by the kernel
however the run ends); temporaries a killed run left are swept by the next one; an
error writing the output (disk full, a file size limit, a read-only or forbidden
folder) ends the run with one line naming the file, and the rerun resumes.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bionas.errors import BionasError
from bionas.ingest.resume import STATE_DIR
from bionas.manifests.manifest import (
    INCOMPLETE_NAME,
    MANIFEST_NAME,
    REJECTS_NAME,
    SHARD_DIR,
    VOCAB_DIR,
)
from bionas.shards.atomic import TEMP_NAME, Locked, exclusive_lock

log = logging.getLogger(__name__)
LOCK_NAME = ".ingest.lock"
_ROOT_FILES = {MANIFEST_NAME, INCOMPLETE_NAME, REJECTS_NAME}  # whose temporaries sit in out/
_TEMP_FOLDERS = (f"{SHARD_DIR}/*", f"{STATE_DIR}/*", VOCAB_DIR)  # only ours write in these
_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}
OUTPUT_ERRNOS = frozenset(_SPACE | _PERMISSION | {errno.EIO})


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold the ingest lock of `out` (created if needed); a clear error if another run has it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise BionasError(f"--out {out} is a file, or lies under one: give a folder") from None
    try:
        with exclusive_lock(out / LOCK_NAME):
            yield
    except Locked as err:
        who = f" ({err.holder})" if err.holder else ""
        raise BionasError(
            f"another bionas ingest{who} is writing {out} ({err.path} is locked): wait for "
            "it to finish or stop it, or choose another --out"
        ) from None


def sweep_temp_files(out: Path) -> None:
    """Remove the temporaries of earlier runs (the caller holds the lock: none are live)."""
    candidates = [p for p in out.glob("*.tmp") if _temp_of(p) in _ROOT_FILES]
    for folder in _TEMP_FOLDERS:
        candidates += [p for p in out.glob(f"{folder}/*.tmp") if _temp_of(p)]
    for path in candidates:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # on a read-only disk the temporaries cannot go either
            log.warning("cannot remove %s: %s", path, exc)


def _temp_of(path: Path) -> str | None:
    match = TEMP_NAME.match(path.name)
    return match["name"] if match and path.is_file() else None


def output_error(exc: OSError, out: Path) -> BionasError | None:
    """The one-line error for a failed write of the dataset, or None for another OSError."""
    if exc.errno not in OUTPUT_ERRNOS:
        return None
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    if exc.errno in _SPACE:
        fix = "free some space (or raise the file size limit)"
    elif exc.errno in _PERMISSION:
        fix = f"make {out} writable"
    else:
        fix = "check the disk"
    return BionasError(
        f"cannot write {exc.filename or out}: {exc.strerror} ({name}); {fix}, then rerun "
        "the same command to resume (finished shards are kept)"
    )
