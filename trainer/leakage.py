"""The target leakage guard (SPEC §6 "Target leakage"; we go beyond the paper here).

The paper feeds taxonomic labels into the metadata encoder while predicting the order. A
metadata field equal to the target, or a rank below it (every family lies in exactly one
order), or `taxon` (the most specific rank identified, at or below the target for most
records) hands the model the answer. Such fields are refused unless the user opts in.

`dna_bin` is allowed by default although a BIN is species-like (nearly every BIN lies in
one order): it is the paper's strongest metadata signal and is legitimately known before
identification (from the barcode), but it lets a model memorise BIN -> class. That is why
evaluation reports metrics separately for samples whose BIN never occurs in training.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bionas.shards.format import TAXONOMY_RANKS

# Uninformative in BIOSCAN-5M (one value), so never a default metadata field.
_CONSTANT_RANKS = ("phylum",)


def leaking_fields(target: str) -> tuple[str, ...]:
    """The fields that reveal `target`: itself, every finer rank, and `taxon`."""
    if target not in TAXONOMY_RANKS:
        return (target,)
    finer = TAXONOMY_RANKS[TAXONOMY_RANKS.index(target) :]
    return (*finer, "taxon")


def leak_reason(field: str, target: str) -> str | None:
    """Why `field` leaks `target` as metadata, or None when it does not."""
    if field == target:
        return f"{field!r} is the target itself"
    if field not in leaking_fields(target):
        return None
    if field == "taxon":
        return (
            f"'taxon' is the most specific rank identified, at or below {target!r} for most records"
        )
    return (
        f"{field!r} is below {target!r} in the taxonomy: each {field} lies in exactly one {target}"
    )


def check_meta_fields(
    meta_fields: Sequence[str], target: str, *, allow_target_leakage: bool = False
) -> None:
    """Raise ValueError (a message for the user) when a metadata field leaks the target."""
    if allow_target_leakage:
        return
    reasons = [r for f in meta_fields if (r := leak_reason(f, target)) is not None]
    if reasons:
        raise ValueError(
            "metadata would leak the target: "
            + "; ".join(reasons)
            + ". The model could read the answer from the metadata instead of the image. "
            "Drop these fields from --meta-fields, or pass --allow-target-leakage to "
            "reproduce the paper's setting (its accuracy then overstates what images give)."
        )


def default_meta_fields(target: str, available: Iterable[str]) -> tuple[str, ...]:
    """Fields that cannot leak `target`: `dna_bin` plus the informative ranks above it.

    For `order` that is (`dna_bin`, `class`). Only fields in `available` (those with a
    vocabulary in the dataset) are returned.
    """
    have = set(available)
    coarser = TAXONOMY_RANKS[: TAXONOMY_RANKS.index(target)] if target in TAXONOMY_RANKS else ()
    wanted = ("dna_bin", *(r for r in coarser if r not in _CONSTANT_RANKS))
    return tuple(f for f in wanted if f in have and f != target)


def resolve_meta_fields(
    meta_fields: Sequence[str] | None,
    target: str,
    available: Iterable[str],
    *,
    allow_target_leakage: bool = False,
) -> tuple[str, ...]:
    """The metadata fields to use: the given ones (checked) or the default for `target`."""
    fields = (
        tuple(meta_fields) if meta_fields is not None else default_meta_fields(target, available)
    )
    if len(set(fields)) != len(fields):
        raise ValueError(f"--meta-fields lists a field twice: {','.join(fields)}")
    check_meta_fields(fields, target, allow_target_leakage=allow_target_leakage)
    return fields
