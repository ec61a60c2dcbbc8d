"""The small real dataset the table and shard targets start from, and how they read it."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from bionas.cli import main
from bionas.manifests.manifest import load_manifest
from bionas.shards import reader
from bionas.shards.reader import ReadStats
from bionas.shards.tario import ShardRef

SYNTH_ROWS = 48
INGEST_OPTIONS = ("--size", "32", "--min-class-count", "1", "--shard-size", "8",
                  "--workers", "1", "--quiet")  # fmt: skip


def prepare(workdir: Path) -> Path:
    """Once per workdir: `bionas synth` (`synth/`, 48 rows), ingested plainly (`ds-none`,
    the tables target's baseline) and with zstd (`ds-zstd`); 8 samples a shard."""
    synth = workdir / "synth"
    if not (synth / "metadata.csv").exists():
        cli("synth", synth, "--n", SYNTH_ROWS, "--seed", 11, "--workers", 1, "--quiet")
    for compression in ("none", "zstd"):
        out = workdir / f"ds-{compression}"
        if not (out / "manifest.json").exists():
            metadata, bbox = synth / "metadata.csv", synth / "bbox.tsv"
            cli(*ingest_args(metadata, bbox, synth, out), "--compression", compression)
    return workdir


def cli(*args: object) -> None:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def ingest_args(metadata: Path, bbox: Path, synth: Path, out: Path) -> list[str]:
    """`bionas ingest` of these tables over the images of `synth` (one worker, in-process)."""
    images = synth / "images" / "original_full"
    args = ["ingest", metadata, "--images", images, "--bbox", bbox, "--out", out, *INGEST_OPTIONS]
    return [str(a) for a in args]


def shard_refs(root: Path, split: str) -> list[ShardRef]:
    """The split's shards with their manifest records, as the trainer reads them."""
    manifest = load_manifest(root)
    return [
        ShardRef(path, samples=int(r["samples"]), size=int(r["bytes"]), sha256=r["sha256"])
        for path, r in zip(manifest.shard_paths(split), manifest.shards(split), strict=True)
    ]


def stream_dataset(root: Path) -> tuple[int, int]:
    """(samples, broken shards) of every split through the trainer's checked reader."""
    stats = ReadStats()
    refs = [ref for split in load_manifest(root).splits for ref in shard_refs(root, split)]
    samples = sum(1 for _ in reader.read_samples(refs, stats=stats, shuffle_shards=False))
    return samples, stats.broken_shards
