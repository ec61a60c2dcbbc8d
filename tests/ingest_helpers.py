"""Shared helpers for the ingest end-to-end tests: run the real CLI, read shards plainly."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import zstandard
from click.testing import CliRunner

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
