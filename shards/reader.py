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

A broken shard or an incomplete sample (a member missing) is skipped and counted in
`ReadStats`, or raises `CorruptDataError` when `strict`; there is no sleep or retry on
error. Everything is a pure function of (shards, seed, epoch, rank, world_size, worker,
num_workers) and the shards' bytes: the same arguments give the same samples in the same
order.

A shard given as a `ShardRef` (its manifest record: samples, bytes, sha256) is checked
while it streams: every byte of the file is counted and hashed as it is read, the file is
read to its end after the tar reader stops, and at the end of the shard its size, sha256
and sample count must be the manifest's. This catches what the tar stream alone cannot:
`tarfile` takes a damaged header after the first member, or a cut at a member boundary,
for the end of the archive, and would yield fewer samples without a word. A shard is
broken when it cannot be opened or un-tarred, holds a member over its cap
(`bionas.shards.format.MEMBER_CAPS`; never read), or does not match its record. Reading
stops at the first error; the samples it had already yielded stay yielded (a stream cannot
take them back; a mismatch is only known at the end of the shard), so "counted" means:
`broken_shards` + 1, and `lost_samples` + (manifest count - samples the shard gave, at
least 0), an estimate of what training did not see. With `strict`, the mismatch raises
instead, after those samples. A plain path is read unchecked.

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

from bionas.shards.format import IMAGE_EXT, MEMBER_CAPS, RECORD_EXT, member_key
from bionas.shards.tario import ShardRef, as_ref, open_shard

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_EMPTY_PASSES = 16


class CorruptDataError(ValueError):
    """A shard or sample that cannot be read, raised in strict mode."""


class OversizedMember(ValueError):
    """A tar member bigger than its cap: not read, and the shard is broken."""


# What a damaged shard can raise while it is opened or streamed.
SHARD_ERRORS = (OSError, EOFError, tarfile.TarError, zstandard.ZstdError, OversizedMember)


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
    lost_samples: int = 0  # what broken shards held beyond what they gave (manifest counts)
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

    def broken(self, ref: ShardRef, problem: str, gave: int, counted: bool = True) -> None:
        """A broken shard that gave `gave` samples (`counted`: this reader counts it)."""
        if not (counted or self.strict):
            return
        lost = max(ref.samples - gave, 0) if ref.samples is not None else 0
        self.skip("shard", str(ref), problem + (f"; ~{lost} sample(s) lost" if lost else ""))
        self.lost_samples += lost


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


def shard_members(
    shards: Iterable[Path | ShardRef], stats: ReadStats, share: tuple[int, int] = (1, 0)
) -> Iterator[tuple[str, str, bytes]]:
    """(shard name, member name, bytes) for every .jpg/.json member of every shard, in tar
    order, each shard checked against its ShardRef at its end (see the module docstring).

    `share=(step, offset)`: when readers stride over the same shards, a broken shard at
    position i is counted only by the reader with i % step == offset (so the counts of all
    readers add up); every reader raises under strict.
    """
    for position, shard in enumerate(shards):
        ref, keys = as_ref(shard), _KeyCount()
        try:
            stats.shards_opened += 1
            with open_shard(ref) as stream:
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    yield from _members(ref.name, tar, stats, keys)
                problem = _mismatch(ref, *stream.finish(), keys.count)
        except SHARD_ERRORS as err:
            problem = f"unreadable ({type(err).__name__}: {err})"
        if problem:
            stats.broken(ref, problem, keys.count, position % share[0] == share[1])


class _KeyCount:
    """Distinct keys among a shard's members so far: the samples it gave, complete or not."""

    def __init__(self) -> None:
        self.count, self.last = 0, None

    def add(self, key: str) -> None:
        if key != self.last:
            self.count, self.last = self.count + 1, key


def _members(
    shard: str, tar: tarfile.TarFile, stats: ReadStats, keys: _KeyCount
) -> Iterator[tuple[str, str, bytes]]:
    for member in tar:
        key, ext = member_key(member.name)
        cap = MEMBER_CAPS.get(ext)
        if cap is None or not member.isreg():
            continue  # not part of a sample: skipped over unread
        if member.size > cap:
            raise OversizedMember(f"member {member.name} has {member.size} bytes, cap {cap}")
        handle = tar.extractfile(member)
        if handle is None:
            continue
        data = handle.read()
        keys.add(key)  # only once a member arrived whole: a sample cut at its first is lost
        stats.bytes_read += len(data)
        yield shard, member.name, data


def _mismatch(ref: ShardRef, size: int, sha256: str | None, samples: int) -> str | None:
    """How the streamed shard differs from its manifest record; None when it does not."""
    if ref.size is not None and size != ref.size:
        return f"{size} bytes, manifest.json says {ref.size} (the file changed)"
    if ref.sha256 is not None and sha256 != ref.sha256:
        return "sha256 differs from manifest.json (the file changed)"
    if ref.samples is not None and samples < ref.samples:
        # tarfile reads a damaged header, or a cut at a member boundary, as the end
        return f"the tar stream ended after {samples} of its {ref.samples} samples"
    if ref.samples is not None and samples != ref.samples:
        return f"{samples} samples, manifest.json says {ref.samples}"
    return None


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
        key, ext = member_key(member)
        if (shard, key) != current:
            yield from finish()
            current, parts = (shard, key), {}
        parts[ext] = data
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
    shards: Sequence[Path | ShardRef],
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
    ShardRefs are checked against their manifest records as they stream; paths are not.
    """
    stats = stats if stats is not None else ReadStats()

    def one_pass(p: int) -> Iterator[RawSample]:
        ordered = permute(shards, seed, epoch, p) if shuffle_shards else list(shards)
        mine, step = split_shards(ordered, slot)
        members = shard_members(mine, stats, share=(step, slot.index % step))
        samples: Iterator[RawSample] = group_samples(members, stats)
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
