"""Training data: decode, transform and batch the raw samples of `bionas.shards.reader`.

Decoding is our own and safe: the record with `decode_record` (JSON), the image with PIL.
Strings become indices through the dataset's vocabularies: the label is
`target_vocab.lookup(value) - 1` (classes are the target vocabulary without `<unk>`; a
sample without a known class is skipped and counted), each metadata field its vocabulary
index (0 = unknown).

`BatchStream` yields whole batches from each DataLoader worker, and a known number of
them: every epoch gives exactly `num_batches` batches per rank (a worker whose shards run
out wraps into the next shard permutation), so every rank of a distributed run takes the
same number of steps. Batch i of an epoch always comes from logical worker i % W, and
every batch carries its worker's position in the raw stream: the pass over its shards and
the raw samples consumed in that pass (`WorkerState`). A run resumed at batch k rebuilds
the same stream by starting each worker's reader at its pass and skipping the samples
consumed there without decoding them (see `StreamPosition`): the cost of a resume is at
most one pass, however many passes an endless stream (the held-out θ stream, which lives
for the whole run) had taken.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bionas.errors import BionasError
from bionas.manifests.manifest import Manifest
from bionas.shards.format import IMAGE_FORMATS, decode_record
from bionas.shards.reader import CorruptDataError, RawSample, ReadStats, Slot, read_samples
from bionas.shards.tario import ShardRef
from bionas.trainer.batch_decode import EncodedImages
from bionas.trainer.config import TrainConfig
from bionas.trainer.encoding import Encoding
from bionas.trainer.transforms import DECODE_ERRORS, decode_image, normalize_images

log = logging.getLogger(__name__)


# Version 1 (no "version" key): one cursor per worker over the whole endless stream, whose
# shuffle buffer ran across passes; resuming it replayed every pass (only a main stream's
# position, within one epoch, still resumes: from pass 0, skipping `cursor` samples).
POSITION_VERSION = 2
SKIP_REASONS = ("corrupt", "unknown_class", "broken_shards", "incomplete", "lost_samples")


@dataclass
class WorkerState:
    """Where a worker is in its raw stream, and what it skipped so far."""

    pass_index: int = 0  # the pass over its shards it is in
    cursor: int = 0  # raw samples consumed in that pass (decoded or skipped)
    corrupt: int = 0  # samples whose JPEG or JSON failed to decode
    unknown_class: int = 0  # samples with no known target class
    broken_shards: int = 0  # unreadable, or not what manifest.json says (`ShardRef`)
    incomplete: int = 0  # samples missing a member
    lost_samples: int = 0  # broken shards' manifest counts less the samples they gave
    # the reader's (broken_shards, incomplete, lost_samples) when this pass began: a resume
    # replays the pass from there, so what the replay finds is counted once, also a shard
    # that broke since the interruption
    pass_base: tuple[int, int, int] = (0, 0, 0)

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "pass_base": list(self.pass_base)}

    def consume(self, sample: RawSample, stats: ReadStats) -> None:
        """Count one raw sample; a sample of a new pass starts that pass's count (the
        reader has checked every shard of the pass before: its counts are the base)."""
        if sample.pass_index != self.pass_index:
            self.pass_index, self.cursor = sample.pass_index, 0
            self.pass_base = (stats.broken_shards, stats.incomplete_samples, stats.lost_samples)
        self.cursor += 1


@dataclass
class StreamPosition:
    """How far the main process has consumed a BatchStream: enough to resume it exactly."""

    batches: int = 0
    workers: dict[int, WorkerState] = field(default_factory=dict)

    @staticmethod
    def version_of(data: Mapping[str, Any]) -> int:
        """The layout of a stored position (`POSITION_VERSION`; 1 before passes)."""
        return int(data.get("version", 1))

    def advance(self, batch: Batch) -> None:
        self.batches += 1
        self.workers[batch.worker] = batch.state

    def skipped(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for state in self.workers.values():
            for key in SKIP_REASONS:
                totals[key] = totals.get(key, 0) + getattr(state, key)
        return totals

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": POSITION_VERSION,
            "batches": self.batches,
            "workers": {str(w): s.to_dict() for w, s in self.workers.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StreamPosition:
        workers = {
            int(w): WorkerState(**{**s, "pass_base": tuple(s.get("pass_base", (0, 0, 0)))})
            for w, s in data["workers"].items()
        }
        return cls(int(data["batches"]), workers)


@dataclass(frozen=True)
class Batch:
    # [B, 3, S, S]: normalised float, or uint8 (`StreamSpec.uint8`); or JPEGs (`encoded`)
    images: Tensor | EncodedImages
    meta: Tensor  # long [B, F]
    labels: Tensor  # long [B]
    keys: tuple[str, ...]  # processids
    worker: int  # logical worker that produced it
    state: WorkerState  # that worker's state after it

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        return replace(
            self,
            images=self.images.pin_memory(),
            meta=self.meta.pin_memory(),
            labels=self.labels.pin_memory(),
        )


@dataclass(frozen=True)
class StreamSpec:
    """What one rank reads: `num_batches=None` reads until the data ends (`passes=1`,
    last batch may be short) or forever (`passes=None`)."""

    shards: tuple[Path | ShardRef, ...]  # ShardRefs are checked while they stream
    batch_size: int
    image_size: int = 224
    seed: int = 0
    epoch: int = 0
    rank: int = 0
    world_size: int = 1
    num_batches: int | None = None
    passes: int | None = None
    shuffle: bool = True
    shuffle_buffer: int = 1000
    meta_dropout: float = 0.0  # train only: each metadata index -> 0 with this probability
    # ship uint8 pixels, normalised on the device after the copy (CUDA: a quarter of the
    # bytes through queues, pinned memory and PCIe); else normalise in the workers,
    # where it runs in parallel (on CPU the main process would do it alone)
    uint8: bool = False
    # ship the JPEG bytes undecoded (`--decode gpu`: `bionas.trainer.batch_decode`)
    encoded: bool = False
    strict: bool = False


def batches_before(n: int, worker: int, num_workers: int) -> int:
    """How many of batches 0..n-1 come from `worker` (batch i is worker i % num_workers)."""
    return (n - worker + num_workers - 1) // num_workers


class BatchStream(IterableDataset):
    """Batches of (images, meta, labels) for one rank; see the module docstring."""

    def __init__(
        self, spec: StreamSpec, encoding: Encoding, start: StreamPosition | None = None
    ) -> None:
        super().__init__()
        self.spec = spec
        self.encoding = encoding
        self.start = start or StreamPosition()

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        loader_worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        # Rotate so that the first batch after a resume comes from the worker whose turn
        # it was: batch i of the epoch is always logical worker i % num_workers.
        logical = (loader_worker + self.start.batches) % num_workers
        spec = self.spec
        done = batches_before(self.start.batches, logical, num_workers)
        todo = None
        if spec.num_batches is not None:
            todo = batches_before(spec.num_batches, logical, num_workers) - done
        state = replace(self.start.workers.get(logical, WorkerState()))
        stats = ReadStats(strict=spec.strict)
        raw = read_samples(
            spec.shards,
            slot=Slot(spec.rank, spec.world_size, logical, num_workers),
            seed=spec.seed,
            epoch=spec.epoch,
            passes=spec.passes,
            first_pass=state.pass_index,  # resume: at this worker's pass
            shuffle_shards=spec.shuffle,
            shuffle_buffer=spec.shuffle_buffer if spec.shuffle else 0,
            stats=stats,
        )
        # Resume: read again, not decoding, what this worker consumed in its pass, counting
        # on from the counts the pass began with (earlier passes, other epochs of a
        # held-out θ stream): unchanged shards give the saved counts again, and a shard that
        # broke since the interruption is counted, as a first read would count it.
        stats.broken_shards, stats.incomplete_samples, stats.lost_samples = state.pass_base
        next(itertools.islice(raw, state.cursor, state.cursor), None)
        # A one-read stream (validation) reads one batch ahead, so that the batch that
        # ends the data carries the counts of what broke after its last sample (a shard
        # found short at its end when the samples filled the last batch exactly).
        read_ahead = todo is None and spec.passes is not None
        ahead: list[tuple] | None = None
        for index in itertools.count(done):
            if todo is not None and index - done >= todo:
                return
            items = self._collect(raw, state, stats) if ahead is None else ahead
            if not items:
                return
            full = len(items) == spec.batch_size
            ahead = self._collect(raw, state, stats) if read_ahead and full else None
            state.broken_shards, state.incomplete = stats.broken_shards, stats.incomplete_samples
            state.lost_samples = stats.lost_samples
            yield self._batch(items, logical, index, replace(state))
            if not full:
                return

    def _collect(
        self, raw: Iterator[RawSample], state: WorkerState, stats: ReadStats
    ) -> list[tuple]:
        items = []
        for sample in raw:
            state.consume(sample, stats)
            try:
                record = decode_record(sample.json)
                label = self.encoding.label(record)
                if label < 0:
                    state.unknown_class += 1
                    continue
                image = self._image(sample.jpg)
            except DECODE_ERRORS as err:
                if self.spec.strict:
                    raise CorruptDataError(
                        f"{sample.shard}: sample {sample.key}: {err} "
                        "(remove --strict to skip and count instead)"
                    ) from err
                state.corrupt += 1
                continue
            items.append((image, self.encoding.meta(record), label, sample.key))
            if len(items) == self.spec.batch_size:
                break
        return items

    def _image(self, jpg: bytes) -> Tensor | bytes:
        if self.spec.encoded:
            return jpg  # the training process decodes it (`batch_decode.decode_batches`)
        image = decode_image(jpg, self.spec.image_size, IMAGE_FORMATS)
        return image if self.spec.uint8 else normalize_images(image)

    def _batch(self, items: list[tuple], logical: int, index: int, state: WorkerState) -> Batch:
        spec = self.spec
        meta = torch.tensor([m for _, m, _, _ in items], dtype=torch.long).view(len(items), -1)
        if spec.meta_dropout > 0 and meta.numel():
            rng = np.random.default_rng([spec.seed, spec.epoch, spec.rank, logical, index, 0xD20])
            drop = torch.from_numpy(rng.random(tuple(meta.shape)) < spec.meta_dropout)
            meta = meta.masked_fill(drop, 0)
        images = [image for image, _, _, _ in items]
        return Batch(
            images=EncodedImages.of(images) if spec.encoded else torch.stack(images),
            meta=meta,
            labels=torch.tensor([label for _, _, label, _ in items], dtype=torch.long),
            keys=tuple(key for _, _, _, key in items),
            worker=logical,
            state=state,
        )


def batches_per_epoch(num_samples: int, batch_size: int, world_size: int = 1) -> int:
    """Full batches per rank in one pass over `num_samples` (the rest is dropped)."""
    count = (num_samples // world_size) // batch_size
    if count < 1:
        raise BionasError(
            f"the training data has {num_samples} samples, fewer than one batch of "
            f"{batch_size} per rank ({world_size} rank(s)); lower --batch-size"
        )
    return count


def make_loader(dataset: BatchStream, workers: int, *, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over whole batches; it never touches the global torch RNG (its own
    generator), so creating one does not change the training randomness."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(dataset.spec.seed),
        prefetch_factor=2 if workers else None,
    )


def train_spec(
    config: TrainConfig,
    shards: Sequence[Path | ShardRef],
    batch_size: int,
    epoch: int,
    num_batches: int | None,
) -> StreamSpec:
    """One epoch of w steps over `shards` (all of train, or the shards outside the held-out
    slice); it wraps into the next shard permutation rather than run short."""
    return StreamSpec(
        shards=tuple(shards),
        batch_size=batch_size,
        image_size=config.image_size,
        seed=config.seed,
        epoch=epoch,
        num_batches=num_batches,
        passes=None,
        shuffle_buffer=config.shuffle_buffer,
        meta_dropout=config.meta_dropout,
        strict=config.strict,
    )


def arch_spec(
    config: TrainConfig, shards: Sequence[Path | ShardRef], batch_size: int
) -> StreamSpec:
    """The held-out train shards for θ steps, endless (one persistent iterator for the
    run: pass p of it is pass p of "epoch 0")."""
    return train_spec(config, shards, batch_size, 0, None)


def val_spec(config: TrainConfig, shards: Sequence[Path | ShardRef], batch_size: int) -> StreamSpec:
    """Every validation sample once, in manifest order; the last batch may be short."""
    return StreamSpec(
        shards=tuple(shards),
        batch_size=batch_size,
        image_size=config.image_size,
        seed=config.seed,
        passes=1,
        shuffle=False,
        strict=config.strict,
    )


def epoch_length(
    main_samples: int,
    batch_size: int,
    heldout: bool,
    searching: bool,
    world_size: int = 1,
) -> tuple[int, int]:
    """(steps in an epoch, batches it takes from the main stream), the same on every rank:
    `batch_size` is per rank, and each rank's share is 1/world_size of `main_samples`, the
    manifest count of the shards the main stream reads.

    Interleaved: one pass over train, θ steps included. Held out (`main_samples` is then
    the w shards' count): one pass over them, with a θ step after each w step while
    searching.
    """
    count = batches_per_epoch(main_samples, batch_size, world_size)
    return (2 * count if heldout and searching else count), count


def check_shards_exist(manifest: Manifest, split: str, strict: bool = False) -> list[ShardRef]:
    """The split's shards with their manifest records (the reader checks each one's bytes,
    sha256 and samples as it streams); a clear error when the split or a shard is missing.

    A shard whose size differs from the manifest's is reported before any reading (an
    error with `strict`, else a warning, and the reader counts it broken when it gets
    there).
    """
    if split not in manifest.splits:
        raise BionasError(
            f"{manifest.root} has no {split!r} split (splits: {', '.join(manifest.splits)})"
        )
    paths = manifest.shard_paths(split)
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise BionasError(
            f"{len(missing)} shard(s) of split {split!r} listed in manifest.json are missing, "
            f"e.g. {missing[0]}; re-run `bionas ingest` to rewrite them"
        )
    resized = [
        (p, p.stat().st_size, r["bytes"])
        for p, r in zip(paths, manifest.shards(split), strict=True)
        if p.stat().st_size != r["bytes"]
    ]
    if resized:
        path, size, expected = resized[0]
        message = (
            f"{len(resized)} shard(s) of split {split!r} differ in size from manifest.json, "
            f"e.g. {path} has {size} bytes, not {expected}; check with `bionas inspect --verify` "
            "and re-run the same `bionas ingest` command to rewrite them"
        )
        if strict:
            raise BionasError(message)
        log.warning("%s (reading what is there)", message)
    return shard_refs(manifest, split)


def shard_refs(manifest: Manifest, split: str) -> list[ShardRef]:
    """The split's shards in manifest order, each with what its record says it holds."""
    return [
        ShardRef(path, samples=int(r["samples"]), size=int(r["bytes"]), sha256=r["sha256"])
        for path, r in zip(manifest.shard_paths(split), manifest.shards(split), strict=True)
    ]
