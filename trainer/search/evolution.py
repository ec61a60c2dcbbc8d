"""`--search evolution`: regularized evolution (Real et al. 2019) with weight sharing.

After the shared-weight training (`bionas.trainer.search.shared`): score `--population`
uniformly drawn genotypes; then, until `--search-evaluations` genotypes have been scored in
all, draw `--sample-size` members of the population at random, mutate the best of them on
exactly one edge, score the child, add it and remove the oldest member (ageing, not the
worst: what makes the evolution "regularized"). The best genotype ever scored wins (the
shared weights do not change during the search, so all scores are comparable).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bionas.trainer.search.scoring import Score
from bionas.trainer.search.shared import SearchContext
from bionas.trainer.search.space import Path, mutate


@dataclass(frozen=True)
class Member:
    path: Path
    score: Score


def evolve_step(
    population: deque[Member],
    rng: random.Random,
    sample_size: int,
    ops: Sequence[str],
    evaluate: Callable[[Path], Score],
) -> Member:
    """One cycle: tournament, one-edge mutation of the winner, child in, oldest out."""
    contenders = rng.sample(list(population), sample_size)
    parent = max(contenders, key=lambda m: m.score.key)
    child_path = mutate(parent.path, rng, ops)
    child = Member(child_path, evaluate(child_path))
    population.append(child)
    population.popleft()
    return child


def select(ctx: SearchContext) -> tuple[Path, Score]:
    rng, config = ctx.rng("evolution"), ctx.config

    def evaluate(path: Path) -> Score:
        return ctx.evaluate(path, "search")

    population: deque[Member] = deque()
    for _ in range(config.population):
        path = ctx.sample_uniform(rng)
        population.append(Member(path, evaluate(path)))
    for _ in range(config.search_evaluations - config.population):
        evolve_step(population, rng, config.sample_size, ctx.ops, evaluate)
    return ctx.best(("search",))
