"""Streaming reader: shards -> raw samples, as a short chain of picklable stages (SPEC §6).

    shard list --permute(seed, epoch, pass)--> split by rank, then by worker
      --> shard_members (open + tar stream) --> group_samples (key -> jpg + json)
      --> [stride, when there are fewer shards than readers] --> shuffle (seeded buffer)
    one such chain per pass over the shards; `passes=None` chains them forever

Each stage is a plain generator function over an iterator, as in webdataset's
`filters.py`; the member grouping does what webdataset's `tar_file_expander` +
`group_by_keys` do, but counts a broken shard once and reports which one. Nothing here
decodes: samples leave as raw bytes (`RawSample`), and the trainer decodes JPEG and JSON
with its own safe decoders (no pickle, no webdataset default decoders).

A broken shard (unreadable, truncated, not a tar) or an incomplete sample (a member
missing) is skipped and counted in `ReadStats`, or raises `CorruptDataError` when
`strict`; there is no sleep or retry on error. Everything is a pure function of
(shards, seed, epoch, rank, world_size, worker, num_workers): the same arguments give
the same samples in the same order.

Each pass has its own shard order and its own shuffle buffer (seeded by the pass index,
emptied at the end of the pass), so a place in an endless stream is (pass, samples taken
in that pass), and a reader can start there by reading that one pass up to the place
(`first_pass`, `skip`) instead of every pass before it.
"""

from __future__ import annotations

import itertools
import logging
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import zstandard

from bionas.shards.format import IMAGE_EXT, RECORD_EXT
from bionas.shards.tario import open_shard

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a damaged shard can raise while it is opened or streamed.
SHARD_ERRORS = (OSError, EOFError, tarfile.TarError, zstandard.ZstdError)
MAX_EMPTY_PASSES = 16


class CorruptDataError(ValueError):
    """A shard or sample that cannot be read, raised in strict mode."""


class RawSample(NamedTuple):
    key: str  # the processid
    jpg: bytes
    json: bytes
    shard: str  # file name of the shard it came from, for error messages
    pass_index: int = 0  # the pass over the shards it was read in


@dataclass
class ReadStats:
    """Counts of what was read and skipped; mutated by the stages of one reader."""

    broken_shards: int = 0
    incomplete_samples: int = 0
    strict: bool = False
    shards_opened: int = 0
    samples_read: int = 0  # complete samples un-tarred (whether or not yielded yet)
    bytes_read: int = 0  # tar members' contents (uncompressed), every member read

    def skip(self, what: str, where: str, error: object) -> None:
        message = f"{where}: {error}"
        if self.strict:
            raise CorruptDataError(f"{message} (remove --strict to skip and count instead)")
        if what == "shard":
            self.broken_shards += 1
        else:
            self.incomplete_samples += 1
        log.warning("skipping %s %s", what, message)


@dataclass(frozen=True)
class Slot:
    """One reader among all ranks x DataLoader workers."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if not (0 <= self.rank < self.world_size and 0 <= self.worker < self.num_workers):
            raise ValueError(f"invalid reader slot {self}")

    @property
    def index(self) -> int:
        return self.rank * self.num_workers + self.worker

    @property
    def count(self) -> int:
        return self.world_size * self.num_workers


def permute(items: Sequence[T], seed: int, epoch: int, pass_index: int = 0) -> list[T]:
    """`items` in an order fixed by (seed, epoch, pass_index); a new order every epoch."""
    rng = np.random.default_rng([seed, epoch, pass_index])
    return [items[i] for i in rng.permutation(len(items))]


def split_shards(shards: Sequence[T], slot: Slot) -> tuple[list[T], int]:
    """This slot's shards and its sample stride: by rank, then by worker.

    With fewer shards than slots some readers would get nothing, so every slot reads all
    shards and keeps every `slot.count`-th sample instead (stride > 1).
    """
    if len(shards) >= slot.count:
        by_rank = list(shards)[slot.rank :: slot.world_size]
        return by_rank[slot.worker :: slot.num_workers], 1
    return list(shards), slot.count


def shard_members(paths: Iterable[Path], stats: ReadStats) -> Iterator[tuple[str, str, bytes]]:
    """(shard name, member name, bytes) for every regular file of every shard, in tar order."""
    for path in paths:
        name = Path(path).name
        try:
            stats.shards_opened += 1
            with open_shard(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if not member.isreg():
                        continue
                    handle = tar.extractfile(member)
                    if handle is None:
                        continue
                    data = handle.read()
                    stats.bytes_read += len(data)
                    yield name, member.name, data
        except SHARD_ERRORS as err:
            stats.skip("shard", str(path), f"unreadable ({type(err).__name__}: {err})")


def group_samples(
    members: Iterable[tuple[str, str, bytes]], stats: ReadStats
) -> Iterator[RawSample]:
    """Group consecutive members by key; a sample lacking its .jpg or .json is skipped."""
    current: tuple[str, str] | None = None
    parts: dict[str, bytes] = {}

    def finish() -> Iterator[RawSample]:
        if current is None:
            return
        shard, key = current
        missing = [ext for ext in (IMAGE_EXT, RECORD_EXT) if ext not in parts]
        if missing:
            stats.skip("sample", f"{shard}: {key}", f"missing member(s) {missing}")
        else:
            stats.samples_read += 1
            yield RawSample(key, parts[IMAGE_EXT], parts[RECORD_EXT], shard)

    for shard, member, data in members:
        key, _, ext = member.rpartition("/")[2].partition(".")
        if (shard, key) != current:
            yield from finish()
            current, parts = (shard, key), {}
        parts[ext.lower()] = data
    yield from finish()


def stride(samples: Iterable[T], step: int, offset: int) -> Iterator[T]:
    """Every `step`-th sample starting at `offset`."""
    for i, sample in enumerate(samples):
        if i % step == offset:
            yield sample


def shuffle(samples: Iterable[T], buffer_size: int, rng: np.random.Generator) -> Iterator[T]:
    """Reservoir-style shuffle buffer: fill, then emit a random element per input."""
    if buffer_size <= 1:
        yield from samples
        return
    buffer: list[T] = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        i = int(rng.integers(len(buffer)))
        buffer[i], sample = sample, buffer[i]
        yield sample
    while buffer:
        i = int(rng.integers(len(buffer)))
        buffer[i], buffer[-1] = buffer[-1], buffer[i]
        yield buffer.pop()


def read_samples(
    shards: Sequence[Path],
    *,
    slot: Slot = Slot(),
    seed: int = 0,
    epoch: int = 0,
    passes: int | None = 1,
    first_pass: int = 0,
    skip: int = 0,
    shuffle_shards: bool = True,
    shuffle_buffer: int = 0,
    stats: ReadStats | None = None,
) -> Iterator[RawSample]:
    """The raw samples of one reader slot, passes `first_pass`..`passes - 1` (`passes=None`:
    forever), less the first `skip` (read, not yielded).

    Pass p reads the shards in the order `permute(shards, seed, epoch, p)` (manifest order
    when `shuffle_shards` is false) through its own shuffle buffer, seeded by (seed, epoch,
    rank, worker, p): pass p gives the same samples whichever pass the stream started at.
    """
    stats = stats if stats is not None else ReadStats()

    def one_pass(p: int) -> Iterator[RawSample]:
        ordered = permute(shards, seed, epoch, p) if shuffle_shards else list(shards)
        mine, step = split_shards(ordered, slot)
        samples: Iterator[RawSample] = group_samples(shard_members(mine, stats), stats)
        if step > 1:
            samples = stride(samples, step, slot.index)
        rng = np.random.default_rng([seed, epoch, slot.rank, slot.worker, p, 0x5EED])
        for sample in shuffle(samples, shuffle_buffer, rng):
            yield sample._replace(pass_index=p)

    def all_passes() -> Iterator[RawSample]:
        p, empty = first_pass, 0
        while passes is None or p < passes:
            empty += 1
            for sample in one_pass(p):
                empty = 0
                yield sample
            # A pass can be empty for one reader (its few shards broken); many in a row
            # means an endless stream would never yield.
            if passes is None and empty >= MAX_EMPTY_PASSES:
                raise CorruptDataError(
                    f"reader {slot} found no readable samples in {empty} passes over "
                    f"{len(shards)} shard(s)"
                )
            p += 1

    return itertools.islice(all_passes(), skip, None)
