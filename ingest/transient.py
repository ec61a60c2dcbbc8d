"""Read errors that may pass (SPEC §8): they fail a shard, never become a permanent reject.

The seam with `execute.write_task`: when reading one image raises an OSError, the reader
calls `raise_if_transient(exc, path)` before recording an `unreadable_file` reject. For
EIO, ESTALE, EMFILE, ENFILE, EAGAIN or ETIMEDOUT (a flaky disk or network file system,
too many open files) it raises `TransientReadError`, which `write_task` must let through
(it is deliberately not an OSError, so an `except OSError` does not catch it; an
`except Exception` must re-raise it). `execute` then drops the whole shard: no shard
file, no state record, so the rerun redoes it; the run ends with a message naming the
file. A reader that opens files non-blocking must tell EAGAIN from a FIFO apart itself
(check the file type before reading): a FIFO is not transient.
"""

from __future__ import annotations

import errno
from pathlib import Path

TRANSIENT_ERRNOS = frozenset(
    {errno.EIO, errno.ESTALE, errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ETIMEDOUT}
)


class TransientReadError(Exception):
    """Reading an image failed for a reason that may pass; its shard is redone on rerun."""

    def __init__(self, path: str, error: str) -> None:
        super().__init__(path, error)  # picklable: it crosses from a worker to the parent
        self.path = path
        self.error = error

    def __str__(self) -> str:
        return f"{self.path}: {self.error}"


def raise_if_transient(exc: OSError, path: Path | str) -> None:
    """Raise `TransientReadError` for an OSError that a later try may not meet."""
    if exc.errno in TRANSIENT_ERRNOS:
        error = f"{exc.strerror} ({errno.errorcode[exc.errno]})"
        raise TransientReadError(str(path), error) from exc
