"""Dataset profiles: how a dataset's own columns and paths map onto canonical fields (SPEC §5)."""

from __future__ import annotations

from dataclasses import dataclass

from bionas.errors import BionasError
from bionas.shards.format import CATEGORICAL_FIELDS, NUMERIC_FIELDS, TAXONOMY_RANKS


@dataclass(frozen=True)
class DatasetProfile:
    """Column names and the image path layout of one dataset release."""

    name: str
    id_column: str
    split_column: str | None
    ranks: tuple[str, ...]  # taxonomy, coarse to fine
    categorical: tuple[str, ...]  # every categorical field carried into records
    numeric: tuple[str, ...]
    columns: tuple[str, ...]  # the full header of the metadata file, in order
    chunk_column: str | None = "chunk"
    barcode_column: str | None = None
    bbox_columns: tuple[str, ...] = ("processid", "width_original", "height_original")
    delimiter: str = ","

    def image_relpath(self, split: str, chunk: str | None, sample_id: str) -> str:
        """`<split>/<chunk>/<id>.jpg`, or `<split>/<id>.jpg` when chunk is empty."""
        if chunk:
            return f"{split}/{chunk}/{sample_id}.jpg"
        return f"{split}/{sample_id}.jpg"


BIOSCAN_5M_COLUMNS = (
    "processid",
    "sampleid",
    "taxon",
    "phylum",
    "class",
    "order",
    "family",
    "subfamily",
    "genus",
    "species",
    "dna_bin",
    "dna_barcode",
    "country",
    "province_state",
    "coord-lat",
    "coord-lon",
    "image_measurement_value",
    "area_fraction",
    "scale_factor",
    "inferred_ranks",
    "split",
    "index_bioscan_1M_insect",
    "chunk",
)
BBOX_COLUMNS = (
    "processid",
    "width_original",
    "height_original",
    "x0",
    "y0",
    "x1",
    "y1",
    "scale_factor",
    "area_fraction",
)

BIOSCAN_5M = DatasetProfile(
    name="bioscan-5m",
    id_column="processid",
    split_column="split",
    ranks=TAXONOMY_RANKS,
    categorical=CATEGORICAL_FIELDS,
    numeric=NUMERIC_FIELDS,
    columns=BIOSCAN_5M_COLUMNS,
    barcode_column="dna_barcode",
)

PROFILES = {BIOSCAN_5M.name: BIOSCAN_5M}


def get_profile(name: str) -> DatasetProfile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise BionasError(f"unknown dataset profile {name!r} (known: {known})") from None
