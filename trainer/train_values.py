"""The values categorical fields take in the train split (SPEC §6: a feature value never
seen in training encodes as unknown, index 0).

A feature vocabulary may list values that never occur in training: `bionas vocab` counts
the metadata table's rows of every split, or of the table's own split column, which is
not the dataset's split under `--split-source random`; datasets ingested before ingest
counted features on train only list every split's values too. Such a value would get an
embedding row of its own, drawn at random and never trained, where the learned unknown
row belongs, and corrupt exactly the unseen-BIN metrics. So the trainer cuts each feature
vocabulary to the values of the train split (`restrict_to_train`).

A vocabulary ingest counted over the train split's samples (manifest entry
`"counted_over": "ingested samples"`, vocabulary `counted_splits: ["train"]`) already is
that; `bionas vocab` rewrites the entry without that mark. For any other, the train
split's JSON records are read (no image is decoded) in one pass for all the fields asked
for, and the counts are cached by the train shards' sha256.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bionas.manifests.manifest import Manifest
from bionas.manifests.vocab import Vocab, build_vocab
from bionas.shards.format import RECORD_EXT, decode_record
from bionas.shards.reader import SHARD_ERRORS
from bionas.shards.tario import open_shard
from bionas.trainer.encoding import Encoding, record_text

log = logging.getLogger(__name__)

TRAIN = "train"
TRAIN_VALUES_NAME = "train_values.json"  # the cache, in RUN_DIR
COUNTED_OVER_SAMPLES = "ingested samples"  # what ingest writes into manifest vocab entries


def counted_on_train_samples(manifest: Manifest, vocab: Vocab) -> bool:
    """True when ingest counted `vocab` (the one in force) over the train split's samples."""
    entry = manifest.body.get("vocabs", {}).get(vocab.field, {})
    return entry.get("counted_over") == COUNTED_OVER_SAMPLES and vocab.counted_splits == (TRAIN,)


def restrict_to_train(encoding: Encoding, manifest: Manifest, cache: Path | None) -> Encoding:
    """`encoding` with each feature vocabulary cut to the values of the train split.

    A target-role vocabulary used as metadata (the opt-in leaky setting) is left as it is:
    its classes have at least its min count, and cutting it would change `Other`.
    """
    todo = [
        v
        for v in encoding.meta_vocabs
        if v.role == "feature" and not counted_on_train_samples(manifest, v)
    ]
    if not todo:
        return encoding
    counts = train_value_counts(manifest, [v.field for v in todo], cache)
    restricted = {v.field: restricted_vocab(v, counts[v.field]) for v in todo}
    for vocab in todo:
        dropped = len(vocab) - len(restricted[vocab.field])
        (log.warning if dropped else log.info)(
            "%s: %d of the %d values of %s never occur in the train split (the vocabulary "
            "counted %s); the run uses the %d that do, and encodes the rest as unknown (0)",
            vocab.field, dropped, len(vocab) - 1, manifest.vocab_path(vocab.field).name,
            ",".join(vocab.counted_splits) or "?", len(restricted[vocab.field]) - 1,
        )  # fmt: skip
    meta = tuple(restricted.get(v.field, v) for v in encoding.meta_vocabs)
    return replace(encoding, meta_vocabs=meta)


def restricted_vocab(vocab: Vocab, train_counts: Mapping[str, int]) -> Vocab:
    """The values of `vocab` that occur in the train split, recounted there (its min count
    then applies to train counts)."""
    kept = {v: train_counts[v] for v in vocab.values[1:] if v in train_counts}
    return build_vocab(
        vocab.field,
        kept,
        role=vocab.role,
        min_count=vocab.min_count,
        counted_splits=(TRAIN,),
    )


def train_value_counts(
    manifest: Manifest, fields: Sequence[str], cache: Path | None = None
) -> dict[str, dict[str, int]]:
    """Per field, how many train samples carry each (non-empty) value."""
    fingerprint = [s["sha256"] for s in manifest.shards(TRAIN)]
    known = _read_cache(cache, fingerprint)
    missing = [f for f in dict.fromkeys(fields) if f not in known]
    if missing:
        counts, complete = count_record_values(manifest.shard_paths(TRAIN), missing)
        known.update(counts)
        if complete and cache is not None:
            _write_cache(cache, fingerprint, known)
    return {f: known[f] for f in fields}


def count_record_values(
    shard_paths: Iterable[Path], fields: Sequence[str]
) -> tuple[dict[str, dict[str, int]], bool]:
    """Value counts of `fields` over the shards' JSON records, and whether every shard was
    read whole (a broken one is warned about and its readable part counted)."""
    counters: dict[str, Counter[str]] = {f: Counter() for f in fields}
    complete = True
    for path in shard_paths:
        try:
            for record in _shard_records(path):
                for field, counter in counters.items():
                    value = record_text(record.get(field))
                    if value:
                        counter[value] += 1
        except (*SHARD_ERRORS, ValueError) as err:
            log.warning("reading the train values of %s stopped early: %s", path, err)
            complete = False
    return {f: dict(sorted(c.items())) for f, c in counters.items()}, complete


def _shard_records(path: Path) -> Iterable[dict[str, Any]]:
    # plain tar: random-access mode seeks over the JPEG bytes; zstd must stream through them
    mode = "r|" if str(path).endswith(".zst") else "r:"
    with open_shard(path) as stream, tarfile.open(fileobj=stream, mode=mode) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(f".{RECORD_EXT}"):
                yield decode_record(tar.extractfile(member).read())


def _read_cache(cache: Path | None, fingerprint: list[str]) -> dict[str, dict[str, int]]:
    if cache is None or not cache.exists():
        return {}
    try:
        body = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    if body.get("train_shards_sha256") != fingerprint:
        return {}
    return dict(body.get("counts", {}))


def _write_cache(cache: Path, fingerprint: list[str], counts: dict[str, dict[str, int]]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    body = {"train_shards_sha256": fingerprint, "counts": dict(sorted(counts.items()))}
    # several ranks of one run may write it at once: each through its own temporary file
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body) + "\n")
    os.replace(tmp, cache)
