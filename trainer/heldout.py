"""The held-out slice of train that θ steps read with `--arch-data heldout`: whole shards.

Ingest puts each split's samples in a seeded hash order of the processid and cuts that
order into consecutive runs, one per shard (`bionas.ingest.plan.order_and_shard`), so
every train shard is a random subset of train. Holding out whole shards therefore holds
out a random sample of train (every class in proportion, in expectation), the same in
every epoch and on every machine, and each stream reads only its own shards: θ steps
read about `fraction` of the bytes of train per pass, w steps the rest. (Selecting single
samples by a hash instead, as bionas first did, made both streams read and un-tar every
shard and drop what was not theirs.) The sample counts come from the manifest, so the
epoch length of the w stream is exact.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bionas.errors import BionasError
from bionas.manifests.manifest import Manifest, manifest_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldOutShards:
    """Train split in two by shard: `arch` for θ steps, `w` (the rest) for w steps."""

    arch: tuple[Path, ...]
    w: tuple[Path, ...]
    arch_samples: int  # manifest counts
    w_samples: int

    @property
    def fraction(self) -> float:
        """The share of train samples held out (what `--heldout-fraction` came to)."""
        return self.arch_samples / max(self.arch_samples + self.w_samples, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fraction": round(self.fraction, 6),
            "arch_shards": [p.name for p in self.arch],
            "arch_samples": self.arch_samples,
            "w_shards": len(self.w),
            "w_samples": self.w_samples,
        }


def heldout_indices(n_shards: int, fraction: float) -> list[int]:
    """round(fraction × n) of n shard indices, at least 1 and at most n - 1, spread evenly
    (the middle of each of k equal runs: for a small fraction never the last shard, which
    is usually a short one, so the held-out share stays close to the fraction asked)."""
    k = min(max(round(fraction * n_shards), 1), n_shards - 1)
    return [(2 * i + 1) * n_shards // (2 * k) for i in range(k)]


def split_heldout(manifest: Manifest, paths: Sequence[Path], fraction: float) -> HeldOutShards:
    """The held-out train shards and the rest; `paths` are the train shards in manifest
    order (`check_shards_exist`). A clear error when train has a single shard."""
    records = manifest.shards("train")
    if len(records) < 2:
        raise BionasError(
            f"--arch-data heldout holds out whole train shards, and "
            f"{manifest_path(manifest.root)} lists {len(records)} train shard(s): re-ingest "
            f"with a smaller --shard-size (about {round(1 / fraction)} train shards or more "
            f"for heldout_fraction {fraction}), or use --arch-data interleaved"
        )
    chosen = set(heldout_indices(len(records), fraction))
    counts = [int(r["samples"]) for r in records]
    split = HeldOutShards(
        arch=tuple(p for i, p in enumerate(paths) if i in chosen),
        w=tuple(p for i, p in enumerate(paths) if i not in chosen),
        arch_samples=sum(c for i, c in enumerate(counts) if i in chosen),
        w_samples=sum(c for i, c in enumerate(counts) if i not in chosen),
    )
    far = not 0.5 * fraction <= split.fraction <= 1.5 * fraction
    log.log(
        logging.WARNING if far else logging.INFO,
        "θ steps read %d of %d train shards: %d samples, %.1f%% of train (asked %.1f%%)%s",
        len(split.arch), len(records), split.arch_samples, 100 * split.fraction,
        100 * fraction, "; more, smaller shards (ingest --shard-size) come closer" if far else "",
    )  # fmt: skip
    return split
