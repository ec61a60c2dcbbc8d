"""The numpy key operations of the plan give exactly what the plain Polars ones give."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from bionas.ingest import keys
from bionas.ingest.keys import first_occurrence, lookup_first, safe_keys, spread, stable_argsort
from bionas.shards.format import is_safe_key


def random_ids(rng: np.random.Generator, n: int, distinct: int) -> pl.Series:
    pool = [f"BIOUG{i:05d}-{'é' if i % 7 == 0 else 'A'}{i % 13}" for i in range(distinct)]
    values = [pool[i] if i >= 0 else None for i in rng.integers(-1, distinct, size=n)]
    return pl.Series("processid", values, dtype=pl.String)


@pytest.fixture(params=["real hash", "colliding hash"])
def hash_kind(request, monkeypatch):
    """Also run every check with a hash of 2 values, so collisions are everywhere."""
    if request.param == "colliding hash":
        monkeypatch.setattr(
            keys,
            "_hashes",
            lambda *cols: np.concatenate(
                [c.str.len_bytes().fill_null(0).to_numpy() % 2 for c in cols]
            ).astype(np.uint64),
        )
    return request.param


def test_first_occurrence_is_is_first_distinct(hash_kind):
    rng = np.random.default_rng(1)
    for n, distinct in [(0, 1), (1, 1), (50, 10), (2000, 1500), (2000, 3)]:
        ids = random_ids(rng, n, distinct)
        expected = ids.is_first_distinct().to_numpy()
        np.testing.assert_array_equal(first_occurrence(ids), expected)


def reference_lookup(ids: pl.Series, table: pl.Series) -> np.ndarray:
    first = table.to_frame("k").with_row_index("row").filter(pl.col("k").is_first_distinct())
    joined = ids.to_frame("k").join(first, on="k", how="left", maintain_order="left")
    return joined["row"].fill_null(-1).to_numpy().astype(np.int64)


def test_lookup_first_is_a_left_join_on_the_first_table_row(hash_kind):
    rng = np.random.default_rng(2)
    for n, m, distinct in [(0, 5, 5), (5, 0, 5), (300, 200, 150), (2000, 2500, 1800), (50, 50, 2)]:
        ids, table = random_ids(rng, n, distinct), random_ids(rng, m, distinct)
        np.testing.assert_array_equal(lookup_first(ids, table), reference_lookup(ids, table))


def test_stable_argsort_is_numpy_stable_argsort():
    rng = np.random.default_rng(3)
    cases = [
        rng.integers(0, 2**64, size=5000, dtype=np.uint64),
        rng.integers(0, 5, size=5000).astype(np.uint64),  # many equal keys
        rng.integers(0, 2**12, size=5000).astype(np.uint64),  # equal top bits, different keys
        np.zeros(0, dtype=np.uint64),
        np.array([7], dtype=np.uint64),
    ]
    for keys_ in cases:
        expected = np.argsort(keys_, kind="stable")
        np.testing.assert_array_equal(stable_argsort(keys_), expected)
        np.testing.assert_array_equal(stable_argsort(spread(keys_)), expected)


def test_spread_floats_keep_their_order():
    rng = np.random.default_rng(4)
    values = np.r_[1.0 + rng.random(3000), 2.0 + rng.random(3000), 1.5, 1.5]
    order = stable_argsort(spread(values.view(np.uint64)))
    np.testing.assert_array_equal(order, np.argsort(values, kind="stable"))


def test_safe_keys_is_is_safe_key():
    ids = ["BIOUG1-A01", "", None, "a/b", "a.b", "..", " x", "x ", "é", "x" * 90, "x" * 91,
           "A:b+c@d=e,f_g-h", "tab\there", "new\nline", "日本"]  # fmt: skip
    expected = [v is not None and is_safe_key(v) for v in ids]
    assert safe_keys(pl.Series(ids, dtype=pl.String)).tolist() == expected
    sliced = pl.Series(ids, dtype=pl.String).slice(3, 9)
    assert safe_keys(sliced).tolist() == expected[3:12]
