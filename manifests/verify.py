"""Check a dataset against its manifest: every shard's bytes, sha256 and samples."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass

from bionas.manifests.manifest import Manifest
from bionas.manifests.vocab import load_vocab
from bionas.shards.tario import open_shard
from bionas.shards.writer import file_sha256


@dataclass(frozen=True)
class Problem:
    path: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def count_samples(path) -> tuple[int, str, str, list[str]]:
    """(samples, first key, last key, problems) by reading the tar's member names."""
    problems: list[str] = []
    members: dict[str, set[str]] = {}
    order: list[str] = []
    with open_shard(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            if key not in members:
                members[key] = set()
                order.append(key)
            members[key].add(ext)
    for key in order:
        if members[key] != {"jpg", "json"}:
            problems.append(
                f"sample {key} has members {sorted(members[key])}, expected jpg and json"
            )
    return len(order), order[0] if order else "", order[-1] if order else "", problems


def verify_shard(manifest: Manifest, split: str, record: dict) -> list[Problem]:
    path = manifest.root / "shards" / split / record["name"]
    rel = str(path.relative_to(manifest.root))
    if not path.exists():
        return [Problem(rel, "missing")]
    if path.stat().st_size != record["bytes"]:
        return [Problem(rel, f"size {path.stat().st_size} != {record['bytes']} in the manifest")]
    if file_sha256(path) != record["sha256"]:
        return [Problem(rel, "sha256 does not match the manifest (the file changed)")]
    try:
        samples, first, last, problems = count_samples(path)
    except (tarfile.TarError, OSError) as exc:
        return [Problem(rel, f"unreadable tar: {exc}")]
    out = [Problem(rel, p) for p in problems]
    if samples != record["samples"]:
        out.append(Problem(rel, f"{samples} samples, the manifest says {record['samples']}"))
    if (first, last) != (record["first_key"], record["last_key"]):
        out.append(Problem(rel, "first/last keys differ from the manifest"))
    return out


def verify_vocabs(manifest: Manifest) -> list[Problem]:
    out = []
    for field, entry in manifest.body.get("vocabs", {}).items():
        path = manifest.root / entry["file"]
        try:
            vocab = load_vocab(path)
        except (OSError, ValueError) as exc:
            out.append(Problem(entry["file"], str(exc)))
            continue
        if vocab.sha256 != entry["sha256"]:
            out.append(Problem(entry["file"], f"vocabulary of {field} differs from the manifest's"))
    return out


def verify_dataset(
    manifest: Manifest, on_shard: Callable[[str], None] | None = None
) -> list[Problem]:
    """Re-hash and re-count every shard, and check the vocabularies; [] when all is well."""
    problems = verify_vocabs(manifest)
    for split in manifest.splits:
        for record in manifest.shards(split):
            problems.extend(verify_shard(manifest, split, record))
            if on_shard:
                on_shard(record["name"])
    return problems
