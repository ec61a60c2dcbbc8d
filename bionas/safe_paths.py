"""Files named by untrusted text stay inside their root, and reading one cannot block.

Ingest builds image paths from CSV cells (`split`, `chunk`, a profile's `file_name`), so
a cell of `..`, an absolute part, a symlink or a FIFO must not make it read outside
`--images` or hang. The rule: after resolving symlinks and `..`, the path is a regular
file strictly inside the root. A symlink whose target stays inside the root is accepted
(image packages are sometimes assembled from links into one tree); one leading out is
not. Non-regular files (FIFO, device, socket, directory) are refused from a `stat`,
before any `open`, so nothing can block or trigger a device's open side effects.

Not covered: a file system swapped under us between the checks (a directory replaced by
a link after it was resolved), and a regular file on a network mount that stalls.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)  # fmt: skip


class UnsafePath(Exception):
    """A path that leaves its root or names something other than a regular file."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class FileTooLarge(Exception):
    """A regular file above the byte limit (it was not read, or read only to the limit)."""

    def __init__(self, path: str, size: int, limit: int) -> None:
        super().__init__(f"{path} has {size} bytes, more than the limit of {limit}")
        self.path = path
        self.size = size
        self.limit = limit

    def __reduce__(self):
        return (type(self), (self.path, self.size, self.limit))


def real_root(root: str | Path) -> str:
    """The root with its symlinks resolved: resolve once, pass to `resolve_inside` per file."""
    return os.path.realpath(root)


def resolve_inside(root: str, relative: str) -> str:
    """`root/relative` with symlinks and `..` resolved; UnsafePath when it is not inside.

    `root` must be resolved already (`real_root`). The path is not required to exist.
    """
    if "\0" in relative:
        raise UnsafePath(f"path {relative!r} contains a NUL byte")
    if os.path.isabs(relative):
        raise UnsafePath(f"path {relative!r} is absolute, not relative to {root}")
    resolved = os.path.realpath(os.path.join(root, relative))
    if not resolved.startswith(root.rstrip(os.sep) + os.sep):
        raise UnsafePath(f"path {relative!r} resolves to {resolved}, not inside {root}")
    return resolved


def read_regular_file(path: str, max_bytes: int) -> bytes:
    """The bytes of the regular file `path`: UnsafePath for anything else, FileTooLarge
    above `max_bytes` (at most `max_bytes + 1` bytes are read). OSError passes through."""
    _require_regular(path, os.stat(path))  # before open: a FIFO or device is never opened
    fd = os.open(path, _OPEN_FLAGS)  # O_NOFOLLOW: a link swapped in since the check fails
    try:
        info = os.fstat(fd)
        _require_regular(path, info)
        if info.st_size > max_bytes:
            raise FileTooLarge(path, info.st_size, max_bytes)
        return _read_capped(fd, path, info.st_size, max_bytes)
    finally:
        os.close(fd)


def read_file_inside(root: str, relative: str, max_bytes: int) -> bytes:
    """`read_regular_file` of `relative` under the resolved `root`, if it stays inside."""
    return read_regular_file(resolve_inside(root, relative), max_bytes)


def _require_regular(path: str, info: os.stat_result) -> None:
    if stat.S_ISREG(info.st_mode):
        return
    kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
    raise UnsafePath(f"{path} is {kind}, not a regular file")


def _read_capped(fd: int, path: str, expected: int, max_bytes: int) -> bytes:
    """Read to end of file; a file that grows past `max_bytes` while read is FileTooLarge."""
    parts, total = [], 0
    while True:
        want = expected - total + 1 if total < expected else 1 << 16  # +1: see the end
        chunk = os.read(fd, min(want, max_bytes + 1 - total))
        if not chunk:
            return b"".join(parts) if len(parts) != 1 else parts[0]
        parts.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise FileTooLarge(path, total, max_bytes)
