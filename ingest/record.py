"""Record what an ingest produced (SPEC §4 step 3): vocabularies, rejects, manifest body."""

from __future__ import annotations

import platform
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np
import polars as pl

from bionas import __version__
from bionas.ingest.config import IngestConfig
from bionas.ingest.execute import ShardResult
from bionas.ingest.profiles import ID, DatasetProfile
from bionas.manifests.vocab import Vocab, build_vocab, vocab_filename
from bionas.shards.writer import file_sha256

TRAIN_SPLIT = "train"  # the split `bionas train` learns from
VERSIONED = ("polars", "pillow-simd", "pillow", "webdataset", "zstandard", "numpy")


def landed_samples(samples: pl.DataFrame, rejected: pl.DataFrame) -> pl.DataFrame:
    """Planned samples (row, processid, split, shard) minus those whose image was rejected."""
    if rejected.height == 0:
        return samples
    return samples.filter(~pl.col(ID).is_in(rejected[ID].implode()))


def landed_values(frame: pl.DataFrame, rows: pl.Series, field: str) -> pl.Series:
    """`field` of the given rows of the plan's frame, in file order.

    A mask and a filter, not a gather: the frame comes in thousands of chunks from the
    streaming scan, and a random gather over them costs seconds per column at 5M rows.
    """
    mask = np.zeros(frame.height, dtype=bool)
    mask[rows.to_numpy()] = True
    return frame[field].filter(mask)


def build_vocabularies(
    frame: pl.DataFrame, landed: pl.DataFrame, cfg: IngestConfig, profile: DatasetProfile
) -> dict[str, Vocab]:
    """One vocabulary per categorical field: the target counted over every sample that
    landed, the features over the train split's samples only.

    A feature value seen only in val/test would get an embedding row that is never
    trained (SPEC §6); without a row it encodes as the learned unknown (index 0). Without
    a train split (an evaluation-only dataset) features are counted over every split.
    """
    every = tuple(sorted(landed["split"].unique().to_list()))
    train = landed.filter(pl.col("split") == TRAIN_SPLIT)
    features, feature_splits = (train, (TRAIN_SPLIT,)) if train.height else (landed, every)
    vocabs = {}
    for field in profile.categorical:
        is_target = field == cfg.target
        rows = landed if is_target else features
        values = landed_values(frame, rows["row"], field)
        counts = dict(values.drop_nulls().value_counts().iter_rows())
        vocabs[field] = build_vocab(
            field,
            counts,
            role="target" if is_target else "feature",
            min_count=cfg.min_class_count if is_target else 1,
            counted_splits=every if is_target else feature_splits,
        )
    return vocabs


def class_counts(
    frame: pl.DataFrame, landed: pl.DataFrame, target: Vocab
) -> dict[str, dict[str, int]]:
    """Per split, samples per target class (after folding into Other)."""
    out: dict[str, dict[str, int]] = {}
    for (split,), group in landed.group_by(["split"], maintain_order=True):
        counter: Counter[str] = Counter()
        values = landed_values(frame, group["row"], target.field)
        for value, n in values.value_counts().iter_rows():
            counter[target.values[target.lookup(value)]] += n
        out[split] = dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))
    return dict(sorted(out.items()))


def input_entry(path: Path) -> dict:
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def input_entries(cfg: IngestConfig) -> dict:
    """The manifest's `inputs`: each table with its size and sha256, and the image root."""
    inputs = {"metadata": input_entry(cfg.metadata)}
    if cfg.bbox:
        inputs["bbox"] = input_entry(cfg.bbox)
    inputs["images"] = {"path": str(cfg.images)}
    return inputs


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "bionas": __version__}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def splits_body(results: list[ShardResult]) -> dict:
    splits: dict[str, dict] = {}
    for result in results:
        entry = splits.setdefault(result.split, {"samples": 0, "bytes": 0, "shards": []})
        entry["samples"] += result.info.samples
        entry["bytes"] += result.info.bytes
        entry["shards"].append(result.info.to_json())
    return dict(sorted(splits.items()))


def reject_counts(rejects: pl.DataFrame) -> dict:
    by_reason = dict(sorted(rejects["reason"].value_counts().iter_rows())) if rejects.height else {}
    return {"total": rejects.height, "by_reason": by_reason}


def vocab_entry(vocab: Vocab) -> dict:
    """The manifest's record of one vocabulary. `counted_over` says its counted splits are
    the dataset's own (the trainer relies on it); `bionas vocab` counts a metadata table's
    rows instead and rewrites the entry without it."""
    return {
        "file": f"manifests/{vocab_filename(vocab.field)}",
        "sha256": vocab.sha256,
        "size": len(vocab),
        "counted_over": "ingested samples",
    }


def manifest_body(
    cfg: IngestConfig,
    profile: DatasetProfile,
    results: list[ShardResult],
    vocabs: dict[str, Vocab],
    counts: dict[str, dict[str, int]],
    rejects: pl.DataFrame,
    inputs: dict,
    extra: dict,
) -> dict:
    return {
        "bionas_version": __version__,
        "vocab_version": 1,
        "versions": library_versions(),
        "profile": profile.name,
        "ranks": list(profile.rank_names),
        "leaky_fields": list(profile.leaky_fields),
        "inputs": inputs,
        "options": cfg.recorded_options(),
        "target": cfg.target,
        "categorical_fields": list(profile.categorical),
        "numeric_fields": list(profile.numeric),
        "splits": splits_body(results),
        "class_counts": counts,
        "rejects": reject_counts(rejects),
        "vocabs": {f: vocab_entry(v) for f, v in vocabs.items()},
        **extra,
    }
