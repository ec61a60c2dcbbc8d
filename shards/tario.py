"""Opening shards for reading: plain tar or zstd-compressed tar, as a byte stream."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import zstandard


def open_shard(path: str | Path) -> BinaryIO:
    """A readable stream of the uncompressed tar bytes of a shard."""
    handle = open(path, "rb")  # noqa: SIM115 (the caller closes the returned stream)
    if str(path).endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(handle, closefd=True)
    return handle
