"""Shared helpers for the ingest end-to-end tests: run the real CLI, read shards plainly."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import zstandard
from click.testing import CliRunner
from PIL import Image

from bionas.cli import main


def run_cli(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def ingest(synth_dir: Path, out: Path, *extra: str, ok: bool = True):
    return run_cli(
        "ingest", synth_dir / "metadata.csv", "--images", synth_dir / "images" / "original_full",
        "--bbox", synth_dir / "bbox.tsv", "--out", out, "--quiet", *extra, ok=ok,
    )  # fmt: skip


def shard_files(dataset: Path) -> dict[str, str]:
    """relative shard path -> sha256 of its bytes."""
    return {
        str(p.relative_to(dataset)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((dataset / "shards").glob("*/*.tar*"))
    }


def read_samples(dataset: Path) -> dict[str, dict]:
    """processid -> {"split", "record", "jpg"} read with plain tarfile (+ zstandard)."""
    samples: dict[str, dict] = {}
    for path in sorted((dataset / "shards").glob("*/*.tar*")):
        data = path.read_bytes()
        if path.suffix == ".zst":
            data = zstandard.ZstdDecompressor().decompress(data)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                entry = samples.setdefault(key, {"split": path.parent.name})
                payload = tar.extractfile(member).read()
                entry["record" if ext == "json" else ext] = (
                    json.loads(payload) if ext == "json" else payload
                )
    return samples


def split_records(dataset: Path, split: str) -> list[dict]:
    """Every record of one split, in shard order, read plainly as `read_samples` reads them."""
    return [s["record"] for s in read_samples(dataset).values() if s["split"] == split]


def encoded(image: Image.Image, fmt: str = "JPEG", **save) -> bytes:
    """The bytes of `image` saved as `fmt`."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose IHDR declares `width` x `height` RGB pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 256))
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is rewritten to declare `width` x `height`."""
    data = bytearray(encoded(Image.new("RGB", (16, 16), (90, 120, 30))))
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)
