"""The target leakage guard: metadata at or below the target is refused unless asked for."""

from __future__ import annotations

import pytest

from bionas.trainer.leakage import (
    check_meta_fields,
    default_meta_fields,
    leak_reason,
    resolve_meta_fields,
)

ALL_FIELDS = ("phylum", "class", "order", "family", "genus", "species", "taxon", "dna_bin")


@pytest.mark.parametrize("field", ["order", "family", "subfamily", "genus", "species", "taxon"])
def test_fields_at_or_below_order_are_refused_for_target_order(field):
    with pytest.raises(ValueError, match=f"'{field}'.*--allow-target-leakage"):
        check_meta_fields(["dna_bin", field], "order")


def test_the_message_says_why():
    assert "target itself" in leak_reason("order", "order")
    assert "each family lies in exactly one order" in leak_reason("family", "order")


@pytest.mark.parametrize("field", ["class", "phylum", "dna_bin", "country"])
def test_fields_that_cannot_leak_order_are_accepted(field):
    check_meta_fields([field], "order")
    assert leak_reason(field, "order") is None


def test_allow_target_leakage_accepts_the_papers_setting():
    check_meta_fields(["order", "family", "dna_bin"], "order", allow_target_leakage=True)


def test_default_metadata_for_order_is_dna_bin_and_class():
    assert default_meta_fields("order", ALL_FIELDS) == ("dna_bin", "class")


def test_default_metadata_for_family_adds_order_and_skips_missing_vocabularies():
    assert default_meta_fields("family", ALL_FIELDS) == ("dna_bin", "class", "order")
    assert default_meta_fields("family", ("order",)) == ("order",)


def test_a_target_outside_the_taxonomy_only_refuses_itself():
    with pytest.raises(ValueError, match="target itself"):
        check_meta_fields(["country"], "country")
    check_meta_fields(["order"], "country")


def test_resolve_uses_the_default_or_checks_the_given_fields():
    assert resolve_meta_fields(None, "order", ALL_FIELDS) == ("dna_bin", "class")
    assert resolve_meta_fields([], "order", ALL_FIELDS) == ()
    with pytest.raises(ValueError, match="twice"):
        resolve_meta_fields(["class", "class"], "order", ALL_FIELDS)
    with pytest.raises(ValueError, match="leak"):
        resolve_meta_fields(["genus"], "family", ALL_FIELDS)
