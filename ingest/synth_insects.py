"""Synthetic Insects-1M (SPEC section 3) in the layout of the built-in `insects-1m` profile.

OUT_DIR/metadata.csv has the columns image_id, file_name, class, order, suborder,
superfamily, family, subfamily, tribe, subtribe, genus, species (no split column, no DNA);
every image is OUT_DIR/images/<file_name>, file_name = <order>/<image_id>.jpg, a 512x384
JPEG. Ingest it with

    bionas ingest OUT_DIR/metadata.csv --images OUT_DIR/images --profile insects-1m \\
        --split-source random --out DATASET_DIR

Order counts are allotted exactly from ORDERS (largest remainder), so n = 1,017,036 gives
ORDERS' counts: 38 orders with >= 500 images and 16 below (39 classes with `Other`, as in
the paper); every order keeps at least one image once n >= 2 per order. Each species gets
one image before the rest are drawn (Zipf within its order), so all 34,212 species occur at
full size. Suborder, superfamily, subfamily, tribe and subtribe exist only in some lineages;
a few images are identified to genus or family only. Shared orders are drawn by the same
`render_specimen` as synthetic BIOSCAN-5M (a model trained on one recognises the other);
the specimen fills most of the frame because this layout has no bbox table.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from bionas.errors import BionasError
from bionas.ingest.profiles import INSECTS_1M_COLUMNS
from bionas.ingest.synth import SynthConfig, SynthSummary, draw_images, image_pool, prepare_out_dir
from bionas.ingest.synth_bioscan_tree import coprime, stems
from bionas.ingest.synth_images import HEIGHT, WIDTH, ImageTask, encode, render_specimen

log = logging.getLogger(__name__)

INSECTS1M_ROWS = 1_017_036
INSECTS1M_SPECIES = 34_212
INSECTS1M_FAMILIES = 1_150
OUTPUT_NAMES = ("metadata.csv", "images")
PHOTO_REDUCE = 2  # drawn at 1024x768, stored at 512x384
ROW_SALT = 1 << 40  # decorrelates the drawings from synthetic BIOSCAN rows of the same seed
SPECIES_ONLY_TO_GENUS = 0.02  # share of images identified to genus, not species
ONLY_TO_FAMILY = 0.005  # ... and to family only
# (order, class, images at n = 1,017,036, suborders); orders missing from synthetic
# BIOSCAN-5M: Solifugae, Amblypygi, Thelyphonida, Grylloblattodea, Mantophasmatodea,
# Schizomida, Scolopendromorpha, Palpigradi, Ricinulei, Scutigeromorpha, Spirobolida, Decapoda.
ORDERS = (
    ("Lepidoptera", "Insecta", 295_242, ()),
    ("Coleoptera", "Insecta", 200_000, ("Polyphaga", "Adephaga", "Myxophaga", "Archostemata")),
    ("Hymenoptera", "Insecta", 120_000, ("Apocrita", "Symphyta")),
    ("Diptera", "Insecta", 105_000, ("Brachycera", "Nematocera")),
    ("Hemiptera", "Insecta", 95_000, ("Heteroptera", "Auchenorrhyncha", "Sternorrhyncha")),
    ("Odonata", "Insecta", 60_000, ("Anisoptera", "Zygoptera")),
    ("Orthoptera", "Insecta", 45_000, ("Caelifera", "Ensifera")),
    ("Araneae", "Arachnida", 25_000, ("Araneomorphae", "Mygalomorphae", "Mesothelae")),
    ("Neuroptera", "Insecta", 9_000, ("Hemerobiiformia", "Myrmeleontiformia")),
    ("Mantodea", "Insecta", 8_000, ()), ("Blattodea", "Insecta", 7_000, ()),
    ("Trichoptera", "Insecta", 6_000, ("Integripalpia", "Annulipalpia")),
    ("Ephemeroptera", "Insecta", 5_000, ()),
    ("Plecoptera", "Insecta", 4_000, ("Arctoperlaria", "Antarctoperlaria")),
    ("Phasmida", "Insecta", 3_500, ()), ("Dermaptera", "Insecta", 3_000, ()),
    ("Megaloptera", "Insecta", 2_500, ()), ("Mecoptera", "Insecta", 2_000, ()),
    ("Opiliones", "Arachnida", 1_800, ("Eupnoi", "Laniatores")),
    ("Psocodea", "Insecta", 1_500, ("Psocomorpha", "Troctomorpha")),
    ("Scorpiones", "Arachnida", 1_400, ()),
    ("Thysanoptera", "Insecta", 1_200, ("Terebrantia", "Tubulifera")),
    ("Raphidioptera", "Insecta", 1_100, ()), ("Siphonaptera", "Insecta", 1_000, ()),
    ("Zygentoma", "Insecta", 950, ()), ("Archaeognatha", "Insecta", 900, ()),
    ("Trombidiformes", "Arachnida", 850, ()), ("Ixodida", "Arachnida", 800, ()),
    ("Solifugae", "Arachnida", 750, ()), ("Amblypygi", "Arachnida", 700, ()),
    ("Pseudoscorpiones", "Arachnida", 650, ()), ("Embioptera", "Insecta", 600, ()),
    ("Strepsiptera", "Insecta", 560, ()), ("Thelyphonida", "Arachnida", 540, ()),
    ("Grylloblattodea", "Insecta", 520, ()), ("Mantophasmatodea", "Insecta", 510, ()),
    ("Zoraptera", "Insecta", 505, ()), ("Mesostigmata", "Arachnida", 500, ()),
    # below the paper's 500-image threshold at full size: folded into Other
    ("Sarcoptiformes", "Arachnida", 499, ()), ("Entomobryomorpha", "Collembola", 450, ()),
    ("Schizomida", "Arachnida", 420, ()), ("Poduromorpha", "Collembola", 380, ()),
    ("Scolopendromorpha", "Chilopoda", 350, ()), ("Polydesmida", "Diplopoda", 330, ()),
    ("Palpigradi", "Arachnida", 300, ()), ("Isopoda", "Malacostraca", 280, ()),
    ("Symphypleona", "Collembola", 260, ()), ("Lithobiomorpha", "Chilopoda", 240, ()),
    ("Julida", "Diplopoda", 210, ()), ("Ricinulei", "Arachnida", 200, ()),
    ("Scutigeromorpha", "Chilopoda", 180, ()), ("Spirobolida", "Diplopoda", 150, ()),
    ("Amphipoda", "Malacostraca", 120, ()), ("Decapoda", "Malacostraca", 90, ()),
)  # fmt: skip
SUPERFAMILY_ORDERS = frozenset(
    {"Lepidoptera", "Coleoptera", "Hymenoptera", "Diptera", "Hemiptera", "Orthoptera",
     "Araneae", "Trichoptera", "Neuroptera", "Blattodea"}
)  # fmt: skip
# Real family names of photographed insects, most frequent first; the rest are made up.
FAMILIES = {
    "Lepidoptera": ("Nymphalidae", "Erebidae", "Geometridae", "Noctuidae", "Lycaenidae",
                    "Pieridae", "Crambidae", "Papilionidae", "Hesperiidae", "Sphingidae"),
    "Coleoptera": ("Carabidae", "Coccinellidae", "Chrysomelidae", "Cerambycidae",
                   "Scarabaeidae", "Curculionidae", "Buprestidae", "Elateridae", "Lampyridae"),
    "Hymenoptera": ("Apidae", "Formicidae", "Vespidae", "Ichneumonidae", "Halictidae",
                    "Megachilidae", "Tenthredinidae"),
    "Diptera": ("Syrphidae", "Tachinidae", "Asilidae", "Muscidae", "Calliphoridae",
                "Tipulidae", "Bombyliidae", "Culicidae"),
    "Hemiptera": ("Pentatomidae", "Coreidae", "Cicadidae", "Reduviidae", "Miridae",
                  "Cicadellidae", "Membracidae", "Aphididae"),
    "Odonata": ("Libellulidae", "Coenagrionidae", "Aeshnidae", "Gomphidae", "Calopterygidae"),
    "Orthoptera": ("Acrididae", "Tettigoniidae", "Gryllidae", "Pyrgomorphidae"),
    "Araneae": ("Araneidae", "Salticidae", "Thomisidae", "Lycosidae", "Theridiidae"),
}  # fmt: skip
# Lineages that use the optional ranks (drawn per taxon, so a genus keeps its ranks).
P_SUPERFAMILY, P_SUBFAMILY, P_TRIBE, P_SUBTRIBE = 0.6, 0.7, 0.5, 0.35
SPECIES_PER = {"genus": 3, "subtribe": 6, "tribe": 12, "subfamily": 36}  # each divides the next
FAMILIES_PER_SUPERFAMILY = 3
ORDERS_SUBORDERS = tuple(s for *_, subs in ORDERS for s in subs)
RANK_COLUMNS = ("suborder", "superfamily", "family", "subfamily", "tribe", "subtribe", "genus",
                "species")  # fmt: skip


@dataclass(frozen=True)
class Tree:
    """Per species (global index): its order and the ids of its ranks (-1: rank not used)."""

    order_species: np.ndarray  # species per order
    ranks: dict[str, np.ndarray]  # rank -> id per species
    names: dict[str, pl.Series]  # rank -> name per id


def allot(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to `weights` summing to `total` (largest remainder, exact)."""
    weights = np.asarray(weights, np.int64)
    base, rest = np.divmod(weights * total, weights.sum())
    extra = total - int(base.sum())
    base[np.lexsort((np.arange(len(rest)), -rest))[:extra]] += 1
    return base


def order_counts(n: int) -> np.ndarray:
    """Images per order for n images; every order gets one once n allows it."""
    weights = np.array([c for _, _, c, _ in ORDERS])
    counts = allot(weights, n)
    if n >= 2 * len(ORDERS) and (counts == 0).any():
        counts = 1 + allot(weights, n - len(ORDERS))
    return counts


def build_tree(seed: int, n: int, counts: np.ndarray) -> Tree:
    """Species per order (Zipf-ranked), grouped into genera ... families, superfamilies."""
    scale = min(1.0, n / INSECTS1M_ROWS)
    n_species = int(np.clip(round(INSECTS1M_SPECIES * scale**0.75), len(ORDERS), n))
    k = np.minimum(np.maximum(allot(np.round(counts**0.8 * 1000), n_species), 1), counts.clip(1))
    f = np.clip(np.round(INSECTS1M_FAMILIES * scale**0.3 * counts**0.5 / (counts**0.5).sum()), 1, k)
    keys, suborder, family_names = _group_species(k, f.astype(np.int64))
    ranks = {"family": keys.pop("family"), "suborder": suborder}
    names = {"family": pl.Series(family_names), "suborder": pl.Series(ORDERS_SUBORDERS)}
    suffix = {"superfamily": "oidea", "subfamily": "inae", "tribe": "ini", "subtribe": "ina"}
    for salt, rank in enumerate(("superfamily", "subfamily", "tribe", "subtribe", "genus"), 12):
        ranks[rank], count = _dense(keys[rank])
        made_up = stems(np.arange(count), salt, 2 if rank == "superfamily" else 3)
        names[rank] = pl.Series([s.capitalize() + suffix.get(rank, "") for s in made_up])
    _drop_unused_ranks(ranks, np.random.default_rng([seed, 0x1A5]))
    epithets = pl.Series(stems(np.arange(len(ranks["genus"])), 17, 4))
    names["species"] = names["genus"].gather(ranks["genus"]) + " " + epithets
    ranks["species"] = np.arange(len(ranks["genus"]))
    return Tree(order_species=k, ranks=ranks, names=names)


def _group_species(k: np.ndarray, f: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, list]:
    """Per species: keys of its family, genus ... subfamily, superfamily (-1: none), its
    suborder (-1: none); and the family names."""
    keys: dict[str, list[np.ndarray]] = {r: [] for r in ("family", *SPECIES_PER, "superfamily")}
    suborder, family_names = [], []
    for o, (order, _, _, suborders) in enumerate(ORDERS):
        pos = np.arange(k[o]) * coprime(int(k[o])) % k[o]  # scatter frequent species
        bounds = np.cumsum(1.0 / np.arange(1, f[o] + 1))  # family sizes fall off as 1/rank
        bounds = np.round(bounds / bounds[-1] * k[o]).astype(np.int64)
        local = np.minimum(np.searchsorted(bounds, pos, side="right"), f[o] - 1)
        within = pos - np.concatenate([[0], bounds])[local]
        family = local + len(family_names)
        keys["family"].append(family)
        for rank, per in SPECIES_PER.items():  # nested: each size divides the next
            keys[rank].append(family * 10**7 + within // per)
        group = local // FAMILIES_PER_SUPERFAMILY  # suborders split along superfamilies
        keys["superfamily"].append(np.where(order in SUPERFAMILY_ORDERS, o * 10**7 + group, -1))
        sub = [ORDERS_SUBORDERS.index(s) for s in suborders]
        suborder.append(np.take(sub, group % len(sub)) if sub else np.full(k[o], -1))
        real = FAMILIES.get(order, ())
        family_names += [real[i] if i < len(real) else "" for i in range(f[o])]
    made_up = stems(np.arange(len(family_names)), 11, 3)
    family_names = [name or made_up[i].capitalize() + "idae" for i, name in enumerate(family_names)]
    return {r: np.concatenate(v) for r, v in keys.items()}, np.concatenate(suborder), family_names


def _drop_unused_ranks(ranks: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """Optional ranks: each taxon uses the rank or not (so a genus keeps its ranks); a
    lineage without a subfamily has no tribe, one without a tribe no subtribe."""
    parent = np.ones(len(ranks["family"]), bool)
    for rank, p in (("superfamily", P_SUPERFAMILY), ("subfamily", P_SUBFAMILY),
                    ("tribe", P_TRIBE), ("subtribe", P_SUBTRIBE)):  # fmt: skip
        ids = ranks[rank]
        used = (rng.random(int(ids.max()) + 1) < p)[ids.clip(0)] & (ids >= 0)
        if rank != "superfamily":
            used = parent = parent & used
        ranks[rank] = np.where(used, ids, -1)


def _dense(key: np.ndarray) -> tuple[np.ndarray, int]:
    """Keys -> ids 0..count-1 in key order; a negative key (rank not used) stays -1."""
    valid = key >= 0
    ids = np.full(len(key), -1, np.int64)
    unique, ids[valid] = np.unique(key[valid], return_inverse=True)
    return ids, len(unique)


def sample_images(seed: int, counts: np.ndarray, tree: Tree) -> dict[str, np.ndarray]:
    """Order, species and identification depth per image, in file order."""
    rng = np.random.default_rng([seed, 0x5A3])
    order = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    by_order = np.argsort(order, kind="stable")
    start = np.concatenate([[0], np.cumsum(counts)])
    rank_in_order = np.empty(len(order), np.int64)
    rank_in_order[by_order] = np.arange(len(order)) - np.repeat(start[:-1], counts)
    first = np.concatenate([[0], np.cumsum(tree.order_species)])
    # Zipf within each order: key = order + cumulative share, searched like a CDF
    keys = np.concatenate([o + _zipf_cdf(int(k)) for o, k in enumerate(tree.order_species)])
    drawn = np.searchsorted(keys, order + rng.random(len(order)), side="right")
    guaranteed = rank_in_order < tree.order_species[order]  # one image per species first
    species = np.where(
        guaranteed, first[order] + rank_in_order, np.minimum(drawn, first[order + 1] - 1)
    )
    u = rng.random(len(order))
    depth = np.where(
        guaranteed, 2, np.select([u < ONLY_TO_FAMILY, u < SPECIES_ONLY_TO_GENUS], [0, 1], 2)
    )
    return {"order": order, "species": species, "depth": depth}


def _zipf_cdf(k: int) -> np.ndarray:
    cdf = np.cumsum((np.arange(k) + 2.0) ** -1.1)
    return cdf / cdf[-1]


def metadata_frame(images: dict[str, np.ndarray], tree: Tree) -> pl.DataFrame:
    """The metadata.csv rows in the profile's column order; None = empty cell."""
    species, depth = images["species"], images["depth"]
    hidden_below_family = ("subfamily", "tribe", "subtribe", "genus", "species")
    ids = {"row": np.arange(len(species)), "order": images["order"]}
    for rank in RANK_COLUMNS:
        column = tree.ranks[rank][species]
        if rank in hidden_below_family:
            column = np.where(depth >= (2 if rank == "species" else 1), column, -1)
        ids[rank] = column
    frame = pl.DataFrame(ids)

    def named(table: pl.Series, column: str) -> pl.Expr:
        return pl.when(pl.col(column) >= 0).then(pl.lit(table).gather(pl.col(column).clip(0)))

    order_names = pl.Series([o for o, *_ in ORDERS])
    class_names = pl.Series([c for _, c, *_ in ORDERS])
    number = ((pl.col("row") * 7919 + 1_234_567) % 10**7).cast(pl.String).str.zfill(7)
    meta = frame.select(
        image_id=pl.format("I1M{}", number),  # a bijection on 10**7 ids: never a clash
        **{"class": pl.lit(class_names).gather(pl.col("order"))},
        order=pl.lit(order_names).gather(pl.col("order")),
        **{rank: named(tree.names[rank], rank) for rank in RANK_COLUMNS},
    )
    meta = meta.with_columns(file_name=pl.format("{}/{}.jpg", "order", "image_id"))
    return meta.select(INSECTS_1M_COLUMNS)


def frame_boxes(rng: np.random.Generator, m: int) -> np.ndarray:
    """Where the specimen is drawn: 55-80% of the frame, near its centre (a close-up photo)."""
    size, aspect = rng.uniform(0.55, 0.8, m), np.exp(rng.uniform(-0.3, 0.3, m))
    w = np.clip(np.round(size * WIDTH * np.sqrt(aspect)), 32, WIDTH - 16)
    h = np.clip(np.round(size * HEIGHT / np.sqrt(aspect)), 24, HEIGHT - 16)
    x0 = np.clip(np.round(rng.normal(WIDTH / 2, WIDTH * 0.04, m) - w / 2), 8, WIDTH - 8 - w)
    y0 = np.clip(np.round(rng.normal(HEIGHT / 2, HEIGHT * 0.04, m) - h / 2), 8, HEIGHT - 8 - h)
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1).astype(np.int64)


def write_photo(task: ImageTask) -> str:
    """Draw one image at 1024x768, store it at 512x384 (the Pool worker); returns its path."""
    image = render_specimen(task.seed, task.row, task.order, task.bbox).reduce(PHOTO_REDUCE)
    Path(task.path).write_bytes(encode(image))
    return task.path


def generate_insects1m(config: SynthConfig) -> SynthSummary:
    """Insects-1M: metadata.csv in the `insects-1m` profile's layout, images/<order>/*.jpg."""
    if config.corrupt:
        raise BionasError(
            "--corrupt plants bad inputs in the bioscan-5m layout only; drop it for --profile insects-1m"
        )
    counts = order_counts(config.n)
    tree = build_tree(config.seed, config.n, counts)
    images = sample_images(config.seed, counts, tree)
    meta = metadata_frame(images, tree)
    out = prepare_out_dir(config.out_dir, config.overwrite, OUTPUT_NAMES)
    meta.write_csv(out / "metadata.csv")
    n_images = 0
    if config.images:
        root = out / "images"
        for order in sorted(set(meta["order"])):
            (root / order).mkdir(parents=True, exist_ok=True)
        boxes = frame_boxes(np.random.default_rng([config.seed, 0xB0C]), meta.height).tolist()
        names = [o for o, *_ in ORDERS]
        tasks = [
            ImageTask(str(root / path), config.seed, ROW_SALT + i, names[o], tuple(boxes[i]))
            for i, (path, o) in enumerate(zip(meta["file_name"], images["order"].tolist(), strict=True))
        ]  # fmt: skip
        with ExitStack() as stack:
            n_images = draw_images(tasks, image_pool(stack, config), config.progress, write_photo)
    by_count = np.argsort(-counts, kind="stable")
    log.info("wrote %d metadata rows, %d images to %s", meta.height, n_images, out)
    return SynthSummary(
        out_dir=out,
        metadata_csv=out / "metadata.csv",
        bbox_tsv=None,
        corruptions_json=None,
        images_root=out / "images" if config.images else None,
        n_specimens=meta.height,
        n_metadata_rows=meta.height,
        n_bbox_rows=0,
        n_images=n_images,
        split_counts={},
        order_counts={ORDERS[i][0]: int(counts[i]) for i in by_count if counts[i]},
        natural_empty_order=[],
        corruptions={},
        accepted_variants={},
    )
