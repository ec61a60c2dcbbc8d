"""The synthetic BIOSCAN-5M tree of life: orders, families, ..., dna_bin clusters.

`build_taxonomy` scales the tree to n records with the release's shares (SPEC section 3):
long-tailed orders, families and genera that grow sub-linearly with n, dna_bin clusters
with barcode patterns, and the countries specimens come from.
`bionas.ingest.synth_bioscan_rows` draws the rows from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

BIOSCAN5M_ROWS = 5_150_850

# (order, class, expected order-labelled records at n = 5,150,850); a share is its count over
# the sum (5,135,396, the 99.7% of rows with an order). 55 orders in 10 classes (SPEC section 3).
# From the paper (BioAutoML-NAS section IV-B, 70/20/10 random split): Diptera 3,675,700 (2,573,047
# train / 0.7, 735,121 val / 0.2; 71.6%), Hymenoptera 574,000 (114,809 val / 0.2; 11.2%),
# Mesostigmata 4,700 (937 val / 0.2; "among the least represented" kept orders), Anomopoda 234
# (164 train / 0.7), and 21 orders with >= 500 records. Our assumption: every other count, hence
# the ranks between the named orders, and Anomopoda below 500 (so folded into Other: the paper
# names it as its smallest training order, which its own 500 cut would have folded). The 21st
# order (1,000) and the 22nd (234) sit far from 500, so sampling noise never changes the 21;
# all 55 orders, down to 6 records, occur at full size (one goes missing in ~1.6% of seeds).
ORDERS = (
    ("Diptera", "Insecta", 3_675_700), ("Hymenoptera", "Insecta", 574_000),
    ("Hemiptera", "Insecta", 250_700), ("Coleoptera", "Insecta", 200_000),
    ("Lepidoptera", "Insecta", 125_000), ("Psocodea", "Insecta", 70_000),
    ("Entomobryomorpha", "Collembola", 62_000), ("Araneae", "Arachnida", 41_000),
    ("Trombidiformes", "Arachnida", 36_000), ("Thysanoptera", "Insecta", 28_000),
    ("Sarcoptiformes", "Arachnida", 20_000), ("Trichoptera", "Insecta", 14_000),
    ("Poduromorpha", "Collembola", 9_000), ("Symphypleona", "Collembola", 7_500),
    ("Orthoptera", "Insecta", 6_000), ("Mesostigmata", "Arachnida", 4_700),
    ("Blattodea", "Insecta", 3_500), ("Neuroptera", "Insecta", 2_600),
    ("Ephemeroptera", "Insecta", 1_900), ("Dermaptera", "Insecta", 1_400),
    ("Plecoptera", "Insecta", 1_000),
    # below the paper's 500-record threshold at full size: folded into Other
    ("Anomopoda", "Branchiopoda", 234), ("Archaeognatha", "Insecta", 180),
    ("Pseudoscorpiones", "Arachnida", 150), ("Opiliones", "Arachnida", 125),
    ("Mecoptera", "Insecta", 100), ("Isopoda", "Malacostraca", 85),
    ("Strepsiptera", "Insecta", 70), ("Neelipleona", "Collembola", 58),
    ("Odonata", "Insecta", 48), ("Megaloptera", "Insecta", 40),
    ("Raphidioptera", "Insecta", 34), ("Zygentoma", "Insecta", 29),
    ("Amphipoda", "Malacostraca", 25), ("Ixodida", "Arachnida", 22),
    ("Cyclopoida", "Copepoda", 19), ("Podocopida", "Ostracoda", 17),
    ("Polydesmida", "Diplopoda", 15), ("Mantodea", "Insecta", 14), ("Julida", "Diplopoda", 13),
    ("Lithobiomorpha", "Chilopoda", 12), ("Harpacticoida", "Copepoda", 11),
    ("Siphonaptera", "Insecta", 10), ("Acerentomata", "Protura", 9),
    ("Geophilomorpha", "Chilopoda", 9), ("Chordeumatida", "Diplopoda", 8),
    ("Embioptera", "Insecta", 8), ("Phasmida", "Insecta", 7), ("Polyxenida", "Diplopoda", 7),
    ("Opilioacarida", "Arachnida", 7), ("Eosentomata", "Protura", 6),
    ("Glomerida", "Diplopoda", 6), ("Holothyrida", "Arachnida", 6),
    ("Scorpiones", "Arachnida", 6), ("Zoraptera", "Insecta", 6),
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
    share = np.array([c for *_, c in ORDERS], dtype=float)
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
