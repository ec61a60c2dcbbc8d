"""A tiny but real bionas dataset for trainer tests, written with bionas's own writer,
vocabularies and manifest (the same files `bionas ingest` writes), in well under a second.

Each class has its own colour and shape, so a small network learns it in a few steps.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw

from bionas.manifests.manifest import SHARD_DIR, VOCAB_DIR, write_manifest
from bionas.manifests.vocab import build_vocab, write_vocab
from bionas.shards.format import (
    CATEGORICAL_FIELDS,
    NUMERIC_FIELDS,
    encode_record,
    shard_name,
)
from bionas.shards.writer import Sample, write_shard

ORDERS = ("Diptera", "Hymenoptera", "Coleoptera", "Hemiptera", "Lepidoptera", "Araneae")
COLOURS = (
    (220, 40, 40),
    (40, 180, 40),
    (40, 40, 220),
    (200, 200, 30),
    (160, 40, 160),
    (30, 30, 30),
)


def tiny_record(processid: str, split: str, cls: int, rng: random.Random) -> dict:
    """A record whose ranks follow the class (family and below are finer labels)."""
    order = ORDERS[cls % len(ORDERS)]
    family = f"{order[:4]}idae{rng.randint(0, 1)}"
    record: dict = {field: None for field in CATEGORICAL_FIELDS}
    record.update(
        processid=processid,
        split=split,
        phylum="Arthropoda",
        **{"class": "Arachnida" if order == "Araneae" else "Insecta"},
        order=order,
        family=family,
        genus=f"{family}_g{rng.randint(0, 2)}",
        taxon=family,
        dna_bin=f"BOLD:A{cls}{rng.randint(0, 3)}",
        country=rng.choice(("Canada", "Costa Rica", None)),
    )
    record.update({field: None for field in NUMERIC_FIELDS})
    record["area_fraction"] = round(rng.uniform(0.05, 0.5), 3)
    return record


def tiny_jpeg(cls: int, image_size: int, rng: random.Random) -> bytes:
    """A JPEG whose background colour and shape depend on the class."""
    background = tuple(min(255, c + rng.randint(0, 25)) for c in COLOURS[cls % len(COLOURS)])
    image = Image.new("RGB", (image_size + rng.randint(0, 8), image_size), background)
    draw = ImageDraw.Draw(image)
    lo, hi = image_size // 4, 3 * image_size // 4
    if cls % 2 == 0:
        draw.ellipse((lo, lo, hi, hi), fill=(250, 250, 250))
    else:
        draw.rectangle((lo, lo, hi, hi), fill=(5, 5, 5))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def make_tiny_dataset(
    root: Path,
    n: int = 64,
    classes: int = 4,
    image_size: int = 32,
    shards_per_split: int = 4,
    seed: int = 0,
    compression: str = "none",
    n_val: int | None = None,
    target: str = "order",
) -> Path:
    """Write DATASET_DIR with `n` train and `n_val` (default n // 4) val samples; returns root.

    Samples are assigned to classes round-robin, so every class has about n / classes.
    """
    root = Path(root)
    rng = random.Random(seed)
    sizes = {"train": n, "val": n // 4 if n_val is None else n_val}
    records: dict[str, list[dict]] = {}
    images: dict[str, bytes] = {}
    for split, count in sizes.items():
        records[split] = []
        for i in range(count):
            pid = f"{split[:2].upper()}{i:05d}"
            cls = i % classes
            records[split].append(tiny_record(pid, split, cls, rng))
            images[pid] = tiny_jpeg(cls, image_size, rng)

    splits_body = {}
    for split, recs in records.items():
        shard_count = min(shards_per_split, len(recs)) if split == "train" else 1
        shard_count = max(shard_count, 1)
        shards = []
        for s in range(shard_count):
            part = recs[s::shard_count]
            samples = [
                Sample(r["processid"], images[r["processid"]], encode_record(r)) for r in part
            ]
            name = shard_name(split, s, compression)
            shards.append(write_shard(root / SHARD_DIR / split / name, samples, compression))
        splits_body[split] = {
            "samples": sum(s.samples for s in shards),
            "bytes": sum(s.bytes for s in shards),
            "shards": [s.to_json() for s in shards],
        }

    vocabs = {}
    train = records["train"]
    for field in CATEGORICAL_FIELDS:
        counts = Counter(r[field] for r in train if r[field])
        role = "target" if field == target else "feature"
        vocab = build_vocab(field, counts, role=role, min_count=1, counted_splits=("train",))
        path = write_vocab(vocab, root / VOCAB_DIR)
        vocabs[field] = {"file": f"{VOCAB_DIR}/{path.name}", "sha256": vocab.sha256}

    class_counts = {
        split: dict(sorted(Counter(r[target] for r in recs).items()))
        for split, recs in records.items()
    }
    write_manifest(
        root,
        {
            "target": target,
            "categorical_fields": list(CATEGORICAL_FIELDS),
            "splits": splits_body,
            "class_counts": class_counts,
            "vocabs": vocabs,
            "options": {"generator": "tests.datasets.make_tiny_dataset", "seed": seed},
        },
    )
    return root
