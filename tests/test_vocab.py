import json

import polars as pl
import pytest

from bionas.ingest.vocabulary import count_columns
from bionas.manifests.vocab import OTHER, UNKNOWN, build_vocab, load_vocab, write_vocab


def test_target_class_with_499_records_folds_into_other_and_500_stays():
    vocab = build_vocab(
        "order", {"Diptera": 900, "Lepidoptera": 500, "Odonata": 499}, role="target", min_count=500
    )
    assert vocab.values == (UNKNOWN, "Diptera", "Lepidoptera", OTHER)
    assert vocab.counts == (0, 900, 500, 499)
    assert vocab.lookup("Odonata") == vocab.values.index(OTHER)
    assert vocab.folded == {"Odonata": 499}


def test_index_zero_is_unknown_for_missing_and_unseen_values():
    vocab = build_vocab("dna_bin", {"BOLD:AAA0001": 3, "BOLD:AAA0002": 1})
    assert vocab.values[0] == UNKNOWN
    assert vocab.lookup(None) == 0
    assert vocab.lookup("") == 0
    assert vocab.lookup("BOLD:ZZZ9999") == 0
    assert vocab.lookup("BOLD:AAA0001") == 1


def test_feature_values_below_min_count_map_to_unknown_without_other():
    vocab = build_vocab("country", {"Canada": 10, "Peru": 2}, min_count=5)
    assert vocab.values == (UNKNOWN, "Canada")
    assert vocab.lookup("Peru") == 0
    assert not vocab.has_other


def test_order_is_by_count_then_name_and_deterministic():
    counts = {"b": 5, "a": 5, "c": 9}
    assert build_vocab("f", counts).values == (UNKNOWN, "c", "a", "b")
    assert (
        build_vocab("f", dict(reversed(counts.items()))).sha256 == build_vocab("f", counts).sha256
    )


def test_a_real_class_named_other_joins_the_other_bucket():
    vocab = build_vocab("order", {"Diptera": 10, "Other": 7, "Rare": 1}, role="target", min_count=5)
    assert vocab.values == (UNKNOWN, "Diptera", OTHER)
    assert vocab.counts[-1] == 8


def test_vocab_file_round_trips_and_records_its_options(tmp_path):
    vocab = build_vocab(
        "order", {"A": 5, "B": 1}, role="target", min_count=2, counted_splits=("train",)
    )
    path = write_vocab(vocab, tmp_path)
    body = json.loads(path.read_text())
    assert body["counted_splits"] == ["train"] and body["min_count"] == 2
    assert body["sha256"] == vocab.sha256
    assert load_vocab(path) == vocab


def test_an_edited_vocab_file_is_refused(tmp_path):
    path = write_vocab(build_vocab("order", {"A": 5}), tmp_path)
    body = json.loads(path.read_text())
    body["values"].append("B")
    body["counts"].append(1)
    path.write_text(json.dumps(body))
    with pytest.raises(ValueError, match="sha256"):
        load_vocab(path)


def test_column_counts_strip_values_and_leave_out_blank_and_missing_ones():
    orders = [" Diptera", "Diptera ", "", "  ", None, "Odonata"]
    lf = pl.LazyFrame(
        {"order": orders, "genus": [None] * 6}, schema=dict.fromkeys(["order", "genus"], pl.String)
    )
    counts = count_columns(lf, ["order", "genus"])
    assert counts == {"order": {"Diptera": 2, "Odonata": 1}, "genus": {}}
