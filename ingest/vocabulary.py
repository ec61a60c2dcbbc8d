"""`bionas vocab`: count categorical values straight from a metadata table (no images)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from bionas.errors import BionasError
from bionas.ingest.profiles import DatasetProfile
from bionas.ingest.scan import read_header, require_columns, require_unique_columns
from bionas.manifests.align import align_vocabs
from bionas.manifests.manifest import MANIFEST_NAME, VOCAB_DIR, load_manifest, write_manifest
from bionas.manifests.vocab import Vocab, build_vocab, load_vocab, vocab_filename, write_vocab


@dataclass(frozen=True)
class VocabConfig:
    metadata: Path
    out: Path
    target: str = "order"
    fields: tuple[str, ...] = ()  # feature fields; empty = every categorical field
    min_count: int = 500
    count_splits: tuple[str, ...] | None = None
    align_to: Path | None = None


def count_values(
    cfg: VocabConfig, profile: DatasetProfile, fields: list[str]
) -> dict[str, dict[str, int]]:
    """Value counts per canonical field over the rows of the counted splits."""
    canonical = {canon: raw for raw, canon in profile.rename_map().items()}
    raw = {f: canonical.get(f, f) for f in fields}
    counted = list(dict.fromkeys(raw.values()))
    needed = list(counted)
    if cfg.count_splits:
        if not profile.split_column:
            raise BionasError(f"profile {profile.name!r} has no split column: drop --count-splits")
        needed.append(profile.split_column)
    header = read_header(cfg.metadata, profile.delimiter)
    require_columns(
        cfg.metadata, header, needed, owner=f"profile {profile.name!r} ({profile.source})"
    )
    require_unique_columns(cfg.metadata, header, needed)
    lf = pl.scan_csv(cfg.metadata, separator=profile.delimiter, infer_schema=False)
    if cfg.count_splits:
        lf = lf.filter(pl.col(profile.split_column).str.strip_chars().is_in(list(cfg.count_splits)))
    counts = count_columns(lf, counted)
    return {f: counts[raw[f]] for f in fields}


def count_columns(lf: pl.LazyFrame, columns: list[str]) -> dict[str, dict[str, int]]:
    """Counts of each column's stripped values, blanks left out, in one streaming pass."""
    # One long (column, value) stream and one group_by keep only the groups in memory and read
    # the file once. Two alternatives hold every column: collect_all over a group_by per column
    # (the shared scan becomes a cache filled first) and `.replace("", None)` (not streamed).
    groups = (
        lf.select(columns)
        .unpivot(on=columns, variable_name="column", value_name="value")
        .with_columns(pl.col("value").str.strip_chars())
        .filter(pl.col("value") != "")  # a null compares to null and is dropped too
        .group_by("column", "value")
        .len()
        .collect(engine="streaming")
    )
    counts: dict[str, dict[str, int]] = {c: {} for c in columns}
    for column, stripped, n in groups.iter_rows():
        counts[column][stripped] = n
    return counts


def build_vocabs(cfg: VocabConfig, profile: DatasetProfile) -> dict[str, Vocab]:
    if cfg.target not in profile.categorical:
        raise BionasError(
            f"--target {cfg.target} is not a field of profile {profile.name!r} "
            f"(fields: {', '.join(profile.categorical)})"
        )
    unknown = [f for f in cfg.fields if f not in profile.categorical]
    if unknown:
        raise BionasError(
            f"--field {', '.join(unknown)}: not a field of profile {profile.name!r} "
            f"(fields: {', '.join(profile.categorical)})"
        )
    fields = list(dict.fromkeys([cfg.target, *(cfg.fields or profile.categorical)]))
    counts = count_values(cfg, profile, fields)
    counted = cfg.count_splits or ("all",)
    return {
        f: build_vocab(
            f,
            counts[f],
            role="target" if f == cfg.target else "feature",
            min_count=cfg.min_count if f == cfg.target else 1,
            counted_splits=counted,
        )
        for f in fields
    }


def target_vocab_of(path: Path, field: str) -> Vocab:
    """The target vocabulary of a dataset folder (its manifest's target) or a vocab folder."""
    if (path / MANIFEST_NAME).exists():
        manifest = load_manifest(path)
        return manifest.vocab(manifest.target)
    candidate = path / vocab_filename(field)
    if not candidate.exists():
        raise BionasError(
            f"--align-to {path}: neither a dataset nor a folder with {candidate.name}"
        )
    return load_vocab(candidate)


def write_vocabs(cfg: VocabConfig, vocabs: dict[str, Vocab]) -> Path:
    """Into a dataset (its manifests/ folder, manifest updated) or a plain folder."""
    is_dataset = (cfg.out / MANIFEST_NAME).exists()
    directory = cfg.out / VOCAB_DIR if is_dataset else cfg.out
    for vocab in vocabs.values():
        write_vocab(vocab, directory)
    if is_dataset:
        manifest = load_manifest(cfg.out)
        body = {k: v for k, v in manifest.body.items() if k != "schema"}
        entries = dict(body.get("vocabs", {}))
        for field, vocab in vocabs.items():
            entries[field] = {
                "file": f"{VOCAB_DIR}/{vocab_filename(field)}",
                "sha256": vocab.sha256,
                "size": len(vocab),
            }
        body["vocabs"] = entries
        body["vocab_version"] = int(body.get("vocab_version", 1)) + 1
        body["vocab_regenerated"] = {
            "metadata": str(cfg.metadata),
            "target": cfg.target,
            "min_count": cfg.min_count,
            "count_splits": list(cfg.count_splits or ["all"]),
        }
        if cfg.target != body.get("target"):
            body.setdefault("extra_targets", [])
            body["extra_targets"] = sorted(set(body["extra_targets"]) | {cfg.target})
        write_manifest(cfg.out, body)
    return directory


def write_alignment(cfg: VocabConfig, target: Vocab) -> dict:
    assert cfg.align_to is not None
    alignment = align_vocabs(target, target_vocab_of(cfg.align_to, cfg.target))
    alignment["ours"], alignment["theirs"] = str(cfg.metadata), str(cfg.align_to)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "alignment.json").write_text(json.dumps(alignment, indent=1) + "\n")
    return alignment
