"""`IngestConfig`: every option of `bionas ingest`, validated once."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from bionas.errors import BionasError

OFFICIAL_SPLITS = (
    "pretrain",
    "train",
    "val",
    "test",
    "key_unseen",
    "val_unseen",
    "test_unseen",
    "other_heldout",
)
RANDOM_SPLITS = ("train", "val", "test")
TARGET_SHARD_BYTES = 100_000_000
# BIOSCAN's image packages: original_full and original_256 hold whole photos (the bbox
# table's boxes apply, scaled to the frame); cropped_256 (and BIOSCAN-1M's cropped) hold
# photos already cut to the box.
CROPPED_PACKAGE = re.compile(r"cropped(_\d+)?", re.IGNORECASE)


@dataclass(frozen=True)
class IngestConfig:
    metadata: Path
    images: Path
    out: Path
    bbox: Path | None = None
    profile: str = "bioscan-5m"
    profile_file: Path | None = None  # a user's TOML profile, instead of a built-in one
    target: str = "order"
    min_class_count: int = 500
    split_source: str = "random"  # "official" (the split column) or "random" (seeded hash)
    split_ratios: tuple[float, ...] = (0.7, 0.2, 0.1)
    splits: tuple[str, ...] | None = None  # which splits to write; None = all
    seed: int = 0
    size: int = 256
    quality: int = 90
    crop_margin: float = 0.1
    shard_size: int | None = None  # samples per shard; None = aim at ~100 MB shards
    compression: str = "none"
    workers: int = 0  # 0 = all cores
    executor: str = "local"  # "local" (process pool) or "ray"
    ray_address: str | None = (
        None  # None: start a local Ray; else e.g. "auto" or "ray://host:10001"
    )
    limit: int | None = None
    with_barcode: bool = False
    overwrite: bool = False  # replace a dataset made with other options (else: refuse)

    def __post_init__(self) -> None:
        if self.split_source not in ("official", "random"):
            raise BionasError(f"--split-source must be official or random, not {self.split_source}")
        if self.split_source == "random":
            if len(self.split_ratios) != len(RANDOM_SPLITS) or any(
                r < 0 for r in self.split_ratios
            ):
                raise BionasError("--split-ratios takes three non-negative numbers: train,val,test")
            if abs(sum(self.split_ratios) - 1.0) > 1e-6:
                raise BionasError(f"--split-ratios must sum to 1, not {sum(self.split_ratios):g}")
        if self.executor not in ("local", "ray"):
            raise BionasError(f"--executor must be local or ray, not {self.executor}")
        if self.compression not in ("none", "zstd"):
            raise BionasError(f"--compression must be none or zstd, not {self.compression}")
        if not 1 <= self.quality <= 100:
            raise BionasError("--quality must be between 1 and 100")
        if self.size < 8:
            raise BionasError("--size must be at least 8 pixels")
        if self.crop_margin < 0:
            raise BionasError("--crop-margin must be >= 0")
        if self.shard_size is not None and self.shard_size < 1:
            raise BionasError("--shard-size must be at least 1")
        if self.min_class_count < 1:
            raise BionasError("--min-class-count must be at least 1")
        if self.bbox is not None and CROPPED_PACKAGE.fullmatch(Path(self.images).name):
            raise BionasError(
                f"{self.images} looks like BIOSCAN's {Path(self.images).name} image package, "
                "whose photos are already cropped to the specimen: --bbox would crop them "
                "a second time. Leave out --bbox for it, or point --images at original_full "
                "(or original_256) to crop from the whole photos."
            )

    @property
    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)

    @property
    def split_names(self) -> tuple[str, ...]:
        return OFFICIAL_SPLITS if self.split_source == "official" else RANDOM_SPLITS

    def resolved_shard_size(self) -> int:
        """Samples per shard: given, or estimated so shards come out near 100 MB."""
        if self.shard_size is not None:
            return self.shard_size
        # a q90 JPEG of a photo-like crop takes about 0.35 bytes per pixel; 4:3 frames
        bytes_per_sample = 0.35 * self.size * self.size * 4 / 3 + 1024
        return max(1, round(TARGET_SHARD_BYTES / bytes_per_sample))

    def recorded_options(self) -> dict:
        """The options that determine the output (not paths or worker count)."""
        body = asdict(self)
        for key in (
            "metadata",
            "images",
            "out",
            "bbox",
            "workers",
            "profile_file",
            "executor",
            "ray_address",
            "overwrite",
        ):
            body.pop(key)
        body["shard_size"] = self.resolved_shard_size()
        body["split_ratios"] = list(self.split_ratios)
        body["splits"] = list(self.splits) if self.splits else None
        return body
