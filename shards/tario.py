"""Opening shards for reading: plain tar or zstd-compressed tar, as a byte stream.

The stream also watches the shard *file*: it counts (and, given an expected sha256,
hashes) every byte read from disk, below the decompressor, and `finish` reads what the
tar reader left unread, so the reader can compare the whole file with the manifest's
record of it at the end of the shard (`bionas.shards.reader`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ShardRef:
    """A shard to read and what its manifest record says it holds; None: not checked.

    It stands for its path (`os.fspath`, `str`, `.name`), so code that only opens or
    names shards takes it as it takes a Path.
    """

    path: Path
    samples: int | None = None
    size: int | None = None  # bytes on disk
    sha256: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)


def as_ref(shard: str | Path | ShardRef) -> ShardRef:
    """A ShardRef for a path with no expectations, or the ShardRef itself."""
    return shard if isinstance(shard, ShardRef) else ShardRef(Path(shard))


class _RawTap:
    """The shard file as read from disk: every byte counted, and hashed when asked."""

    def __init__(self, handle: BinaryIO, sha256: bool) -> None:
        self.handle = handle
        self.size = 0
        self.digest = hashlib.sha256() if sha256 else None

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.size += len(data)
        if self.digest is not None:
            self.digest.update(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()


class ShardStream:
    """A readable stream of the uncompressed tar bytes of a shard (a context manager)."""

    def __init__(self, shard: str | Path | ShardRef) -> None:
        ref = as_ref(shard)
        self._tap = _RawTap(open(ref.path, "rb"), sha256=ref.sha256 is not None)  # noqa: SIM115
        self._tar: BinaryIO | _RawTap = self._tap
        if ref.path.name.endswith(".zst"):
            self._tar = zstandard.ZstdDecompressor().stream_reader(self._tap, closefd=False)

    def read(self, size: int = -1) -> bytes:
        return self._tar.read(size)

    # tarfile's random-access mode ("r:") seeks over members; the byte count and hash
    # then no longer describe the file, and only the streaming reader calls `finish`
    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._tar.seek(offset, whence)

    def tell(self) -> int:
        return self._tar.tell()

    def finish(self) -> tuple[int, str | None]:
        """Read the file to its end (whatever the tar reader left), then (bytes in the
        file, their sha256 or None when not hashed)."""
        while self._tap.read(_CHUNK):
            pass
        digest = self._tap.digest
        return self._tap.size, None if digest is None else digest.hexdigest()

    def close(self) -> None:
        if self._tar is not self._tap:
            self._tar.close()
        self._tap.handle.close()

    def __enter__(self) -> ShardStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_shard(shard: str | Path | ShardRef) -> ShardStream:
    """A readable stream of the uncompressed tar bytes of a shard; it hashes the file's
    bytes as they pass when `shard` is a ShardRef with a sha256 to check."""
    return ShardStream(shard)
