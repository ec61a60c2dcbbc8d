"""`--search reinforce`: a policy over genotypes trained with REINFORCE on validation
accuracy under shared weights (Zoph & Le 2017's controller, with weight sharing).

After the shared-weight training (`bionas.trainer.search.shared`, uniform paths), the
weights stay fixed and the policy (`bionas.trainer.search.policy`: independent logits per
edge, not an LSTM) takes `--search-evaluations` steps: draw a genotype, score it, update
with the advantage over the moving-average baseline. The choice: the best genotype scored
during those steps or the policy's most probable one (scored last), whichever scores
higher; every score came from the same weights.
"""

from __future__ import annotations

import random
from typing import Any

from bionas.trainer.search.policy import (
    next_baseline,
    policy_probabilities,
    reinforce_update,
    sample_policy,
)
from bionas.trainer.search.scoring import Score
from bionas.trainer.search.shared import SearchContext
from bionas.trainer.search.space import Path


def chance(ctx: SearchContext) -> float:
    """The baseline's start: the accuracy of a uniform guess."""
    return 1.0 / ctx.session.encoding.num_classes


def policy_steps(
    ctx: SearchContext, count: int, phase: str, rng: random.Random, baseline: float
) -> float:
    """`count` REINFORCE steps, each one scored genotype; returns the baseline after."""
    state = {"baseline": baseline}

    for _ in range(count):
        path = sample_policy(rng, policy_probabilities(ctx.model))

        def update(score: Score, path: Path = path) -> dict[str, Any]:
            b = state["baseline"]
            advantage = reinforce_update(ctx.model, ctx.opts.theta, path, score.val_acc, b)
            state["baseline"] = next_baseline(b, score.val_acc)
            return {"advantage": advantage, "baseline": state["baseline"]}

        ctx.evaluate(path, phase, then=update)
    return state["baseline"]


def select(ctx: SearchContext) -> tuple[Path, Score]:
    policy_steps(ctx, ctx.config.search_evaluations, "search", ctx.rng("reinforce"), chance(ctx))
    # the policy's draws may cut a node off; at least one reachable path is scored here
    for path in ctx.final_candidates(ctx.rng("reinforce-select"), 0):
        ctx.evaluate(path, "select")
    return ctx.best(("search", "select"))
