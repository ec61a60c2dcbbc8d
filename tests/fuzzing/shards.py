"""Fuzz target 3: shard bytes (.tar and .tar.zst) through the trainer's reader.

Each case mutates one train shard of an ingested dataset (header bit flips, header
fields set to odd values with the checksum fixed, payload flips, truncation, appended
bytes, zeroed blocks, splices; for .tar.zst either the compressed frame or the tar inside
it), then reads it. The shard must be counted broken with what it lost counted (no
exception but CorruptDataError under strict), every other shard's samples must reach the
trainer's batches, and `verify_dataset` (`bionas inspect --verify`) must name it.
"""

from __future__ import annotations

import io
import random
import shutil
import tarfile
from pathlib import Path

import zstandard

from bionas.manifests.manifest import load_manifest
from bionas.manifests.verify import verify_dataset
from bionas.shards import reader
from bionas.shards.reader import CorruptDataError, ReadStats
from bionas.shards.tario import ShardRef

from .dataset import shard_refs
from .mutate import delete_chunk, duplicate_chunk, flip_bits, interesting_bytes, mutate_bytes
from .runner import Outcome, crash_detail

BLOCK = 512
SPLIT = "train"
# The reader counts a sample as given once one of its members arrived whole
# (`reader._members`), so a sample cut mid-read is counted lost: none may go uncounted.
UNCOUNTED_CUT_SAMPLE = 0
# Mutations that can add members (a repeated or spliced-in sample): the reader's loss
# estimate, the manifest count less the keys the shard gave, then counts those as given.
REPEATING = {"append", "splice", "duplicate_chunk"}
# field -> (offset, length, values a writer or an attacker might put there)
TAR_FIELDS = {
    "size": (124, 12, [b"0", b"77777777777", b"1", b"9999", b"-1", b"zz",
                       b"\x80" + b"\0" * 7 + b"\x10\0\0\0"]),  # base-256: 256 MiB
    "type": (156, 1, [b"0", b"1", b"2", b"5", b"L", b"K", b"x", b"g", b"S", b"7", b"\0", b"?"]),
    "name": (0, 100, [b"../evil.jpg", b"", b"a/b/c.json", b"noext", b".jpg", b"\xff\xfe.jpg",
                      b"K" * 99, b"k.JPG"]),
    "magic": (257, 8, [b"ustar  \0", b"\0" * 8, b"garbage!"]),
    "mode": (100, 8, [b"9999999\0", b"\0" * 8]),
    "prefix": (345, 155, [b"x" * 155, b"\xff" * 10]),
}  # fmt: skip


def tar_headers(data: bytes) -> list[int]:
    """Offsets of the tar's member headers (walked by their size fields)."""
    offsets, at = [], 0
    while at + BLOCK <= len(data) and data[at : at + BLOCK].strip(b"\0"):
        offsets.append(at)
        try:
            size = int(data[at + 124 : at + 136].rstrip(b"\0 ") or b"0", 8)
        except ValueError:
            break
        at += BLOCK + -(-size // BLOCK) * BLOCK
    return offsets


def tar_field(data: bytes, rng: random.Random) -> bytes:
    """One header field set to an odd value with the checksum fixed: past tarfile's check."""
    headers = tar_headers(data)
    if not headers:
        return flip_bits(data, rng)
    at = rng.choice(headers)
    offset, length, values = TAR_FIELDS[rng.choice(sorted(TAR_FIELDS))]
    header = bytearray(data[at : at + BLOCK])
    header[offset : offset + length] = rng.choice(values).ljust(length, b"\0")[:length]
    header[148:156] = b" " * 8  # the checksum counts its own field as spaces
    header[148:156] = b"%06o\0 " % sum(header)
    return data[:at] + bytes(header) + data[at + BLOCK :]


def header_flip(data: bytes, rng: random.Random) -> bytes:
    at = rng.choice(tar_headers(data) or [0])
    out = bytearray(data)
    out[at + rng.randrange(BLOCK)] ^= 1 << rng.randrange(8)
    return bytes(out)


def zero_block(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(max(len(data) // BLOCK, 1)) * BLOCK
    return data[:at] + bytes(len(data[at : at + BLOCK])) + data[at + BLOCK :]


def cut(data: bytes, rng: random.Random) -> bytes:
    """Truncated anywhere, at a block boundary, or at a member boundary."""
    where = rng.choice(["any", "block", "member"])
    if where == "member" and tar_headers(data):
        return data[: rng.choice(tar_headers(data))]
    at = rng.randrange(len(data))
    return data[: at - at % BLOCK if where == "block" else at]


def append(data: bytes, rng: random.Random) -> bytes:
    tail = rng.choice([bytes(BLOCK * rng.randint(1, 4)), b"appended", data,
                       rng.randbytes(rng.randint(1, 2000))])  # fmt: skip
    return data + tail


TAR_MUTATIONS = {"header_flip": header_flip, "tar_field": tar_field, "payload_flip": flip_bits,
                 "truncate": cut, "append": append, "zero_block": zero_block,
                 "interesting_bytes": interesting_bytes, "duplicate_chunk": duplicate_chunk,
                 "delete_chunk": delete_chunk}  # fmt: skip


def mutate_shard(data: bytes, zstd: bool, rng: random.Random, other: bytes) -> tuple[bytes, list]:
    """A mutated shard file (`other`: another shard to splice in): tar-level, re-compressed
    for .tar.zst, or (.tar.zst, 40%) the compressed frame itself; never equal to `data`."""
    if zstd and rng.random() < 0.4:
        mutated, names = mutate_bytes(data, rng, other)
        names = ["zstd:" + name for name in names]
    else:
        unpack = zstandard.ZstdDecompressor().decompress if zstd else bytes
        mutated, names = mutate_bytes(unpack(data), rng, unpack(other), TAR_MUTATIONS)
        if zstd:
            mutated = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(mutated)
    if mutated == data:
        mutated, names = mutated + b"\0", [*names, "append"]
    return mutated, names


def _tar_keys(data: bytes, zstd: bool) -> set[str]:
    if zstd:
        data = zstandard.ZstdDecompressor().decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {name.partition(".")[0] for name in tar.getnames()}


def _raises_corrupt_data(shard: ShardRef) -> bool:
    try:
        for _ in reader.read_samples([shard], stats=ReadStats(strict=True)):
            pass
    except CorruptDataError:
        return True
    return False


class Shards:
    """Mutated shards through the trainer's checked reader, its batches and verify."""

    def __init__(self, workdir: Path) -> None:
        from bionas.trainer.encoding import load_encoding  # torch: only this target needs it

        self.roots, self.pristine, self.keys, self.encoding = {}, {}, {}, {}
        for name in ("ds-none", "ds-zstd"):
            root = self.roots[name] = workdir / "shards-target" / name
            if not root.exists():
                shutil.copytree(workdir / name, root)
            base = shard_refs(workdir / name, SPLIT)
            self.pristine[name] = [ref.path.read_bytes() for ref in base]
            for ref, data in zip(base, self.pristine[name], strict=True):
                self.keys[name, ref.name] = _tar_keys(data, name == "ds-zstd")
            self.encoding[name] = load_encoding(load_manifest(root), "order", ["dna_bin"])

    def mutate(self, seed: int, index: int) -> tuple[Path, ShardRef, list[str]]:
        """Restore every shard of a dataset, then mutate one of its train shards in place:
        (dataset, the shard as the manifest describes it, [dataset name, mutations])."""
        rng = random.Random(f"shards:{seed}:{index}")
        name = rng.choice(sorted(self.roots))
        refs = shard_refs(self.roots[name], SPLIT)
        for ref, data in zip(refs, self.pristine[name], strict=True):
            ref.path.write_bytes(data)
        victim, other = rng.sample(range(len(refs)), 2)
        data, names = mutate_shard(self.pristine[name][victim], name == "ds-zstd", rng,
                                   self.pristine[name][other])  # fmt: skip
        refs[victim].path.write_bytes(data)
        return self.roots[name], refs[victim], [name, *names]

    def run(self, seed: int, index: int) -> Outcome:
        root, victim, notes = self.mutate(seed, index)
        where = f"{victim.name} of {'+'.join(notes)}"
        try:
            stats = ReadStats()
            got = {sample.key for sample in reader.read_samples([victim], stats=stats)}
            strict = _raises_corrupt_data(victim)
            batch_keys, state = self.train_batches(root, notes[0])
            verified = [str(problem) for problem in verify_dataset(load_manifest(root))]
        except Exception as exc:
            return Outcome(index, "crash", detail=f"{where}: {crash_detail(exc)}")
        expected = self.keys[notes[0], victim.name]
        untouched = set().union(*(keys for (name, shard), keys in self.keys.items()
                                  if name == notes[0] and shard != victim.name))  # fmt: skip
        missing, counted = len(expected - got), stats.lost_samples + stats.incomplete_samples
        named = any(victim.name in problem for problem in verified)
        uncounted = max(missing - counted, 0)
        repeating = any(note.removeprefix("zstd:") in REPEATING for note in notes)
        tally = {"shards mutated": 1, "counted broken": stats.broken_shards,
                 "samples arrived": len(got & expected), "samples counted lost": counted,
                 "samples lost uncounted": uncounted * (not repeating),
                 "samples lost uncounted, members repeated": uncounted * repeating,
                 "undecodable samples counted": state.get("corrupt", 0),
                 "strict raised": int(strict), "verify named it": int(named),
                 "untouched samples lost": len(untouched - batch_keys),
                 "val stream counts missed": int(state.get("broken_shards", 0) < 1)}  # fmt: skip
        problems = [
            (stats.broken_shards != 1, f"counted {stats.broken_shards} broken shards, not 1"),
            (uncounted > UNCOUNTED_CUT_SAMPLE and not repeating, f"{missing} samples missing, "
             f"{stats.lost_samples} counted lost + {stats.incomplete_samples} incomplete"),
            (not strict, "no CorruptDataError under strict"),
            (bool(untouched - batch_keys), f"{len(untouched - batch_keys)} samples of "
             "untouched shards missing from the trainer's batches"),
            (not named, f"verify_dataset did not name it: {verified}"),
            (state.get("broken_shards", 0) < 1, "the validation stream's batches do not "
             "count the broken shard"),
        ]  # fmt: skip
        problem = "; ".join(text for broken, text in problems if broken)
        return Outcome(index, "failure" if problem else "ok", tally, f"{where}: {problem}")

    def train_batches(self, root: Path, name: str) -> tuple[set[str], dict[str, int]]:
        """The keys of one pass of the trainer's batch stream over the split, and the skip
        counts of its last batch."""
        from bionas.trainer.data import BatchStream, StreamSpec

        refs = tuple(shard_refs(root, SPLIT))
        spec = StreamSpec(refs, batch_size=16, image_size=32, passes=1, shuffle=False)
        keys, state = set(), {}
        for batch in BatchStream(spec, self.encoding[name]):
            keys.update(batch.keys)
            state = batch.state.to_dict()
        return keys, state
