"""The byte mutator: bit flips, interesting bytes, truncation, chunk duplication and
deletion (PNG chunks and JPEG segments where the bytes parse), declared-size overwrites,
splices of two inputs. Every choice comes from the `random.Random` passed in."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable

INTERESTING_BYTES = (0x00, 0xFF, 0x7F, 0x80)
INTERESTING_16 = (0, 1, 2, 15, 16, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF)
INTERESTING_32 = (*INTERESTING_16, 65_500, 65_501, 100_000, 0x7FFF_FFFF, 0x8000_0000,
                  0xFFFF_FFFF)  # fmt: skip
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_FRAMES = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn; C4/C8/CC are not frames

Mutation = Callable[[bytes, random.Random], bytes]


def png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each whole PNG chunk after the signature, as far as they parse."""
    spans, at = [], len(PNG_SIGNATURE)
    while at + 12 <= len(data):
        end = at + 12 + struct.unpack(">I", data[at : at + 4])[0]
        if end > len(data):
            break
        spans.append((at, end))
        at = end
    return spans


def jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each JPEG marker segment up to the scan; the scan data is one span."""
    spans, at = [], 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        if data[at + 1] == 0xDA:  # start of scan: the entropy-coded data follows
            spans.append((at, len(data)))
            break
        end = at + 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
        spans.append((at, min(end, len(data))))
        at = end
    return spans


def structure(data: bytes) -> list[tuple[int, int]]:
    if data.startswith(PNG_SIGNATURE):
        return png_chunks(data)
    return jpeg_segments(data) if data.startswith(b"\xff\xd8") else []


def fix_png_crcs(data: bytes) -> bytes:
    """Every whole chunk's CRC recomputed, so that a mutation reaches the decoder."""
    out = bytearray(data)
    for start, end in png_chunks(data):
        out[end - 4 : end] = struct.pack(">I", zlib.crc32(out[start + 4 : end - 4]))
    return bytes(out)


def _span(data: bytes, rng: random.Random) -> tuple[int, int]:
    """A structural chunk when the format parses, else a random byte range."""
    spans = structure(data)
    if spans and rng.random() < 0.7:
        return rng.choice(spans)
    start = rng.randrange(len(data))
    return start, min(len(data), start + rng.randint(1, 512))


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def interesting_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] = rng.choice(INTERESTING_BYTES)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    cut = rng.randrange(len(data)) if rng.random() < 0.5 else len(data) - rng.randint(1, 64)
    return data[: max(cut, 0)]


def duplicate_chunk(data: bytes, rng: random.Random) -> bytes:
    start, end = _span(data, rng)
    at = end if rng.random() < 0.5 else rng.randrange(len(data) + 1)
    return data[:at] + data[start:end] + data[at:]


def delete_chunk(data: bytes, rng: random.Random) -> bytes:
    start, end = _span(data, rng)
    return data[:start] + data[end:]


def header_size(data: bytes, rng: random.Random) -> bytes:
    """The declared width/height (PNG IHDR, CRC fixed; JPEG SOFn) or a JPEG segment length."""
    out = bytearray(data)
    if data.startswith(PNG_SIGNATURE) and len(data) >= 33:
        for at in rng.sample((16, 20), rng.randint(1, 2)):  # IHDR width, height
            out[at : at + 4] = struct.pack(">I", rng.choice(INTERESTING_32))
        out[29:33] = struct.pack(">I", zlib.crc32(out[12:29]))
        return bytes(out)
    segments = jpeg_segments(data)
    frames = [s for s, _ in segments if data[s + 1] in JPEG_FRAMES and s + 9 <= len(data)]
    if frames and rng.random() < 0.7:
        at = rng.choice(frames) + 5 + 2 * rng.randrange(2)  # height, then width
    elif segments:
        at = rng.choice(segments)[0] + 2  # the segment's length
    else:
        return interesting_bytes(data, rng)
    out[at : at + 2] = struct.pack(">H", rng.choice(INTERESTING_16))[: len(out) - at]
    return bytes(out)


def splice(data: bytes, rng: random.Random, other: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]


BYTE_MUTATIONS: dict[str, Mutation] = {
    "flip_bits": flip_bits,
    "interesting_bytes": interesting_bytes,
    "truncate": truncate,
    "duplicate_chunk": duplicate_chunk,
    "delete_chunk": delete_chunk,
    "header_size": header_size,
}


def mutate_bytes(
    data: bytes, rng: random.Random, other: bytes, mutations: dict[str, Mutation] = BYTE_MUTATIONS
) -> tuple[bytes, list[str]]:
    """1-3 stacked mutations of `data` (`other`: a second input to splice in) and their
    names; a PNG gets its CRCs fixed half the time, to get past the CRC check."""
    names = []
    for _ in range(rng.randint(1, 3)):
        if not data:
            break
        name = rng.choice([*mutations, "splice"])
        data = splice(data, rng, other) if name == "splice" else mutations[name](data, rng)
        names.append(name)
    if data.startswith(PNG_SIGNATURE) and rng.random() < 0.5:
        data, names = fix_png_crcs(data), [*names, "fix_png_crcs"]
    return data, names
