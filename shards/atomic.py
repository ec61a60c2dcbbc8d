"""Atomic file writes: a temporary name, fsync, rename, fsync of the folder (SPEC §8).

A crash at any instant leaves either the old file, the new one, or a stray temporary;
never a half-written file under the real name. Temporary names carry the writer's pid
and a random token, so two processes (two runs, or the workers of one) never share one,
and end in `.tmp`, so a later run can sweep what a killed one left.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".tmp"
# `<name>.<pid>-<token>.tmp`, and the plain `<name>.tmp` of bionas versions before it
TEMP_NAME = re.compile(r"^(?P<name>.+?)(\.\d+-[0-9a-f]{8})?\.tmp$")


def temp_path(path: Path) -> Path:
    """A temporary name beside `path`, unique to this process and call."""
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably.

    On any failure the temporary is removed; an OSError is raised again naming `path`,
    not the temporary (a failed `write` names no file at all: EFBIG, ENOSPC).
    """
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    except BaseException:  # an interrupt (Ctrl-C, SIGTERM) leaves no temporary either
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(directory: Path) -> None:
    """Make the folder's entries (a rename, an unlink) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Locked(Exception):
    """Another process holds the lock; `holder` is its pid as it wrote it (or '')."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by {holder or 'another process'}")
        self.path, self.holder = path, holder


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if needed, with this pid in it) or raise
    `Locked` at once. The kernel releases it however the process ends; the file stays
    (unlinking it would race a process about to take it)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise Locked(path, f"pid {holder}" if holder.isdigit() else "") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
