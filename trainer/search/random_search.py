"""`--search random`: random search with weight sharing (Li & Talwalkar 2019).

After the shared-weight training (`bionas.trainer.search.shared`), draw
`--search-evaluations` genotypes uniformly from the reachable ones, score each with the
shared weights on the validation batches, and keep the best.
"""

from __future__ import annotations

from bionas.trainer.search.scoring import Score
from bionas.trainer.search.shared import SearchContext
from bionas.trainer.search.space import Path


def select(ctx: SearchContext) -> tuple[Path, Score]:
    rng = ctx.rng("random")
    for _ in range(ctx.config.search_evaluations):
        ctx.evaluate(ctx.sample_uniform(rng), "search")
    return ctx.best(("search",))
