"""`--search enas`: the policy and the shared weights trained in alternation (Pham et al.
2018, with the policy of `bionas.trainer.search.policy` in place of ENAS' LSTM).

Each epoch: w steps on paths drawn from the current policy (not uniform), then the
epoch's share of `--search-evaluations` REINFORCE steps on the validation batches with the
weights as they are (both checkpointed with the epoch). After the last epoch, the policy's
most probable genotype and `FINAL_DRAWS` reachable draws from it are scored with the final
weights, and the best is kept (earlier scores came from other weights and are not compared).
"""

from __future__ import annotations

from bionas.trainer.search.reinforce import chance, policy_steps
from bionas.trainer.search.scoring import Score
from bionas.trainer.search.shared import SearchContext
from bionas.trainer.search.space import Path

FINAL_DRAWS = 7  # with the mode: 8 candidates, as ENAS samples a handful before choosing


def epoch_share(total: int, epochs: int, epoch: int) -> int:
    """Policy steps in `epoch` (0-based): `total` spread as evenly as whole steps allow."""
    return total * (epoch + 1) // epochs - total * epoch // epochs


def after_epoch(ctx: SearchContext) -> None:
    done = [r for r in ctx.history if r["phase"] == "train"]
    baseline = done[-1]["baseline"] if done else chance(ctx)
    count = epoch_share(ctx.config.search_evaluations, ctx.config.epochs, ctx.state.epoch)
    policy_steps(ctx, count, "train", ctx.rng("enas", ctx.state.epoch), baseline)


def select(ctx: SearchContext) -> tuple[Path, Score]:
    for path in ctx.final_candidates(ctx.rng("enas-select"), FINAL_DRAWS):
        ctx.evaluate(path, "select")
    return ctx.best(("select",))
