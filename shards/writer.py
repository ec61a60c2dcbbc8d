"""Deterministic, atomic shard writer: plain tar or tar.zst (SPEC §4).

Every member gets fixed metadata (mtime 0, uid/gid 0, no user names, mode 0644) and
members are written in the order given, so the same samples give the same bytes. A
shard is written under a temporary name, fsynced, then renamed into place
(`shards.atomic`): a crash leaves either the complete shard or a stray `.tmp` file,
never a half shard.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import zstandard

from bionas.shards.atomic import write_atomic
from bionas.shards.format import IMAGE_EXT, RECORD_EXT

ZSTD_LEVEL = 3
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ShardInfo:
    """What the manifest records about one written shard."""

    name: str
    samples: int
    bytes: int
    sha256: str
    first_key: str
    last_key: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Sample:
    key: str
    jpg: bytes
    json: bytes


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def tar_bytes(samples: Iterable[Sample]) -> tuple[bytes, int, str, str]:
    """The uncompressed tar of `samples`; returns (data, count, first_key, last_key)."""
    buffer = io.BytesIO()
    count, first, last = 0, "", ""
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for ext, data in ((IMAGE_EXT, sample.jpg), (RECORD_EXT, sample.json)):
                tar.addfile(_member(f"{sample.key}.{ext}", len(data)), io.BytesIO(data))
            first = first or sample.key
            last = sample.key
            count += 1
    return buffer.getvalue(), count, first, last


def compress(data: bytes, compression: str) -> bytes:
    if compression == "none":
        return data
    if compression == "zstd":
        # single-threaded with the content size in the frame: deterministic bytes
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(data)
    raise ValueError(f"unknown compression {compression!r}")


def write_shard(path: Path, samples: Iterable[Sample], compression: str = "none") -> ShardInfo:
    """Write one shard atomically (tmp name, fsync, rename) and describe it."""
    data, count, first, last = tar_bytes(samples)
    data = compress(data, compression)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return ShardInfo(
        name=path.name,
        samples=count,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        first_key=first,
        last_key=last,
    )


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
