"""Synthetic BIOSCAN-5M rows: specimens drawn from the tree of life, as CSV and TSV frames.

`sample_rows` draws one chunk of specimens as numpy columns (order, dna_bin cluster, label
depth, official split, place, bbox); `metadata_frame` / `bbox_frame` turn them into the
official 23-column CSV rows and bbox TSV rows. `bionas.ingest.synth` writes the files,
plants corruptions and draws the images.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from bionas.ingest.profiles import BBOX_COLUMNS, BIOSCAN_5M_COLUMNS
from bionas.ingest.synth_bioscan_tree import BARCODE_NT, COUNTRIES, Taxonomy
from bionas.ingest.synth_images import HEIGHT, WIDTH

Rows = dict[str, np.ndarray]  # one chunk of specimens as columns of ids and numbers

SPLITS = (
    "pretrain", "train", "val", "test", "key_unseen", "val_unseen", "test_unseen", "other_heldout",
)  # fmt: skip
# P(labelled down to less than rank k): class 99.9%, order 99.7%, family 95.8%, subfamily 28.6%,
# genus 23.8%, species 9.2% labelled. Depth 0 = phylum only ... 6 = species.
DEPTH_CUTS = (0.001, 0.003, 0.042, 0.714, 0.762, 0.908)
SEEN_CUTS = (289_203 / 343_333, 303_960 / 343_333)  # train / val / test among seen species
UNSEEN_CUTS = (36_465 / 53_171, 45_284 / 53_171)  # key_unseen / val_unseen / test_unseen


def sample_rows(
    taxonomy: Taxonomy, seed: int, chunk: int, start: int, stop: int, folders: int, next_index: int
) -> dict[str, np.ndarray]:
    """Rows start..stop as columns of numpy arrays (ids and numbers, not yet strings)."""
    rng = np.random.default_rng([seed, chunk, 0x5A3])
    m = stop - start
    order = np.searchsorted(taxonomy.order_cdf, rng.random(m), side="right")
    cluster = np.searchsorted(taxonomy.cluster_key, order + rng.random(m), side="right")
    depth = np.searchsorted(DEPTH_CUTS, rng.random(m), side="right").astype(np.int8)
    group = taxonomy.cluster_group[cluster]
    u = rng.random(m)
    split = np.select(
        [depth < 6, group == 0, group == 1],
        [
            0,
            1 + np.searchsorted(SEEN_CUTS, u, side="right"),
            4 + np.searchsorted(UNSEEN_CUTS, u, side="right"),
        ],
        7,
    ).astype(np.int8)  # species-labelled rows are the official non-pretrain splits
    country_cdf = np.cumsum([s for _, s, _, _ in COUNTRIES]) / sum(s for _, s, _, _ in COUNTRIES)
    country = np.minimum(
        np.searchsorted(country_cdf, rng.random(m), side="right"), len(COUNTRIES) - 1
    )
    n_prov = np.array([len(p) for _, _, p, _ in COUNTRIES])
    province = np.concatenate([[0], np.cumsum(n_prov)])[country] + (
        rng.random(m) * n_prov[country]
    ).astype(int)
    box = np.array([b for *_, b in COUNTRIES], dtype=float)[country]
    lat = np.round(box[:, 0] + rng.random(m) * (box[:, 1] - box[:, 0]), 4)
    lon = np.round(box[:, 2] + rng.random(m) * (box[:, 3] - box[:, 2]), 4)
    no_country = rng.random(m) < 0.02
    province[no_country | (rng.random(m) < 0.1)] = -1
    lat[no_country | (rng.random(m) < 0.06)] = np.nan
    lon[np.isnan(lat)] = np.nan
    country[no_country] = -1
    index_1m = (rng.random(m) < 0.24) & (taxonomy.order_class[order] == 0)
    return {
        "row": np.arange(start, stop),
        "order": order,
        "cluster": cluster,
        "depth": depth,
        "group": group,
        "split": split,
        "bin_missing": rng.random(m) < 0.003,
        "country": country,
        "province": province,
        "lat": lat,
        "lon": lon,
        **_bboxes(rng, m),
        "inferred": np.searchsorted([0.8, 0.95], rng.random(m), side="right").astype(np.int8),
        "index_1m": np.where(index_1m, next_index + np.cumsum(index_1m) - 1, -1),
        "chunk": np.where(rng.random(m) < 0.1, 0, 1 + rng.integers(0, folders, m)),
    }


def _bboxes(rng: np.random.Generator, m: int) -> dict[str, np.ndarray]:
    """Specimen boxes 15-60% of the frame, near the middle of the well, fully inside the image."""
    size, aspect = rng.uniform(0.15, 0.6, m), np.exp(rng.uniform(-0.3, 0.3, m))
    w = np.clip(np.round(size * WIDTH * np.sqrt(aspect)), 32, WIDTH - 8).astype(np.int64)
    h = np.clip(np.round(size * HEIGHT / np.sqrt(aspect)), 24, HEIGHT - 8).astype(np.int64)
    x0 = np.clip(np.round(rng.normal(WIDTH / 2, WIDTH * 0.12, m) - w / 2), 4, WIDTH - 4 - w)
    y0 = np.clip(np.round(rng.normal(HEIGHT / 2, HEIGHT * 0.12, m) - h / 2), 4, HEIGHT - 4 - h)
    box = np.stack([x0, y0, x0 + w, y0 + h], axis=1).astype(np.int64)
    return {
        "box": box,  # what bbox.tsv records
        "draw": box.copy(),  # where the specimen is drawn
        "fill": rng.uniform(0.3, 0.6, m),  # share of the box the specimen covers
        "has_bbox": np.ones(m, bool),
    }


def _barcodes(
    taxonomy: Taxonomy, rows: dict[str, np.ndarray], rng: np.random.Generator
) -> pl.Series:
    """658-660 nt ACGT(N) strings: near-identical within a dna_bin, closer within a family."""
    lut = np.frombuffer(b"ACGTN", dtype=np.uint8)
    cols = np.arange(BARCODE_NT)
    parts = []
    for lo in range(0, len(rows["row"]), 50_000):  # blocks keep the (rows, 660) arrays small
        order, cluster = rows["order"][lo : lo + 50_000], rows["cluster"][lo : lo + 50_000]
        k = len(order)
        code = (
            taxonomy.order_base[order]
            + taxonomy.family_pattern[taxonomy.cluster_family[cluster] % 1024]
            + taxonomy.cluster_pattern[cluster % 1024]
        )
        hits = np.repeat(np.arange(k), rng.poisson(1.5, k))  # a few point mutations per specimen
        code[hits, rng.integers(0, BARCODE_NT, len(hits))] += rng.integers(
            1, 4, len(hits), dtype=np.uint8
        )
        code %= 4
        leading_n = np.where(rng.random(k) < 0.01, rng.integers(5, 40, k), 0)  # poor read start
        code[cols[None, :] < leading_n[:, None]] = 4
        text = lut[code]
        text[cols[None, :] >= rng.integers(658, 661, k)[:, None]] = 0  # NUL-padded: "S660" trims
        parts.append(pl.Series(text.view(f"S{BARCODE_NT}").ravel()).cast(pl.String))
    return pl.concat(parts).alias("dna_barcode")


def metadata_frame(taxonomy: Taxonomy, rows: Rows, seed: int, chunk: int) -> pl.DataFrame:
    """The chunk's metadata.csv rows, in the official column order; None = empty cell."""
    cluster = rows["cluster"]
    ids = pl.DataFrame({
        "row": rows["row"], "cluster": cluster, "order": rows["order"],
        "class": taxonomy.order_class[rows["order"]], "family": taxonomy.cluster_family[cluster],
        "subfamily": taxonomy.cluster_subfamily[cluster], "genus": taxonomy.cluster_genus[cluster],
        **{k: rows[k] for k in ("depth", "split", "chunk", "country", "province", "index_1m")},
        "inferred_ranks": rows["inferred"], "bin": np.where(rows["bin_missing"], -1, cluster),
    })  # fmt: skip

    def named(table: pl.Series, column: str, min_depth: int = 0) -> pl.Expr:
        known = (pl.col(column) >= 0) & (pl.col("depth") >= min_depth)
        return pl.when(known).then(pl.lit(table).gather(pl.col(column).clip(0)))

    # plate-well codes through a bijection on plate numbers, so processids never clash
    well = pl.format("{}{}", pl.lit(pl.Series(list("ABCDEFGH"))).gather(pl.col("row") % 96 // 12),
                     (pl.col("row") % 12 + 1).cast(pl.String).str.zfill(2))  # fmt: skip
    x0, y0, x1, y1 = rows["box"].T
    w, h = np.maximum(x1 - x0, 0), np.maximum(y1 - y0, 0)
    meta = ids.select(
        processid=pl.format("BIOUG{}-{}", 10_000 + (pl.col("row") // 96 * 7919) % 90_000, well),
        sampleid=pl.format("BIOUG{}-{}", 10_000 + (pl.col("row") // 96 * 4513 + 1234) % 90_000, well),
        phylum=pl.lit("Arthropoda"),
        **{"class": named(taxonomy.class_names, "class", 1)},
        order=named(taxonomy.order_names, "order", 2),
        family=named(taxonomy.family_names, "family", 3),
        subfamily=named(taxonomy.subfamily_names, "subfamily", 4),
        genus=named(taxonomy.genus_names, "genus", 5),
        species=named(taxonomy.species_names, "cluster", 6),
        dna_bin=named(taxonomy.bin_names, "bin"),
        dna_barcode=_barcodes(taxonomy, rows, np.random.default_rng([seed, chunk, 0xD9A])),
        country=named(taxonomy.country_names, "country"),
        province_state=named(taxonomy.province_names, "province"),
        **{"coord-lat": pl.Series(rows["lat"]).fill_nan(None),
           "coord-lon": pl.Series(rows["lon"]).fill_nan(None)},
        image_measurement_value=pl.Series(np.round(w * h * rows["fill"])),  # specimen pixels
        area_fraction=pl.Series(_area_fraction(rows["box"])),
        scale_factor=pl.Series(_scale_factor(rows["box"])),
        inferred_ranks=pl.col("inferred_ranks"),
        split=pl.lit(pl.Series(SPLITS)).gather(pl.col("split")),
        index_bioscan_1M_insect=pl.when(pl.col("index_1m") >= 0).then(pl.col("index_1m")),
        chunk=pl.when(pl.col("chunk") > 0).then(pl.col("chunk").cast(pl.String)),
    )  # fmt: skip
    taxon = pl.coalesce("species", "genus", "subfamily", "family", "order", "class", "phylum")
    return meta.with_columns(taxon=taxon).select(BIOSCAN_5M_COLUMNS)


def _area_fraction(box: np.ndarray) -> np.ndarray:
    """Box area over frame area (0 for a degenerate box)."""
    w, h = np.maximum(box[:, 2] - box[:, 0], 0), np.maximum(box[:, 3] - box[:, 1], 0)
    return np.round(w * h / (WIDTH * HEIGHT), 6)


def _scale_factor(box: np.ndarray) -> np.ndarray:
    """How much smaller the crop is than the frame, along its longer relative side."""
    w, h = np.maximum(box[:, 2] - box[:, 0], 0), np.maximum(box[:, 3] - box[:, 1], 0)
    return np.round(np.maximum(w / WIDTH, h / HEIGHT), 6)


def bbox_frame(rows: Rows, processid: pl.Series) -> pl.DataFrame:
    """The chunk's bbox.tsv rows: pixel boxes in the 1024x768 image."""
    x0, y0, x1, y1 = rows["box"].T
    frame = pl.DataFrame({
        "processid": processid, "width_original": np.full(len(x0), WIDTH),
        "height_original": np.full(len(x0), HEIGHT), "x0": x0, "y0": y0, "x1": x1, "y1": y1,
        "scale_factor": _scale_factor(rows["box"]), "area_fraction": _area_fraction(rows["box"]),
    })  # fmt: skip
    return frame.filter(pl.Series(rows["has_bbox"])).select(BBOX_COLUMNS)
