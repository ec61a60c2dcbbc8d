"""The synthetic BIOSCAN-5M tree of life, the rows drawn from it and their CSV/TSV frames.

`build_taxonomy` scales orders, families, ..., dna_bin clusters to n records with the
release's shares (SPEC section 3); `sample_rows` draws one chunk of specimens as numpy
columns; `metadata_frame` / `bbox_frame` turn them into the official 23-column CSV rows
and bbox TSV rows. `bionas.ingest.synth` writes the files, plants corruptions and draws
the images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from bionas.ingest.profiles import BBOX_COLUMNS, BIOSCAN_5M_COLUMNS
from bionas.ingest.synth_images import HEIGHT, WIDTH

BIOSCAN5M_ROWS = 5_150_850

# the official layouts, defined once in the profiles
METADATA_COLUMNS = BIOSCAN_5M_COLUMNS

Rows = dict[str, np.ndarray]  # one chunk of specimens as columns of ids and numbers


# The tree of life (BIOSCAN-5M shares, SPEC section 3).

SPLITS = (
    "pretrain", "train", "val", "test", "key_unseen", "val_unseen", "test_unseen", "other_heldout",
)  # fmt: skip
# (order, class, share of records): long-tailed, Diptera about half; arachnids and springtails.
ORDERS = (
    ("Diptera", "Insecta", 50.0), ("Hymenoptera", "Insecta", 17.0), ("Hemiptera", "Insecta", 8.0),
    ("Coleoptera", "Insecta", 6.0), ("Lepidoptera", "Insecta", 4.5), ("Psocodea", "Insecta", 2.2),
    ("Entomobryomorpha", "Collembola", 1.6), ("Araneae", "Arachnida", 1.3),
    ("Thysanoptera", "Insecta", 1.3), ("Trombidiformes", "Arachnida", 1.0),
    ("Trichoptera", "Insecta", 0.9), ("Mesostigmata", "Arachnida", 0.6),
    ("Sarcoptiformes", "Arachnida", 0.6), ("Orthoptera", "Insecta", 0.35),
    ("Blattodea", "Insecta", 0.3), ("Poduromorpha", "Collembola", 0.3),
    ("Symphypleona", "Collembola", 0.3), ("Neuroptera", "Insecta", 0.25),
    ("Ephemeroptera", "Insecta", 0.15), ("Plecoptera", "Insecta", 0.1),
    ("Dermaptera", "Insecta", 0.08), ("Odonata", "Insecta", 0.06), ("Mecoptera", "Insecta", 0.05),
    ("Opiliones", "Arachnida", 0.05), ("Pseudoscorpiones", "Arachnida", 0.05),
    ("Archaeognatha", "Insecta", 0.04), ("Isopoda", "Malacostraca", 0.03),
    ("Zygentoma", "Insecta", 0.03), ("Strepsiptera", "Insecta", 0.03),
    ("Raphidioptera", "Insecta", 0.02), ("Megaloptera", "Insecta", 0.02),
    ("Ixodida", "Arachnida", 0.02), ("Neelipleona", "Collembola", 0.02),
    ("Amphipoda", "Malacostraca", 0.02), ("Mantodea", "Insecta", 0.015),
    ("Siphonaptera", "Insecta", 0.01), ("Polydesmida", "Diplopoda", 0.01),
    ("Julida", "Diplopoda", 0.008), ("Lithobiomorpha", "Chilopoda", 0.008),
    ("Embioptera", "Insecta", 0.008), ("Phasmida", "Insecta", 0.006),
    ("Geophilomorpha", "Chilopoda", 0.005), ("Acerentomata", "Protura", 0.004),
    ("Scorpiones", "Arachnida", 0.004), ("Zoraptera", "Insecta", 0.003),
)  # fmt: skip
# Real family names, most frequent first; the rest of each order's families get made-up names.
FAMILIES = {
    "Diptera": ("Cecidomyiidae", "Chironomidae", "Sciaridae", "Phoridae", "Ceratopogonidae",
                "Psychodidae", "Mycetophilidae", "Muscidae", "Dolichopodidae", "Empididae",
                "Chloropidae", "Sphaeroceridae", "Drosophilidae", "Simuliidae", "Culicidae"),
    "Hymenoptera": ("Ichneumonidae", "Braconidae", "Platygastridae", "Diapriidae", "Formicidae",
                    "Eulophidae", "Mymaridae", "Scelionidae", "Encyrtidae", "Figitidae"),
    "Hemiptera": ("Cicadellidae", "Aphididae", "Psyllidae", "Miridae", "Delphacidae",
                  "Aleyrodidae", "Lygaeidae", "Pentatomidae"),
    "Coleoptera": ("Staphylinidae", "Curculionidae", "Chrysomelidae", "Ptiliidae",
                   "Latridiidae", "Carabidae", "Nitidulidae", "Coccinellidae"),
    "Lepidoptera": ("Gelechiidae", "Tortricidae", "Noctuidae", "Geometridae", "Erebidae",
                    "Crambidae", "Tineidae"),
    "Araneae": ("Linyphiidae", "Theridiidae", "Salticidae", "Araneidae", "Lycosidae"),
    "Entomobryomorpha": ("Entomobryidae", "Isotomidae", "Tomoceridae"),
    "Trombidiformes": ("Eupodidae", "Anystidae", "Bdellidae", "Tetranychidae"),
    "Mesostigmata": ("Laelapidae", "Ascidae", "Parasitidae", "Phytoseiidae"),
    "Psocodea": ("Ectopsocidae", "Lachesillidae", "Psocidae", "Liposcelididae"),
    "Thysanoptera": ("Thripidae", "Phlaeothripidae", "Aeolothripidae"),
}  # fmt: skip
COUNTRIES = (  # name, share, provinces, (lat min, lat max, lon min, lon max)
    ("Canada", 40, ("Ontario", "British Columbia", "Quebec", "Alberta", "Yukon Territory"), (42, 62, -135, -60)),
    ("Costa Rica", 22, ("Guanacaste", "Alajuela", "Puntarenas", "Limon"), (8.3, 11.1, -85.8, -82.6)),
    ("South Africa", 8, ("Western Cape", "KwaZulu-Natal", "Limpopo"), (-34.5, -22.5, 17, 32.5)),
    ("Pakistan", 6, ("Punjab", "Khyber Pakhtunkhwa", "Sindh"), (24.5, 36.5, 61, 75)),
    ("Thailand", 5, ("Chiang Mai", "Kanchanaburi", "Nan"), (6, 20, 98, 105)),
    ("Malaysia", 4, ("Sabah", "Sarawak", "Pahang"), (1, 7, 100, 119)),
    ("United States", 4, ("California", "Alaska", "Texas", "New York"), (25, 49, -124, -67)),
    ("Argentina", 3, ("Misiones", "Buenos Aires", "Salta"), (-40, -22, -68, -54)),
    ("Finland", 2, ("Uusimaa", "Lapland"), (60, 69, 21, 31)),
    ("Kenya", 2, ("Nairobi", "Kakamega"), (-4, 4, 34, 41)),
)  # fmt: skip
# P(labelled down to less than rank k): class 99.9%, order 99.7%, family 95.8%, subfamily 28.6%,
# genus 23.8%, species 9.2% labelled. Depth 0 = phylum only ... 6 = species.
DEPTH_CUTS = (0.001, 0.003, 0.042, 0.714, 0.762, 0.908)
SEEN_CUTS = (289_203 / 343_333, 303_960 / 343_333)  # train / val / test among seen species
UNSEEN_CUTS = (36_465 / 53_171, 45_284 / 53_171)  # key_unseen / val_unseen / test_unseen
BARCODE_NT = 660
_SYLLABLES = np.array([
    "ba", "ca", "da", "fe", "ga", "he", "ki", "la", "mo", "ne", "po", "ra", "si", "ta", "vu",
    "xe", "zo", "lu", "mi", "no", "ri", "sa", "te", "vi", "co", "de", "fi", "go", "hu", "ju",
    "ke", "li", "ma", "nu", "pe", "qui", "ro", "su", "ti", "ve",
])  # fmt: skip


@dataclass(frozen=True)
class Taxonomy:
    """A tree scaled to n records; a dna_bin cluster is a species-like leaf with one family."""

    orders: tuple[str, ...]
    order_names: pl.Series
    class_names: pl.Series
    order_class: np.ndarray  # class index per order
    order_cdf: np.ndarray
    cluster_key: np.ndarray  # order index + cumulative share within the order (searchsorted)
    cluster_family: np.ndarray
    cluster_subfamily: np.ndarray
    cluster_genus: np.ndarray
    cluster_group: np.ndarray  # 0: seen species, 1: unseen species, 2: held out
    family_names: pl.Series
    subfamily_names: pl.Series
    genus_names: pl.Series
    species_names: pl.Series  # per cluster
    bin_names: pl.Series  # per cluster
    country_names: pl.Series
    province_names: pl.Series
    order_base: np.ndarray  # (orders, 660) nucleotide codes 0-3
    family_pattern: np.ndarray  # (1024, 660) code offsets, mostly 0
    cluster_pattern: np.ndarray


def stems(ids: np.ndarray, salt: int, syllables: int) -> list[str]:
    """Pronounceable names, distinct for distinct ids below 40**syllables (a bijection)."""
    code = (np.asarray(ids, np.int64) * 7919 + salt * 104_729) % (40**syllables)
    parts = [_SYLLABLES[(code // 40**i) % 40] for i in range(syllables)]
    return ["".join(p) for p in zip(*parts, strict=True)]


def coprime(k: int) -> int:
    a = max(1, int(k * 0.618))
    while np.gcd(a, k) != 1:
        a += 1
    return a


def build_taxonomy(seed: int, n: int) -> Taxonomy:
    """The orders, families, ... and dna_bin clusters that `n` rows are drawn from."""
    rng = np.random.default_rng([seed, 0x7A8])
    share = np.array([s for *_, s in ORDERS])
    share /= share.sum()
    keys, family, subfamily_keys, genus_keys, family_names = _tree(share, n)
    n_clusters = len(family)
    sub_ids, subfamily = np.unique(subfamily_keys, return_inverse=True)
    gen_ids, genus = np.unique(genus_keys, return_inverse=True)
    genus_names = pl.Series([s.capitalize() for s in stems(np.arange(len(gen_ids)), 3, 3)])
    epithets = pl.Series(stems(np.arange(n_clusters), 4, 4))
    # Species groups by share of records: a random order of the clusters, cut where the
    # cumulative share passes 72.6% (seen), then 11.2% (unseen), then 16.2% (held out).
    mass = np.concatenate([np.diff(key, prepend=o) * share[o] for o, key in enumerate(keys)])
    perm = rng.permutation(n_clusters)
    group = np.empty(n_clusters, np.int8)
    group[perm] = np.searchsorted([0.726, 0.838], np.cumsum(mass[perm]) - mass[perm] / 2)
    classes = list(dict.fromkeys(c for _, c, _ in ORDERS))
    order_class = np.array([classes.index(c) for _, c, _ in ORDERS])
    class_base = rng.integers(0, 4, (len(classes), BARCODE_NT), dtype=np.uint8)
    mutated = rng.random((len(ORDERS), BARCODE_NT)) < 0.2
    order_base = np.where(mutated, rng.integers(0, 4, mutated.shape), class_base[order_class])
    order_cdf = np.cumsum(share)
    order_cdf[-1] = 1.0
    subfamily_names = [s.capitalize() + "inae" for s in stems(np.arange(len(sub_ids)), 2, 3)]
    return Taxonomy(
        orders=tuple(o for o, _, _ in ORDERS),
        order_names=pl.Series([o for o, _, _ in ORDERS]),
        class_names=pl.Series(classes),
        order_class=order_class,
        order_cdf=order_cdf,
        cluster_key=np.concatenate(keys),
        cluster_family=family,
        cluster_subfamily=subfamily,
        cluster_genus=genus,
        cluster_group=group,
        family_names=pl.Series(family_names),
        subfamily_names=pl.Series(subfamily_names),
        genus_names=genus_names,
        species_names=genus_names.gather(genus) + " " + epithets,
        bin_names=pl.Series(_bin_names(n_clusters)),
        country_names=pl.Series([c for c, *_ in COUNTRIES]),
        province_names=pl.Series([p for _, _, ps, _ in COUNTRIES for p in ps]),
        order_base=order_base.astype(np.uint8),
        family_pattern=_sparse_codes(rng, 0.08),
        cluster_pattern=_sparse_codes(rng, 0.02),
    )


def _tree(share: np.ndarray, n: int):
    """Clusters per order (Zipf-sized), grouped into families, subfamilies and genera.

    Returns per-order sampling keys, then per cluster: family id, subfamily key, genus key,
    and the family names. Distinct values grow sub-linearly with n, reaching the release's
    counts (324,411 BINs, 934 families) at its 5,150,850 records.
    """
    scale = n / BIOSCAN5M_ROWS
    n_bins = int(np.clip(round(324_411 * scale**0.75), 4 * len(ORDERS), 324_411))
    k = np.maximum(2, np.round(n_bins * share**0.8 / (share**0.8).sum())).astype(np.int64)
    f = np.clip(np.round(934 * min(1.0, scale**0.3) * share**0.5 / (share**0.5).sum()), 1, k)
    per_genus = max(1, round(43 * n_bins / 324_411))
    per_subfamily = max(1, round(210 * n_bins / 324_411))
    keys, families, subfamily_keys, genus_keys, family_names = [], [], [], [], []
    for o, (order, _, _) in enumerate(ORDERS):
        ranks = np.arange(k[o])
        cdf = np.cumsum((ranks + 2.0) ** -1.1)  # Zipf: a few clusters hold most records
        keys.append(o + cdf / cdf[-1])
        pos = ranks * coprime(int(k[o])) % k[o]  # scatter frequent clusters over families
        bounds = np.cumsum(1.0 / np.arange(1, f[o] + 1))  # family sizes fall off as 1/rank
        bounds = np.round(bounds / bounds[-1] * k[o]).astype(np.int64)
        family = np.minimum(np.searchsorted(bounds, pos, side="right"), int(f[o]) - 1)
        within = pos - np.concatenate([[0], bounds])[family]
        family += len(family_names)
        families.append(family)
        subfamily_keys.append(family * 10**7 + within // per_subfamily)
        genus_keys.append(family * 10**7 + within // per_genus)
        real = FAMILIES.get(order, ())
        family_names += [real[i] if i < len(real) else "" for i in range(int(f[o]))]
    made_up = stems(np.arange(len(family_names)), 1, 2)
    family_names = [name or made_up[i].capitalize() + "idae" for i, name in enumerate(family_names)]
    return (keys, np.concatenate(families), np.concatenate(subfamily_keys),
            np.concatenate(genus_keys), family_names)  # fmt: skip


def _bin_names(n_clusters: int) -> list[str]:
    """BOLD:AAA0000-style codes, distinct (a bijection on 26**3 * 10**4) and scattered."""
    codes = (np.arange(n_clusters, dtype=np.int64) * 7919 + 544_856) % 175_760_000
    return [
        f"BOLD:{chr(65 + c // 6_760_000)}{chr(65 + c // 260_000 % 26)}"
        f"{chr(65 + c // 10_000 % 26)}{c % 10_000:04d}"
        for c in codes.tolist()
    ]


def _sparse_codes(rng: np.random.Generator, rate: float) -> np.ndarray:
    hit = rng.random((1024, BARCODE_NT)) < rate
    return np.where(hit, rng.integers(1, 4, (1024, BARCODE_NT)), 0).astype(np.uint8)


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
    return meta.with_columns(taxon=taxon).select(METADATA_COLUMNS)


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
