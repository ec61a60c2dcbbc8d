"""Which networks `bionas evaluate` measures, and which one is the headline.

The paper's product is the derived architecture, "a fixed, deployable model" (Sec.
III-B.2), not the soft supernet that searched for it. So for a search run the headline is
the derived network: argmax op per edge, weights inherited from the supernet, BatchNorm
statistics re-estimated on training batches (`recalibrate`). The supernet is measured too,
on the same samples, and reported apart under its own name. A run that trained a fixed
genotype (e.g. RUN_DIR/final of `--retrain-epochs`) is its own headline.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from bionas.manifests.manifest import load_manifest
from bionas.trainer.encoding import Encoding
from bionas.trainer.model import BioAutoMLNAS, fixed_from_supernet
from bionas.trainer.recalibrate import recalibrate_batchnorm
from bionas.trainer.split_predictions import SplitStream

log = logging.getLogger(__name__)

DERIVED, FIXED, SUPERNET = "derived", "fixed", "supernet"


@dataclass(frozen=True)
class Networks:
    """The headline network under its name, and the others to report apart."""

    headline: str
    models: dict[str, nn.Module]
    about: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> description


def networks_to_evaluate(
    run: Any, encoding: Encoding, *, bn_batches: int, batch_size: int, device: Any
) -> Networks:
    """A fixed run: itself. A search run: the derived network (recalibrated on
    `bn_batches` train batches of the run's dataset) as headline, and the supernet."""
    model: BioAutoMLNAS = run.model
    if model.cfg.backbone is not None:
        about = {"network": f"backbone {model.cfg.backbone} trained as such (no genotype)",
                 "backbone": model.cfg.backbone}  # fmt: skip
        return Networks(FIXED, {FIXED: model}, {FIXED: about})
    if model.theta is None:
        about = {"network": "fixed genotype trained as such", "genotype": _ops(model)}
        return Networks(FIXED, {FIXED: model}, {FIXED: about})
    derived = fixed_from_supernet(model).to(device)
    seen, skipped = 0, None
    if bn_batches:
        try:
            batches = _train_batches(run, encoding, bn_batches, batch_size)
            seen = recalibrate_batchnorm(derived, batches, device)
        except (FileNotFoundError, KeyError, ValueError) as err:
            skipped = f"the run's training data cannot be read: {err}"
        if not seen and skipped is None:
            skipped = "no readable sample in the train split of the run's dataset"
        if skipped:
            log.warning("derived network evaluated with the supernet's BN statistics: %s", skipped)
    derived.eval()
    genotype = derived.genotype()
    about = {
        DERIVED: {
            "network": "derived: argmax α per edge (restored edges keep a path from the "
            "cell's input), weights inherited from the supernet",
            "genotype": _ops(derived),
            "restored_edges": genotype.restored,
            "bn_recalibration": {
                "batches": bn_batches,
                "samples": seen,
                "split": "train",
                "skipped": skipped,
            },  # fmt: skip
            "note": "a quick read of the architecture; train it from scratch for the "
            "final model (bionas train --retrain-epochs N, or --genotype)",
        },
        SUPERNET: {
            "network": "supernet: every candidate op weighted by α = softmax(θ), as searched; "
            "not a deployable model",
        },
    }
    return Networks(DERIVED, {DERIVED: derived, SUPERNET: model}, about)


def _ops(model: BioAutoMLNAS) -> dict[str, str]:
    return {f"cell{c.index}.{e.edge}": e.op for c in model.genotype().cells for e in c.edges}


def _train_batches(
    run: Any, encoding: Encoding, count: int, batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """The first `count` batches of the train split of the run's dataset, manifest order
    (each shard holds a random subset of its split: ingest's seeded hash order)."""
    manifest = load_manifest(run.dataset_dir)
    stream = SplitStream(manifest.shard_paths("train"), encoding, run.image_size, batch_size)
    full = (b for b in stream if len(b["labels"]))
    for batch in itertools.islice(full, count):
        yield batch["images"], batch["meta"]
