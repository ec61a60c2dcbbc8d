"""Exact key operations on millions of ids: first occurrences, lookups, a stable argsort.

On the 5.15M ids of BIOSCAN-5M, Polars' `is_first_distinct`, a left join on the id and a
stable `arg_sort` take 1-2 s each on this project's 2-core machine. numpy sorts plain
64-bit integers with SIMD in ~0.1 s, so each operation here is one such sort of a key's
top bits packed with the row number (which makes it stable), plus a few vectorised
passes. Hashes only nominate candidates: matches are confirmed on the strings, and rows
whose hash prefix is shared are decided exactly, so the results equal the Polars ones.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from bionas.ingest.stable_hash import Buffers, string_buffers

_BLOCK = 1 << 22
SAFE_KEY_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-:+@=,"
MAX_KEY_BYTES = 90  # shards.format.is_safe_key
_UNSAFE_BYTE = bytes(0 if byte in SAFE_KEY_BYTES else 1 for byte in range(256))


def packed_sort(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ordered by the top bits of uint64 `keys`, then by row: (rows, their top bits).

    Sorts in place: `keys` is overwritten (its memory becomes the top bits).
    """
    n = len(keys)
    low = np.uint64((1 << max(1, (n - 1).bit_length())) - 1)
    keys &= ~low
    for lo in range(0, n, _BLOCK):  # row numbers block by block: no n-long temporary
        keys[lo : lo + _BLOCK] |= np.arange(lo, min(lo + _BLOCK, n), dtype=np.uint64)
    keys.sort()
    rows = (keys & low).astype(np.int32 if n < 2**31 else np.int64)
    keys &= ~low
    return rows, keys


def run_heads(sorted_values: np.ndarray) -> np.ndarray:
    """For each position, the position where its run of equal values starts."""
    n = len(sorted_values)
    heads = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    heads[1:][sorted_values[1:] == sorted_values[:-1]] = 0
    return np.maximum.accumulate(heads, out=heads)


def shared_runs(sorted_values: np.ndarray) -> np.ndarray:
    """Whether each position's run of equal values has several members."""
    if len(sorted_values) == 0:
        return np.zeros(0, dtype=bool)
    equal_next = sorted_values[1:] == sorted_values[:-1]
    return np.r_[equal_next, False] | np.r_[False, equal_next]


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """The permutation that sorts uint64 `keys` ascending, equal keys in row order."""
    rows, top = packed_sort(keys.copy())
    tied = np.flatnonzero(shared_runs(top))
    if len(tied):  # keys that share their top bits: order them by the whole key, then row
        run_rows = rows[tied]
        rows[tied] = run_rows[np.lexsort((run_rows, keys[run_rows], top[tied]))]
    return rows


def spread(keys: np.ndarray) -> np.ndarray:
    """`keys` shifted so their range fills the top bits (few ties for `stable_argsort`)."""
    if len(keys) == 0:
        return keys
    shifted = keys - keys.min()
    span = int(shifted.max())
    return shifted << np.uint64(64 - span.bit_length()) if span else shifted


def _hashes(*columns: pl.Series) -> np.ndarray:
    """Polars' hash of each value (any hash does: it only nominates candidates), end to end."""
    out = np.empty(sum(len(c) for c in columns), dtype=np.uint64)
    lo = 0
    for column in columns:
        out[lo : lo + len(column)] = column.hash(seed=0).to_numpy()
        lo += len(column)
    return out


def first_occurrence(ids: pl.Series) -> np.ndarray:
    """Per row, whether its id did not occur in an earlier row (`Series.is_first_distinct`)."""
    ids = ids.rechunk()
    rows, top = packed_sort(_hashes(ids))
    first = np.ones(len(ids), dtype=bool)
    candidates = np.sort(rows[shared_runs(top)])  # rows whose hash prefix another row shares
    if len(candidates):
        first[candidates] = ids.gather(candidates).is_first_distinct().to_numpy()
    return first


def lookup_first(ids: pl.Series, table: pl.Series) -> np.ndarray:
    """Per id, the row of its first occurrence in `table`; -1 when absent or the id is null.

    Contiguous series (`rechunk()`) make its gathers fast.
    """
    ids, table, n = ids.rechunk(), table.rechunk(), len(table)
    rows, top = packed_sort(_hashes(table, ids))
    # table rows are numbered first, so a run of equal hash prefixes starts with its
    # earliest table row if it has one: the candidate for every id in the run
    head = rows[run_heads(top)]
    del top
    is_id = np.flatnonzero(rows >= n)
    found = np.full(len(ids), -1, dtype=np.int64)
    found[rows[is_id] - n] = np.where(head[is_id] < n, head[is_id], -1)
    del rows, head, is_id
    return _confirmed(ids, table, found)


def _confirmed(ids: pl.Series, table: pl.Series, found: np.ndarray) -> np.ndarray:
    """Keep candidates whose strings are equal; look up the others exactly."""
    candidate = np.where(found >= 0, found, len(table))  # out of bounds: null
    same = (table.gather(candidate, null_on_oob=True) == ids).fill_null(False).to_numpy()
    collided = np.flatnonzero(~same & (found >= 0))
    found[collided] = -1
    wanted = ids.gather(collided).drop_nulls()
    if len(wanted):
        member = np.flatnonzero(table.is_in(wanted.implode()).fill_null(False).to_numpy())
        # reversed, so the earliest row of a repeated value is the one kept
        first = dict(zip(table.gather(member).to_list()[::-1], member[::-1].tolist(), strict=True))
        found[collided] = [first.get(v, -1) for v in ids.gather(collided).to_list()]
    found[ids.is_null().to_numpy()] = -1
    return found


def safe_keys(ids: pl.Series, buffers: Buffers | None = None) -> np.ndarray:
    """Per id, whether it can be a sample key and a file name (`shards.format.is_safe_key`).

    1 to 90 bytes, all from the safe ASCII set; null is unsafe. Checked on the Arrow bytes
    (`bytes.translate` flags the other bytes at C speed). `buffers`: `string_buffers(ids)`.
    """
    offsets, data = buffers or string_buffers(ids)
    lengths = np.diff(offsets)
    safe = (lengths >= 1) & (lengths <= MAX_KEY_BYTES) & ids.is_not_null().to_numpy()
    flags = data[offsets[0] : offsets[-1]].tobytes().translate(_UNSAFE_BYTE)
    unsafe = np.flatnonzero(np.frombuffer(flags, dtype=np.uint8)) + offsets[0]
    safe[np.searchsorted(offsets, unsafe, side="right") - 1] = False
    return safe
