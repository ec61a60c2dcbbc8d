"""Which evaluated samples have a `dna_bin` the run never trained on (SPEC §6).

The training bins come from the train split of the run's own dataset: from its dna_bin
vocabulary when that lists exactly them, else from the train split's JSON records (read
without decoding images, cached by shard checksums). An empty dna_bin counts as unseen.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bionas.manifests.manifest import Manifest, load_manifest
from bionas.shards.format import RECORD_EXT, decode_record
from bionas.shards.tario import open_shard
from bionas.trainer import metrics

log = logging.getLogger(__name__)

DNA_BIN = "dna_bin"


def record_dna_bin(record: Mapping[str, Any]) -> str:
    """A record's dna_bin as text; "" when it has none."""
    value = record.get(DNA_BIN)
    return "" if value is None else str(value)


def training_dna_bins(manifest: Manifest, cache_dir: Path | None = None) -> tuple[set[str], str]:
    """The dna_bins of the train split and how they were found ("vocab" or "records").

    A dna_bin vocabulary counted on train only with min_count 1 lists them all; any other
    vocabulary may include val/test bins (or miss rare train bins), so the train split's
    JSON records are read instead, without decoding images, and cached by shard checksums.
    """
    try:
        vocab = manifest.vocab(DNA_BIN)
    except FileNotFoundError:
        vocab = None
    if vocab is not None and tuple(vocab.counted_splits) == ("train",) and vocab.min_count <= 1:
        return set(vocab.values[1:]), "vocab (counted on train only, min_count 1)"
    shards = manifest.shards("train")
    fingerprint = [s["sha256"] for s in shards]
    cache = cache_dir / "train_dna_bins.json" if cache_dir else None
    if cache is not None and cache.exists():
        body = json.loads(cache.read_text())
        if body.get("dataset") == str(manifest.root) and body.get("shards") == fingerprint:
            return set(body["dna_bins"]), "records of the train split (cached)"
    bins: set[str] = set()
    for path in manifest.shard_paths("train"):
        bins.update(_dna_bins_of_shard(path))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        body = {"dataset": str(manifest.root), "shards": fingerprint, "dna_bins": sorted(bins)}
        cache.write_text(json.dumps(body) + "\n")
    return bins, "records of the train split"


def _dna_bins_of_shard(path: Path) -> set[str]:
    bins = set()
    # plain tar: random-access mode seeks over the JPEG bytes; zstd must stream through them
    mode = "r|" if str(path).endswith(".zst") else "r:"
    with open_shard(path) as stream, tarfile.open(fileobj=stream, mode=mode) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(f".{RECORD_EXT}"):
                value = record_dna_bin(decode_record(tar.extractfile(member).read()))
                if value:
                    bins.add(value)
    return bins


def mark_unseen_bins(
    train_dir: Path, dna_bins: list[str], cache_dir: Path
) -> tuple[np.ndarray | None, str]:
    """True where a dna_bin is empty or not in the train split of `train_dir`, and a note
    saying how the training bins were found; (None, why) when they cannot be read."""
    try:
        known, source = training_dna_bins(load_manifest(train_dir), cache_dir)
    except (FileNotFoundError, KeyError, ValueError) as err:
        log.warning("no unseen-dna_bin metrics: cannot read the training split (%s)", err)
        return None, f"not computed: the run's training dataset cannot be read ({err})"
    mask = metrics.unseen_bin_mask(dna_bins, known)
    note = (
        f"dna_bin empty or not among the {len(known)} dna_bins of the train split of "
        f"{train_dir} (from {source})"
    )
    return mask, note
