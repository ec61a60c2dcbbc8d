"""The target leakage guard (SPEC §6 "Target leakage"; we go beyond the paper here).

The paper feeds taxonomic labels into the metadata encoder while predicting the order. A
metadata field equal to the target, or a rank below it (every family lies in exactly one
order), or a field the dataset's profile marks as leaky (BIOSCAN-5M's `taxon`: the most
specific rank identified, at or below the target for most records) hands the model the
answer. Such fields are refused unless the user opts in.

Which fields are ranks, in what order, and which are leaky comes from the dataset's own
profile as recorded in its manifest (`ranks`, `leaky_fields`): Insects-1M's suborder,
superfamily, tribe and subtribe leak the order as family does.

`dna_bin` is allowed by default although a BIN is species-like (nearly every BIN lies in
one order): it is the paper's strongest metadata signal and is legitimately known before
identification (from the barcode), but it lets a model memorise BIN -> class. That is why
evaluation reports metrics separately for samples whose BIN was seen in training, never
seen, or absent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bionas.shards.format import TAXONOMY_RANKS

# Arthropoda for every specimen of an insect dataset: never a default metadata field.
_CONSTANT_RANKS = ("phylum",)


@dataclass(frozen=True)
class Taxonomy:
    """A dataset's ranks (coarse to fine) and its non-rank fields as fine as the finest."""

    ranks: tuple[str, ...]
    leaky_fields: tuple[str, ...] = ()


BIOSCAN_5M_TAXONOMY = Taxonomy(TAXONOMY_RANKS, ("taxon",))


def dataset_taxonomy(manifest_body: Mapping[str, Any]) -> Taxonomy:
    """The ranks and leaky fields a dataset's manifest records from its profile."""
    ranks = manifest_body.get("ranks")
    if not ranks:
        # Manifests written before ingest recorded its profile's ranks (and the test
        # helper's) come from the only profile there was then: BIOSCAN-5M.
        return BIOSCAN_5M_TAXONOMY
    return Taxonomy(tuple(ranks), tuple(manifest_body.get("leaky_fields", ())))


def leaking_fields(target: str, taxonomy: Taxonomy) -> tuple[str, ...]:
    """The fields that reveal `target`: itself, every finer rank, and the leaky fields."""
    if target not in taxonomy.ranks:
        return (target,)
    finer = taxonomy.ranks[taxonomy.ranks.index(target) :]
    return (*finer, *(f for f in taxonomy.leaky_fields if f not in finer))


def leak_reason(field: str, target: str, taxonomy: Taxonomy) -> str | None:
    """Why `field` leaks `target` as metadata, or None when it does not."""
    if field == target:
        return f"{field!r} is the target itself"
    if field not in leaking_fields(target, taxonomy):
        return None
    if field in taxonomy.leaky_fields:
        return (
            f"{field!r} is as specific as the finest rank identified, at or below {target!r} "
            "for most records"
        )
    return (
        f"{field!r} is below {target!r} in the taxonomy: each {field} lies in exactly one {target}"
    )


def check_meta_fields(
    meta_fields: Sequence[str],
    target: str,
    taxonomy: Taxonomy,
    *,
    allow_target_leakage: bool = False,
) -> None:
    """Raise ValueError (a message for the user) when a metadata field leaks the target."""
    if allow_target_leakage:
        return
    reasons = [r for f in meta_fields if (r := leak_reason(f, target, taxonomy)) is not None]
    if reasons:
        raise ValueError(
            "metadata would leak the target: "
            + "; ".join(reasons)
            + ". The model could read the answer from the metadata instead of the image. "
            "Drop these fields from --meta-fields, or pass --allow-target-leakage to "
            "reproduce the paper's setting (its accuracy then overstates what images give)."
        )


def default_meta_fields(
    target: str, available: Iterable[str], taxonomy: Taxonomy
) -> tuple[str, ...]:
    """Fields that cannot leak `target`: `dna_bin` plus the informative ranks above it.

    For `order` that is (`dna_bin`, `class`). Only fields in `available` (those with a
    vocabulary in the dataset) are returned.
    """
    have = set(available)
    ranks = taxonomy.ranks
    coarser = ranks[: ranks.index(target)] if target in ranks else ()
    wanted = ("dna_bin", *(r for r in coarser if r not in _CONSTANT_RANKS))
    leaking = leaking_fields(target, taxonomy)
    return tuple(f for f in wanted if f in have and f not in leaking)


def resolve_meta_fields(
    meta_fields: Sequence[str] | None,
    target: str,
    available: Iterable[str],
    taxonomy: Taxonomy,
    *,
    allow_target_leakage: bool = False,
) -> tuple[str, ...]:
    """The metadata fields to use: the given ones (checked) or the default for `target`."""
    if meta_fields is None:
        fields = default_meta_fields(target, available, taxonomy)
    else:
        fields = tuple(meta_fields)
    if len(set(fields)) != len(fields):
        raise ValueError(f"--meta-fields lists a field twice: {','.join(fields)}")
    check_meta_fields(fields, target, taxonomy, allow_target_leakage=allow_target_leakage)
    return fields
