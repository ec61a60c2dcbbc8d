"""A model's class probabilities over one split of a dataset, for `bionas evaluate`.

The split is streamed from the dataset's shards in manifest order. Each record's raw
strings are mapped through the given `Encoding` (the *run's* vocabularies), so samples
whose class the model cannot know are counted by name and left out, and unreadable
samples are counted by reason: every sample of the split is accounted for. Shards given
as `ShardRef`s (`bionas.trainer.data.check_shards_exist`) are checked against the
manifest as they stream: one that ends early or hashes wrong counts as a broken shard,
and what it did not give is the report's `not_read`.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bionas.shards.format import IMAGE_FORMATS, decode_record
from bionas.shards.reader import RawSample, ReadStats, Slot, read_samples
from bionas.shards.tario import ShardRef
from bionas.trainer.encoding import Encoding, record_text
from bionas.trainer.transforms import DECODE_ERRORS, preprocess_image
from bionas.trainer.unseen_bins import record_dna_bin

log = logging.getLogger(__name__)


class SplitStream(IterableDataset):
    """Batches of one split read once in manifest order (shards split across DataLoader
    workers), labelled through `encoding` (the run's vocabularies).

    Yields dicts: images [b,3,S,S], meta [b,F], labels [b], processids, dna_bins, and
    what was left out since the previous batch: `skipped` (reason -> count) and
    `unknown_classes` (target name -> count).
    """

    def __init__(
        self,
        shard_paths: Sequence[Path | ShardRef],
        encoding: Encoding,
        image_size: int,
        batch_size: int,
    ):
        super().__init__()
        self.shard_paths = shard_paths
        self.encoding = encoding
        self.image_size = image_size
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        slot = Slot(worker=info.id, num_workers=info.num_workers) if info else Slot()
        stats = ReadStats()
        raw = read_samples(self.shard_paths, slot=slot, shuffle_shards=False, stats=stats)
        batch = _Batch(len(self.encoding.meta_fields))
        for sample in raw:
            batch.add(sample, self.encoding, self.image_size)
            if len(batch) == self.batch_size:
                yield batch.emit(stats)
                batch = _Batch(len(self.encoding.meta_fields))
        yield batch.emit(stats)  # the rest, and the reader's final skip counts


class _Batch:
    def __init__(self, fields: int) -> None:
        self.fields = fields
        self.images: list[torch.Tensor] = []
        self.meta: list[list[int]] = []
        self.labels: list[int] = []
        self.processids: list[str] = []
        self.dna_bins: list[str] = []
        self.skipped: Counter[str] = Counter()
        self.unknown_classes: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, sample: RawSample, encoding: Encoding, image_size: int) -> None:
        try:
            record = decode_record(sample.json)
            label = encoding.label(record)
            if label < 0:  # a class the model cannot know, or no label at all
                self.unknown_classes[record_text(record.get(encoding.target)) or "<missing>"] += 1
                return
            image = preprocess_image(sample.jpg, image_size, IMAGE_FORMATS)
        except DECODE_ERRORS as err:
            log.warning("skipping sample %s of %s: %s", sample.key, sample.shard, err)
            self.skipped["corrupt sample"] += 1
            return
        self.images.append(image)
        self.meta.append(encoding.meta(record))
        self.labels.append(label)
        self.processids.append(str(record.get("processid") or sample.key))
        self.dna_bins.append(record_dna_bin(record))

    def emit(self, stats: ReadStats) -> dict[str, Any]:
        n = len(self.labels)
        # the reader's counts are cumulative per worker; the main process keeps the latest
        reader = {"broken shards": stats.broken_shards, "incomplete samples": stats.incomplete_samples}  # fmt: skip
        return {
            "images": torch.stack(self.images) if n else torch.zeros(0, 3, 1, 1),
            "meta": torch.tensor(self.meta, dtype=torch.long).reshape(n, self.fields),
            "labels": torch.tensor(self.labels, dtype=torch.long),
            "processids": self.processids,
            "dna_bins": self.dna_bins,
            "skipped": dict(self.skipped),
            "unknown_classes": dict(self.unknown_classes),
            "reader": reader,
            "worker": (get_worker_info() or _MainProcess).id,
        }


class _MainProcess:
    id = 0


@dataclass(frozen=True)
class Predictions:
    probs: np.ndarray  # [N, C] float32
    labels: np.ndarray  # [N] int64
    processids: list[str]
    dna_bins: list[str]
    skipped: dict[str, int]
    unknown_classes: dict[str, int]


def predict_split(
    models: Mapping[str, torch.nn.Module],
    shard_paths: Sequence[Path | ShardRef],
    encoding: Encoding,
    image_size: int,
    *,
    batch_size: int = 64,
    workers: int = 0,
    device: torch.device | str = "cpu",
    total: int | None = None,
    progress: bool = False,
) -> dict[str, Predictions]:
    """Each model's class probabilities for every sample of the shards whose class the
    models know; the split is read and decoded once, whatever the number of models."""
    from tqdm import tqdm

    stream = SplitStream(shard_paths, encoding, image_size, batch_size)
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    models = {name: model.to(device).eval() for name, model in models.items()}
    probs: dict[str, list[np.ndarray]] = {name: [] for name in models}
    labels, processids, dna_bins = [], [], []
    skipped: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    reader: dict[int, dict[str, int]] = {}
    show = progress and sys.stderr.isatty()
    with tqdm(total=total, unit="img", desc="evaluate", disable=not show, file=sys.stderr) as bar:
        for batch in loader:
            skipped.update(batch["skipped"])
            unknown.update(batch["unknown_classes"])
            reader[batch["worker"]] = batch["reader"]
            n = len(batch["labels"])
            bar.update(n + sum(batch["skipped"].values()) + sum(batch["unknown_classes"].values()))
            if n == 0:
                continue
            images, meta = batch["images"].to(device), batch["meta"].to(device)
            for name, model in models.items():
                with torch.inference_mode():
                    logits = model(images, meta)
                probs[name].append(torch.softmax(logits.float(), dim=1).cpu().numpy())
            labels.append(batch["labels"].numpy())
            processids += batch["processids"]
            dna_bins += batch["dna_bins"]
    for counts in reader.values():
        skipped.update({k: v for k, v in counts.items() if v})
    empty = np.zeros((0, encoding.num_classes), np.float32)
    return {
        name: Predictions(
            probs=np.concatenate(probs[name]) if probs[name] else empty,
            labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
            processids=processids,
            dna_bins=dna_bins,
            skipped=dict(sorted(skipped.items())),
            unknown_classes=dict(sorted(unknown.items())),
        )
        for name in models
    }
