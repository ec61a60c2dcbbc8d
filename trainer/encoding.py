"""How records become model inputs: the label (target vocabulary index - 1; classes are
the target vocabulary without `<unk>`) and metadata indices (0 = unknown), from the
vocabularies the manifest pins by sha256. A training run then cuts its feature
vocabularies to the values of the train split (`train_values.restrict_to_train`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bionas.errors import BionasError
from bionas.manifests.manifest import Manifest
from bionas.manifests.vocab import Vocab


@dataclass(frozen=True)
class Encoding:
    """How a record becomes a label and metadata indices."""

    target_vocab: Vocab
    meta_vocabs: tuple[Vocab, ...] = ()

    @property
    def target(self) -> str:
        return self.target_vocab.field

    @property
    def meta_fields(self) -> tuple[str, ...]:
        return tuple(v.field for v in self.meta_vocabs)

    @property
    def num_classes(self) -> int:
        return len(self.target_vocab) - 1

    @property
    def class_names(self) -> list[str]:
        return list(self.target_vocab.values[1:])

    @property
    def vocabs(self) -> dict[str, Vocab]:
        return {v.field: v for v in (*self.meta_vocabs, self.target_vocab)}

    def label(self, record: Mapping[str, Any]) -> int:
        """Class index, or -1 when the record has no known class."""
        return self.target_vocab.lookup(record_text(record.get(self.target))) - 1

    def meta(self, record: Mapping[str, Any]) -> list[int]:
        return [v.lookup(record_text(record.get(v.field))) for v in self.meta_vocabs]


def record_text(value: Any) -> str | None:
    """A record field as the string vocabularies look up (None stays None)."""
    return None if value is None else str(value)


def load_encoding(manifest: Manifest, target: str, meta_fields: Sequence[str]) -> Encoding:
    """The vocabularies in force, refusing any whose sha256 differs from the manifest's."""
    recorded = manifest.body.get("vocabs", {})

    def load(field_name: str) -> Vocab:
        if field_name not in recorded:
            known = ", ".join(sorted(recorded)) or "none"
            raise BionasError(
                f"{manifest.root}: no vocabulary for field {field_name!r} in manifest.json "
                f"(fields with vocabularies: {known})"
            )
        try:
            vocab = manifest.vocab(field_name)
        except (OSError, ValueError) as err:
            raise BionasError(f"cannot load the {field_name!r} vocabulary: {err}") from err
        expected = recorded[field_name]["sha256"]
        if vocab.sha256 != expected:
            raise BionasError(
                f"{manifest.vocab_path(field_name)} has sha256 {vocab.sha256[:12]}… but "
                f"manifest.json records {expected[:12]}…: the vocabulary was changed after "
                "the manifest was written. Regenerate it with `bionas vocab` (which updates "
                "the manifest) or restore the original file."
            )
        return vocab

    hint = (
        f"build one with `bionas vocab METADATA.csv --out {manifest.root} --target {target}` "
        f"(the dataset's target is {manifest.target!r})"
    )
    if target not in recorded:
        raise BionasError(f"{manifest.root} has no target vocabulary for {target!r}; {hint}")
    target_vocab = load(target)
    if target_vocab.role != "target":
        raise BionasError(
            f"{manifest.vocab_path(target)} is a feature vocabulary, not a target one "
            f"(no 'Other' bucket, feature min-count); {hint}"
        )
    if len(target_vocab) < 3:
        raise BionasError(f"target {target!r} has fewer than 2 classes in {manifest.root}")
    return Encoding(target_vocab, tuple(load(f) for f in meta_fields))
