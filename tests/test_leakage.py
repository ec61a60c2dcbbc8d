"""The target leakage guard: metadata at or below the target is refused unless asked for.

Which fields are ranks comes from the dataset's own manifest (its profile's ranks and
leaky fields), so Insects-1M's deeper taxonomy is guarded as well as BIOSCAN-5M's."""

from __future__ import annotations

import json

import pytest
from ingest_helpers import run_cli

from bionas.manifests.manifest import load_manifest
from bionas.trainer.leakage import (
    BIOSCAN_5M_TAXONOMY,
    Taxonomy,
    check_meta_fields,
    dataset_taxonomy,
    default_meta_fields,
    leak_reason,
    resolve_meta_fields,
)

BIOSCAN = BIOSCAN_5M_TAXONOMY
ALL_FIELDS = ("phylum", "class", "order", "family", "genus", "species", "taxon", "dna_bin")
TINY = ["--device", "cpu", "--image-size", "32", "--cells", "2", "--channels", "4",
        "--batch-size", "8", "--workers", "0", "--quiet"]  # fmt: skip


@pytest.mark.parametrize("field", ["order", "family", "subfamily", "genus", "species", "taxon"])
def test_fields_at_or_below_order_are_refused_for_target_order(field):
    with pytest.raises(ValueError, match=f"'{field}'.*--allow-target-leakage"):
        check_meta_fields(["dna_bin", field], "order", BIOSCAN)


def test_the_message_says_why():
    assert "target itself" in leak_reason("order", "order", BIOSCAN)
    assert "each family lies in exactly one order" in leak_reason("family", "order", BIOSCAN)
    assert "finest rank identified" in leak_reason("taxon", "order", BIOSCAN)


@pytest.mark.parametrize("field", ["class", "phylum", "dna_bin", "country"])
def test_fields_that_cannot_leak_order_are_accepted(field):
    check_meta_fields([field], "order", BIOSCAN)
    assert leak_reason(field, "order", BIOSCAN) is None


def test_allow_target_leakage_accepts_the_papers_setting():
    check_meta_fields(["order", "family", "dna_bin"], "order", BIOSCAN, allow_target_leakage=True)


def test_default_metadata_for_order_is_dna_bin_and_class():
    assert default_meta_fields("order", ALL_FIELDS, BIOSCAN) == ("dna_bin", "class")


def test_default_metadata_for_family_adds_order_and_skips_missing_vocabularies():
    assert default_meta_fields("family", ALL_FIELDS, BIOSCAN) == ("dna_bin", "class", "order")
    assert default_meta_fields("family", ("order",), BIOSCAN) == ("order",)


def test_a_target_outside_the_taxonomy_only_refuses_itself():
    with pytest.raises(ValueError, match="target itself"):
        check_meta_fields(["country"], "country", BIOSCAN)
    check_meta_fields(["order"], "country", BIOSCAN)


def test_resolve_uses_the_default_or_checks_the_given_fields():
    assert resolve_meta_fields(None, "order", ALL_FIELDS, BIOSCAN) == ("dna_bin", "class")
    assert resolve_meta_fields([], "order", ALL_FIELDS, BIOSCAN) == ()
    with pytest.raises(ValueError, match="twice"):
        resolve_meta_fields(["class", "class"], "order", ALL_FIELDS, BIOSCAN)
    with pytest.raises(ValueError, match="leak"):
        resolve_meta_fields(["genus"], "family", ALL_FIELDS, BIOSCAN)


def test_a_profiles_leaky_field_is_refused_and_never_a_default():
    mine = Taxonomy(("class", "order", "family"), leaky_fields=("dna_bin", "morphospecies"))
    assert default_meta_fields("family", ("dna_bin", "class", "order"), mine) == ("class", "order")
    with pytest.raises(ValueError, match="'morphospecies'"):
        check_meta_fields(["morphospecies"], "order", mine)


def test_a_manifest_without_ranks_is_read_as_bioscan_5m():
    assert dataset_taxonomy({"target": "order"}) == BIOSCAN
    body = {"ranks": ["class", "order", "suborder"], "leaky_fields": []}
    assert dataset_taxonomy(body) == Taxonomy(("class", "order", "suborder"), ())


# --- an Insects-1M dataset through the real CLI -------------------------------------


@pytest.fixture(scope="module")
def insects(tmp_path_factory):
    root = tmp_path_factory.mktemp("insects")
    run_cli("synth", root / "i", "--profile", "insects-1m", "--n", 150, "--seed", 3,
            "--workers", 1, "--quiet")  # fmt: skip
    run_cli("ingest", root / "i" / "metadata.csv", "--images", root / "i" / "images",
            "--out", root / "ds", "--profile", "insects-1m", "--split-source", "random",
            "--min-class-count", 5, "--size", 32, "--workers", 1, "--quiet")  # fmt: skip
    return root / "ds"


@pytest.mark.parametrize("field", ["suborder", "superfamily", "tribe", "subtribe"])
def test_insects_1m_ranks_below_order_are_refused_through_the_cli(insects, tmp_path, field):
    result = run_cli("train", insects, "--out", tmp_path / "run", "--target", "order",
                     "--meta-fields", field, "--max-steps", 1, *TINY, ok=False)  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"'{field}' is below 'order' in the taxonomy" in result.output
    assert "--allow-target-leakage" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.usefixtures("torch_single_thread")
def test_insects_1m_default_metadata_for_order_is_class(insects, tmp_path):
    run = tmp_path / "run"
    run_cli("train", insects, "--out", run, "--max-steps", 1, *TINY)
    assert json.loads((run / "config.json").read_text())["meta_fields"] == ["class"]


def test_insects_1m_defaults_follow_its_own_ranks(insects):
    manifest = load_manifest(insects)
    taxonomy = dataset_taxonomy(manifest.body)
    assert "dna_bin" not in manifest.body["vocabs"]
    expected = ("class", "order", "suborder", "superfamily")
    assert default_meta_fields("family", manifest.body["vocabs"], taxonomy) == expected
