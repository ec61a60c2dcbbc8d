"""Dataset profiles: how a dataset's own columns and paths map onto canonical fields (SPEC §5).

After the scan every column carries its canonical name: the sample id is `processid`,
the dataset's own split is `official_split`, ranks are named by rank, DNA BIN is
`dna_bin`. Image paths come from a template over the dataset's raw columns; empty
path parts collapse (BIOSCAN's `<split>/<chunk>/<id>.jpg` becomes `<split>/<id>.jpg`
when chunk is empty).
"""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from bionas.errors import BionasError

ID = "processid"
OFFICIAL_SPLIT = "official_split"


@dataclass(frozen=True)
class DatasetProfile:
    """Column names and the image path layout of one dataset release."""

    name: str
    id_column: str
    ranks: tuple[tuple[str, str], ...]  # (canonical rank, column), coarse to fine
    image_path: str  # template over raw columns, relative to --images
    split_column: str | None = None
    dna_bin_column: str | None = None
    extra_categorical: tuple[str, ...] = ()  # kept under their own names
    leaky_fields: tuple[str, ...] = ()  # non-rank fields as fine as the finest rank
    numeric: tuple[str, ...] = ()
    barcode_column: str | None = None
    delimiter: str = ","
    source: str = "built-in"
    columns: tuple[str, ...] = field(default=(), compare=False)  # documentation only

    @property
    def rank_names(self) -> tuple[str, ...]:
        return tuple(rank for rank, _ in self.ranks)

    @property
    def categorical(self) -> tuple[str, ...]:
        """Canonical categorical fields carried into every record."""
        dna = ("dna_bin",) if self.dna_bin_column else ()
        return (*self.rank_names, *self.extra_categorical, *dna)

    def path_columns(self) -> tuple[str, ...]:
        return tuple(name for _, name, _, _ in string.Formatter().parse(self.image_path) if name)

    def rename_map(self) -> dict[str, str]:
        """Raw column -> canonical name, for the columns whose names differ."""
        mapping = {self.id_column: ID, **{col: rank for rank, col in self.ranks}}
        if self.split_column:
            mapping[self.split_column] = OFFICIAL_SPLIT
        if self.dna_bin_column:
            mapping[self.dna_bin_column] = "dna_bin"
        return {raw: canon for raw, canon in mapping.items() if raw != canon}

    def raw_columns(self, with_barcode: bool = False, with_path: bool = True) -> list[str]:
        """Every raw column a scan must read (`with_path`: also those only the path uses)."""
        cols = [self.id_column, *(c for _, c in self.ranks), *self.extra_categorical, *self.numeric]
        for optional in (self.split_column, self.dna_bin_column):
            if optional:
                cols.append(optional)
        if with_barcode and self.barcode_column:
            cols.append(self.barcode_column)
        if with_path:
            cols.extend(self.path_columns())
        return list(dict.fromkeys(cols))


BIOSCAN_5M_COLUMNS = (
    "processid", "sampleid", "taxon", "phylum", "class", "order", "family", "subfamily",
    "genus", "species", "dna_bin", "dna_barcode", "country", "province_state", "coord-lat",
    "coord-lon", "image_measurement_value", "area_fraction", "scale_factor", "inferred_ranks",
    "split", "index_bioscan_1M_insect", "chunk",
)  # fmt: skip
BBOX_COLUMNS = (
    "processid", "width_original", "height_original", "x0", "y0", "x1", "y1",
    "scale_factor", "area_fraction",
)  # fmt: skip
BIOSCAN_RANKS = ("phylum", "class", "order", "family", "subfamily", "genus", "species")
INSECTS_1M_RANKS = (
    "class", "order", "suborder", "superfamily", "family", "subfamily", "tribe", "subtribe",
    "genus", "species",
)  # fmt: skip
INSECTS_1M_COLUMNS = ("image_id", "file_name", *INSECTS_1M_RANKS)

BIOSCAN_5M = DatasetProfile(
    name="bioscan-5m",
    id_column="processid",
    ranks=tuple((r, r) for r in BIOSCAN_RANKS),
    image_path="{split}/{chunk}/{processid}.jpg",
    split_column="split",
    dna_bin_column="dna_bin",
    extra_categorical=("taxon", "country", "province_state"),
    leaky_fields=("taxon",),
    numeric=("coord-lat", "coord-lon", "image_measurement_value", "area_fraction", "scale_factor"),
    barcode_column="dna_barcode",
    columns=BIOSCAN_5M_COLUMNS,
)

# Insects-1M has no public metadata schema we can rely on (SPEC §3): this is the layout
# `bionas synth --profile insects-1m` writes; map a real copy with --profile-file.
INSECTS_1M = DatasetProfile(
    name="insects-1m",
    id_column="image_id",
    ranks=tuple((r, r) for r in INSECTS_1M_RANKS),
    image_path="{file_name}",
    columns=INSECTS_1M_COLUMNS,
)

PROFILES = {p.name: p for p in (BIOSCAN_5M, INSECTS_1M)}


def get_profile(name: str) -> DatasetProfile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise BionasError(f"unknown dataset profile {name!r} (known: {known})") from None


def load_profile_file(path: Path) -> DatasetProfile:
    """A user's profile from TOML (see README "Other datasets" for the keys)."""
    try:
        body = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BionasError(f"cannot read profile {path}: {exc}") from exc
    known = {"name", "id", "ranks", "image_path", "split", "dna_bin", "extra_categorical",
             "leaky_fields", "numeric", "barcode", "delimiter"}  # fmt: skip
    unknown = sorted(set(body) - known)
    if unknown:
        raise BionasError(
            f"profile {path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    for key in ("name", "id", "ranks", "image_path"):
        if key not in body:
            raise BionasError(f"profile {path}: missing key {key!r}")
    if not isinstance(body["ranks"], dict) or not body["ranks"]:
        raise BionasError(f"profile {path}: [ranks] must map rank names to columns, coarse to fine")
    return DatasetProfile(
        name=body["name"],
        id_column=body["id"],
        ranks=tuple((str(r), str(c)) for r, c in body["ranks"].items()),
        image_path=body["image_path"],
        split_column=body.get("split"),
        dna_bin_column=body.get("dna_bin"),
        extra_categorical=tuple(body.get("extra_categorical", ())),
        leaky_fields=tuple(body.get("leaky_fields", ())),
        numeric=tuple(body.get("numeric", ())),
        barcode_column=body.get("barcode"),
        delimiter=body.get("delimiter", ","),
        source=str(path),
    )


def resolve_profile(name: str | None, profile_file: Path | None) -> DatasetProfile:
    if profile_file is not None:
        return load_profile_file(profile_file)
    return get_profile(name or BIOSCAN_5M.name)
