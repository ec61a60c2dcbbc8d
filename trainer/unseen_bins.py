"""Which evaluated samples have a `dna_bin` seen in training, a novel one, or none (SPEC §6).

The training bins come from the train split of the run's own dataset: from its dna_bin
vocabulary when ingest counted it over the train split's samples with min count 1 (it
then lists exactly them), else from the train split's JSON records (`train_values`: read
without decoding images, cached by shard checksums).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bionas.manifests.manifest import Manifest, load_manifest
from bionas.trainer import metrics
from bionas.trainer.train_values import counted_on_train_samples, train_value_counts

log = logging.getLogger(__name__)

DNA_BIN = "dna_bin"


def record_dna_bin(record: Mapping[str, Any]) -> str:
    """A record's dna_bin as text; "" when it has none."""
    value = record.get(DNA_BIN)
    return "" if value is None else str(value)


def training_dna_bins(manifest: Manifest, cache: Path | None = None) -> tuple[set[str], str]:
    """The dna_bins of the train split and where they were found.

    A dna_bin vocabulary ingest counted over the train samples with min_count 1 lists them
    all; any other may include val/test bins (or miss rare train bins), so the train
    split's records are read instead (`cache`: the JSON file that keeps their counts).
    """
    if DNA_BIN not in manifest.categorical_fields:
        return set(), "the dataset's fields (it has no dna_bin)"
    try:
        vocab = manifest.vocab(DNA_BIN)
    except FileNotFoundError:
        vocab = None
    if vocab is not None and counted_on_train_samples(manifest, vocab) and vocab.min_count <= 1:
        return set(vocab.values[1:]), "its dna_bin vocabulary, counted over the train samples"
    bins = set(train_value_counts(manifest, [DNA_BIN], cache)[DNA_BIN])
    return bins, "the train split's records"


def dna_bin_groups(
    train_dir: Path, dna_bins: list[str], cache: Path
) -> tuple[dict[str, np.ndarray | None], dict[str, str]]:
    """A mask of the evaluated samples per group of `metrics.BIN_GROUPS` and each group's
    definition; seen_bin and unseen_bin are None when the training split cannot be read."""
    no_bin = "dna_bin empty (not labelled, or the dataset has no dna_bin)"
    try:
        known, source = training_dna_bins(load_manifest(train_dir), cache)
    except (FileNotFoundError, KeyError, ValueError) as err:
        log.warning("no seen/unseen dna_bin metrics: cannot read the training split (%s)", err)
        why = f"not computed: the run's training dataset cannot be read ({err})"
        masks = {"seen_bin": None, "unseen_bin": None, "no_bin": metrics.no_bin_mask(dna_bins)}
        return masks, {"seen_bin": why, "unseen_bin": why, "no_bin": no_bin}
    where = f"the {len(known)} dna_bins of the train split of {train_dir} (read from {source})"
    definitions = {
        "seen_bin": f"dna_bin among {where}",
        "unseen_bin": f"dna_bin not empty and not among {where}",
        "no_bin": no_bin,
    }
    return dict(metrics.dna_bin_groups(dna_bins, known)), definitions
