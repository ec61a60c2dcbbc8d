"""Search strategies: `--search NAME` -> the function that runs the whole search.

    darts       Algorithm 1 (gradient-based, the paper's): `bionas.trainer.loop`
    random      random genotypes scored with shared weights      (random_search)
    evolution   regularized evolution with shared weights        (evolution)
    reinforce   REINFORCE policy on shared-weight val accuracy   (reinforce)
    enas        policy and shared weights trained in alternation (enas)

All but darts share one protocol (`shared`: a supernet trained on one sampled path per w
step, genotypes scored on validation batches with its weights) and end as darts does: θ
holds the chosen genotype, RUN_DIR/genotype.json is written, and `--retrain-epochs`,
`bionas derive` and `--genotype` take it from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bionas.trainer.config import SEARCHES
from bionas.trainer.search import enas, evolution, random_search, reinforce
from bionas.trainer.search.shared import Strategy, run_search

SHARED_WEIGHT: dict[str, Strategy] = {
    "random": Strategy("random", random_search.select),
    "evolution": Strategy("evolution", evolution.select),
    "reinforce": Strategy("reinforce", reinforce.select, policy=True),
    "enas": Strategy("enas", enas.select, draw="policy", after_epoch=enas.after_epoch, policy=True),
}


def _darts(config: Any, **kwargs: Any) -> list[dict[str, Any]]:
    from bionas.trainer.loop import train

    return train(config, **kwargs)


def _shared(name: str) -> Callable[..., list[dict[str, Any]]]:
    return lambda config, **kwargs: run_search(config, SHARED_WEIGHT[name], **kwargs)


STRATEGIES: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "darts": _darts,
    **{name: _shared(name) for name in SHARED_WEIGHT},
}
if tuple(STRATEGIES) != SEARCHES:
    raise AssertionError(f"config.SEARCHES {SEARCHES} != the registry {tuple(STRATEGIES)}")
