"""Check a dataset against its manifest: every shard's bytes, sha256 and samples, the
vocabularies, and nothing under `shards/` that the manifest does not list.

Unlisted files count as problems (`bionas inspect --verify` exits 1): the trainer reads
only what manifest.json lists, but a shard, split folder or `.tmp` left beside the listed
ones means the folder is not the dataset the manifest describes (an interrupted or
different ingest), and anything that globs `shards/<split>/*.tar` (webdataset brace
patterns, a copy to another machine) would take it for data.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from bionas.manifests.manifest import MANIFEST_NAME, SHARD_DIR, VOCAB_DIR, Manifest
from bionas.manifests.vocab import load_vocab
from bionas.shards.format import IMAGE_EXT, RECORD_EXT, member_key
from bionas.shards.tario import ShardRef, open_shard

TMP_SUFFIX = ".tmp"  # what the atomic writers leave when interrupted


@dataclass(frozen=True)
class Problem:
    path: str
    what: str
    kind: str = "mismatch"  # or "extra": a file the manifest does not list

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


@dataclass
class ShardScan:
    """What one pass over a shard found: its samples (in order), the file's size and sha256."""

    keys: list[str] = field(default_factory=list)
    members: dict[str, set[str]] = field(default_factory=dict)
    error: str | None = None
    size: int = 0
    sha256: str | None = None

    def add(self, name: str) -> None:
        key, ext = member_key(name)
        if key not in self.members:
            self.members[key] = set()
            self.keys.append(key)
        self.members[key].add(ext)


def scan_shard(shard: Path | ShardRef) -> ShardScan:
    """Read a shard once: member names (tar order), and, for a ShardRef with a sha256,
    the sha256 of the whole file, read to its end past wherever the tar stream stopped."""
    scan = ShardScan()
    with open_shard(shard) as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for info in tar:
                    scan.add(info.name)
        except (tarfile.TarError, EOFError, zstandard.ZstdError) as exc:
            scan.error = f"unreadable tar: {exc}"
        scan.size, scan.sha256 = stream.finish()
    return scan


def verify_shard(manifest: Manifest, split: str, record: dict) -> list[Problem]:
    path = manifest.root / SHARD_DIR / split / record["name"]
    rel = str(path.relative_to(manifest.root))
    if not path.exists():
        return [Problem(rel, "missing")]
    if path.stat().st_size != record["bytes"]:
        return [Problem(rel, f"size {path.stat().st_size} != {record['bytes']} in the manifest")]
    try:
        scan = scan_shard(ShardRef(path, record["samples"], record["bytes"], record["sha256"]))
    except OSError as exc:
        return [Problem(rel, f"unreadable: {exc}")]
    if scan.sha256 != record["sha256"]:
        return [Problem(rel, "sha256 does not match the manifest (the file changed)")]
    out = [Problem(rel, scan.error)] if scan.error else []
    for key in scan.keys:
        if scan.members[key] != {IMAGE_EXT, RECORD_EXT}:
            found = sorted(scan.members[key])
            out.append(Problem(rel, f"sample {key} has members {found}, expected jpg and json"))
    if len(scan.keys) != record["samples"]:
        out.append(Problem(rel, f"{len(scan.keys)} samples, the manifest says {record['samples']}"))
    ends = (scan.keys[0], scan.keys[-1]) if scan.keys else ("", "")
    if ends != (record["first_key"], record["last_key"]):
        out.append(Problem(rel, "first/last keys differ from the manifest"))
    return out


def verify_vocabs(manifest: Manifest) -> list[Problem]:
    out = []
    for name, entry in manifest.body.get("vocabs", {}).items():
        path = manifest.root / entry["file"]
        try:
            vocab = load_vocab(path)
        except (OSError, ValueError) as exc:
            out.append(Problem(entry["file"], str(exc)))
            continue
        if vocab.sha256 != entry["sha256"]:
            out.append(Problem(entry["file"], f"vocabulary of {name} differs from the manifest's"))
    return out


def unlisted_files(manifest: Manifest) -> list[Problem]:
    """Everything under shards/ that manifest.json does not list (files, split folders),
    and leftover `.tmp` files beside manifest.json and the vocabularies."""
    root = manifest.root
    listed = {split: {s["name"] for s in manifest.shards(split)} for split in manifest.splits}
    extras: list[Path] = []
    shard_dir = root / SHARD_DIR
    for entry in sorted(shard_dir.iterdir()) if shard_dir.is_dir() else []:
        if entry.name in listed and entry.is_dir() and not entry.is_symlink():
            extras += [f for f in sorted(entry.iterdir()) if f.name not in listed[entry.name]]
        else:
            extras.append(entry)
    for folder in (root, root / VOCAB_DIR):
        extras += sorted(folder.glob(f"*{TMP_SUFFIX}")) if folder.is_dir() else []
    return [Problem(str(p.relative_to(root)), _why_extra(p, listed), "extra") for p in extras]


def _why_extra(path: Path, listed: dict[str, set[str]]) -> str:
    if path.name.endswith(TMP_SUFFIX):
        return "a temporary file left by an interrupted write; delete it"
    if path.parent.name == SHARD_DIR and path.is_dir():
        return f"split folder not in {MANIFEST_NAME} (splits: {', '.join(listed) or 'none'})"
    return (
        f"not listed in {MANIFEST_NAME}: training ignores it, anything that globs shards/ "
        "would not; delete it, or re-run the ingest that wrote it"
    )


def verify_dataset(
    manifest: Manifest, on_shard: Callable[[str], None] | None = None
) -> list[Problem]:
    """Re-hash and re-count every shard, check the vocabularies, and list the files the
    manifest does not; [] when all is well."""
    problems = verify_vocabs(manifest)
    for split in manifest.splits:
        for record in manifest.shards(split):
            problems.extend(verify_shard(manifest, split, record))
            if on_shard:
                on_shard(record["name"])
    return problems + unlisted_files(manifest)
