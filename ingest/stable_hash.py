"""A seeded hash of each string to a number in [0, 1), stable across machines and versions.

The random split and the sample order come from it, and both are promised stable across
bionas versions, so the function is fixed: 64-bit FNV-1a over the salted UTF-8 bytes, then
the splitmix64 finaliser, top 53 bits. Polars' own hash may change between releases.

It runs over the Arrow buffers (offsets + bytes) in numpy, a block of rows at a time, so
5M ids cost a fraction of a second instead of a Python string per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa

_FNV_OFFSET, _FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3
_BLOCK_ROWS = 1 << 16  # keeps a block's hash states and bytes in cache


def salted_state(salt: str) -> int:
    """The FNV-1a state after the salt's bytes (every string's hash starts from it)."""
    state = _FNV_OFFSET
    for byte in salt.encode():
        state = ((state ^ byte) * _FNV_PRIME) % (1 << 64)
    return state


Buffers = tuple[np.ndarray, np.ndarray]  # (offsets, bytes) of strings in the Arrow layout


def string_buffers(values: pl.Series) -> Buffers:
    """(offsets, bytes) of the UTF-8 strings, nulls as empty strings; no copy where possible.

    At 5M ids this costs ~0.1 s and ~130 MB: callers with several passes compute it once.
    """
    arr = values.fill_null("").to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    _, offsets, data = arr.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return offsets, data


def hashed_lengths(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Byte lengths without trailing NUL bytes.

    The first implementation hashed numpy `bytes` values, which drop trailing NULs; the
    hash keeps doing so, or ids ending in NUL would change split between versions.
    """
    lengths = np.diff(offsets)
    if len(data) == 0:
        return lengths
    ends = offsets[1:] - 1
    while True:
        trailing = np.flatnonzero((lengths > 0) & (data[np.maximum(ends, 0)] == 0))
        if len(trailing) == 0:
            return lengths
        lengths[trailing] -= 1
        ends[trailing] -= 1


def _fnv_block(
    states: np.ndarray, starts: np.ndarray, lengths: np.ndarray, data: np.ndarray
) -> np.ndarray:
    """FNV-1a of a block of strings from each salted state: shape (salts, rows)."""
    h = np.repeat(states, len(lengths), axis=1)
    if len(lengths) == 0 or lengths.max() == 0:
        return h
    width, shortest = int(lengths.max()), int(lengths.min())
    prime = np.uint64(_FNV_PRIME)
    first = int(starts[0])
    if width == shortest and int(starts[-1]) - first == (len(lengths) - 1) * width:
        # equal lengths, back to back (ids like BIOUG10000-A01): the bytes are a matrix
        matrix = data[first : first + len(lengths) * width].reshape(len(lengths), width)
        for column in np.ascontiguousarray(matrix.T):  # one byte position after another
            h ^= column.astype(np.uint64)
            h *= prime
        return h
    last = len(data) - 1
    for j in range(width):
        byte = data[np.minimum(starts + j, last)]
        if j < shortest:
            h ^= byte
            h *= prime
        else:
            np.copyto(h, (h ^ byte) * prime, where=lengths > j)
    return h


def _unit(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, then the top 53 bits as a float in [0, 1); `h` is overwritten."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    h >>= np.uint64(11)
    units = h.astype(np.float64)
    units *= 2.0**-53  # exact: the same values as dividing by 2**53
    return units


def stable_unit_hashes(
    values: pl.Series | Buffers, salts: Sequence[str], block_rows: int = _BLOCK_ROWS
) -> list[np.ndarray]:
    """One float64 array in [0, 1) per salt: the hash of salt + each string."""
    offsets, data = string_buffers(values) if isinstance(values, pl.Series) else values
    starts = offsets[:-1]
    lengths = hashed_lengths(offsets, data)
    states = np.array([salted_state(s) for s in salts], dtype=np.uint64)[:, None]
    units = np.empty((len(salts), len(lengths)), dtype=np.float64)
    with np.errstate(over="ignore"):
        for lo in range(0, len(lengths), block_rows):
            block = slice(lo, lo + block_rows)
            units[:, block] = _unit(_fnv_block(states, starts[block], lengths[block], data))
    return list(units)
