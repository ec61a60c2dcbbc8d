"""Align two target vocabularies by class name (e.g. BIOSCAN-5M orders vs Insects-1M orders)."""

from __future__ import annotations

from bionas.manifests.vocab import OTHER, Vocab


def kept_classes(vocab: Vocab) -> set[str]:
    """Classes with their own index (not unknown, not the Other bucket)."""
    return set(vocab.values[1:]) - {OTHER}


def align_vocabs(ours: Vocab, theirs: Vocab) -> dict:
    """Which classes both sides know, which only one side has, which one side folded."""
    ours_kept, theirs_kept = kept_classes(ours), kept_classes(theirs)
    ours_all, theirs_all = ours_kept | set(ours.folded), theirs_kept | set(theirs.folded)
    body = {
        "field": ours.field,
        "other_field": theirs.field,
        "shared": sorted(ours_kept & theirs_kept),
        "only_ours": sorted(ours_all - theirs_all),
        "only_theirs": sorted(theirs_all - ours_all),
        "folded_ours_kept_theirs": sorted(set(ours.folded) & theirs_kept),
        "folded_theirs_kept_ours": sorted(set(theirs.folded) & ours_kept),
        "folded_both": sorted(set(ours.folded) & set(theirs.folded)),
    }
    body["counts"] = {k: len(v) for k, v in body.items() if isinstance(v, list)}
    return body
