"""The shared-weight protocol of every search but darts, read top to bottom.

    run_search(config, strategy)
      1. weights: `--epochs` epochs of w steps (Algorithm 1's AdamW step, no θ step) on the
         supernet, each batch through one path (`PathForward`): uniform over the
         reachable paths for random, evolution and reinforce (single-path one-shot, Guo et
         al. 2020), drawn from the policy for enas. The path of step s is a function of
         (seed, s), so checkpoints and `--resume` work as in darts. The ops off the path
         get no gradient, so AdamW leaves them (weight decay included) untouched.
      2. search: the strategy scores genotypes with the shared weights (`scoring`) and
         chooses one (enas also updates its policy after each epoch's w steps).
      3. the end, as darts': θ := the chosen genotype (its op's logit SELECTED_LOGIT above
         the others, so argmax α is that genotype and the others fall below the prune
         threshold: `bionas derive`, `evaluate` and `--retrain-epochs` read it as they read
         a darts run), then the checkpoint, model.pt, RUN_DIR/genotype.json (+ .txt),
         RUN_DIR/search_history.jsonl (one line per scored genotype) and
         RUN_DIR/search.json (the choice and what was spent).

Resume: the w epochs resume exactly from checkpoints (enas' policy updates of an epoch
are checkpointed with it). The scoring after the last epoch is not checkpointed: a resume
starts it again from the end of training (it is seeded, so it chooses the same genotype),
and its lines in search_history.jsonl are written again. A finished search is not redone;
adding epochs to it is refused (θ then holds the chosen genotype, not a search state).
One process only: torchrun is refused (each rank would need the same path per step).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bionas.errors import BionasError
from bionas.trainer.checkpoint import TrainState
from bionas.trainer.config import TrainConfig
from bionas.trainer.data import Batch
from bionas.trainer.derive import GENOTYPE_JSON, GENOTYPE_TXT
from bionas.trainer.distributed import SINGLE, Dist
from bionas.trainer.genotype import render
from bionas.trainer.logs import STEPS_LOG, append_jsonl, read_jsonl, rewrite_jsonl
from bionas.trainer.model import BioAutoMLNAS
from bionas.trainer.ops import OP_NAMES, OP_SETS
from bionas.trainer.optimizers import Optimizers
from bionas.trainer.run import save_model
from bionas.trainer.search.scoring import Score, score_batches, score_path
from bionas.trainer.search.space import (
    Path,
    from_genotype,
    from_json,
    reachable,
    sample_uniform,
    to_json,
)
from bionas.trainer.session import Session, start_session
from bionas.trainer.tensorboard_log import TensorBoardLog

log = logging.getLogger(__name__)

HISTORY = "search_history.jsonl"
SEARCH_JSON = "search.json"
FORMAT = "bionas.search/1"
SELECTED_LOGIT = 20.0  # α of the other ops: < e^-20 ≈ 2e-9, under the 1e-6 prune threshold
Hook = Callable[[dict[str, Any]], None]


@dataclass
class SearchContext:
    """What a strategy works with: the trained supernet, the scoring batches, the history."""

    session: Session
    model: BioAutoMLNAS
    opts: Optimizers
    state: TrainState
    history: list[dict[str, Any]] = field(default_factory=list)  # search_history.jsonl
    _batches: list[Batch] | None = None

    @property
    def config(self) -> TrainConfig:
        return self.session.config

    @property
    def ops(self) -> tuple[str, ...]:
        return OP_SETS[self.config.ops]

    @property
    def cells(self) -> int:
        return len(self.model.image_encoder.reduction_flags)

    def rng(self, *tag: object) -> random.Random:
        """A generator of its own for each phase: seeded by --seed and the tag."""
        return random.Random(":".join(str(t) for t in (self.config.seed, *tag)))

    def sample_uniform(self, rng: random.Random) -> Path:
        return sample_uniform(rng, self.cells, self.ops)

    def evaluate(
        self, path: Path, phase: str, then: Callable[[Score], dict[str, Any]] | None = None
    ) -> Score:
        """Score `path` with the shared weights and append it to search_history.jsonl;
        `then(score)` (a policy update) runs before the line is written and adds to it."""
        if self._batches is None:
            self._batches = score_batches(self.session, self.config.search_val_batches)
        started = time.perf_counter()
        score = score_path(self.model, path, self._batches, self.session)
        extra = then(score) if then is not None else {}
        record = {
            "evaluation": len(self.history) + 1,
            "phase": phase,  # train: within an epoch (enas); search, select: after training
            "epoch": self.state.epoch + (phase == "train"),
            "step": self.state.step,
            "genotype": to_json(path),
            "val_acc": score.val_acc,
            "val_loss": score.val_loss,
            "samples": score.samples,
            **extra,
            "seconds": time.perf_counter() - started,
        }
        self.history.append(record)
        append_jsonl(self.config.run_dir / HISTORY, record)
        return score

    def best(self, phases: tuple[str, ...]) -> tuple[Path, Score]:
        """The best-scoring reachable genotype of these phases (the first of equals). A
        policy may draw paths that cut a node off; derive would restore an edge of such a
        path, so it is never the choice."""
        records = [
            r for r in self.history
            if r["phase"] in phases and reachable(from_json(r["genotype"]))
        ]  # fmt: skip
        if not records:
            raise ValueError(f"no reachable genotype was scored in phases {phases}")
        top = max(records, key=lambda r: (r["val_acc"], -r["val_loss"], -r["evaluation"]))
        path = tuple(tuple(cell) for cell in top["genotype"])
        return path, Score(top["val_acc"], top["val_loss"], top["samples"])

    def final_candidates(self, rng: random.Random, draws: int) -> list[Path]:
        """The policy's most likely path and up to `draws` distinct draws from it, all
        reachable; a uniform reachable path when the policy gives none."""
        from bionas.trainer.search.policy import (
            policy_mode,
            policy_probabilities,
            sample_policy,
        )

        mode = policy_mode(self.model)
        candidates = [mode] if reachable(mode) else []
        probs = policy_probabilities(self.model)
        for _ in range(20 * draws):  # dead or repeated draws are skipped
            if len(candidates) > draws:
                break
            path = sample_policy(rng, probs)
            if reachable(path) and path not in candidates:
                candidates.append(path)
        return candidates or [self.sample_uniform(rng)]


@dataclass(frozen=True)
class Strategy:
    """A shared-weight search: how w steps draw paths, what happens after each epoch, and
    how a genotype is chosen from the trained supernet."""

    name: str
    select: Callable[[SearchContext], tuple[Path, Score]]
    draw: str = "uniform"  # or "policy": the w steps' paths come from the policy (θ)
    after_epoch: Callable[[SearchContext], None] | None = None
    policy: bool = False  # θ is a policy trained with REINFORCE at --policy-lr


class PathForward:
    """What the w steps call instead of the model: the model on this step's one path."""

    def __init__(self, ctx: SearchContext, draw: Callable[[random.Random], Path]) -> None:
        self.ctx, self.draw = ctx, draw

    def __call__(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        path = self.draw(self.ctx.rng("w", self.ctx.state.step))
        return self.ctx.model(images, meta, path=path)


def run_search(
    config: TrainConfig,
    strategy: Strategy,
    *,
    on_step: Hook | None = None,
    on_epoch: Hook | None = None,
    dist: Dist = SINGLE,
) -> list[dict[str, Any]]:
    """Train the shared weights, search, and write the chosen genotype (module docstring)."""
    from bionas.trainer.loop import _checkpoint, _stop, end_epoch, train_epoch  # it imports us
    from bionas.trainer.search.policy import policy_probabilities, sample_policy

    if dist.enabled:
        raise BionasError(f"--search {config.search} runs in one process; use darts under torchrun")
    session, model, _, opts, state = start_session(config, dist)
    ctx = SearchContext(session, model, opts, state)
    if _already_finished(ctx):
        return state.history
    if strategy.policy:  # idempotent on resume: the checkpoint stored these settings
        for group in opts.theta.param_groups:
            group.update(lr=config.policy_lr, weight_decay=0.0)
    if strategy.draw == "policy":
        draw = lambda rng: sample_policy(rng, policy_probabilities(model))  # noqa: E731
    else:
        draw = ctx.sample_uniform
    forward = PathForward(ctx, draw)
    board = TensorBoardLog.open(session.run_dir, step=state.step)  # as darts' loop does
    on_step = board.step_hook(on_step)
    while state.epoch < config.epochs and not _stop(session, state):
        session, finished = train_epoch(session, model, forward, opts, state, False, None, on_step)
        ctx.session = session  # a step that ran out of memory halved the batch
        if finished:
            if strategy.after_epoch is not None:
                strategy.after_epoch(ctx)
            record = end_epoch(session, model, opts, state, strategy.after_epoch is not None)
            board.epoch(record, model.alphas())
            if on_epoch is not None:
                on_epoch(record)
    board.close()
    if state.epoch < config.epochs:  # --max-steps stopped it: resume to search
        _checkpoint(session, model, opts, state)
        save_model(session.run_dir, model)
        log.warning("stopped before the last epoch: no genotype chosen yet (resume the run)")
        return state.history
    started = time.perf_counter()
    path, score = strategy.select(ctx)
    select_path(model, path)
    _checkpoint(session, model, opts, state)
    save_model(session.run_dir, model)
    write_outcome(ctx, strategy, path, score, time.perf_counter() - started)
    return state.history


def _already_finished(ctx: SearchContext) -> bool:
    """Resume: True when the search is complete; the history trimmed to the checkpoint."""
    run_dir, config, state = ctx.config.run_dir, ctx.config, ctx.state
    outcome = run_dir / SEARCH_JSON
    if not config.resume:
        outcome.unlink(missing_ok=True)
        rewrite_jsonl(run_dir / HISTORY, [])
        return False
    if outcome.exists() and json.loads(outcome.read_text()).get("finished"):
        if state.epoch >= config.epochs:
            return True
        raise BionasError(
            f"{run_dir} finished its --search {config.search} search after {state.epoch} "
            f"epoch(s); θ now holds the genotype it chose, so it cannot search on: start a "
            "new run with more --epochs"
        )
    kept = [r for r in _read(run_dir / HISTORY) if r["phase"] == "train"]
    ctx.history = [r for r in kept if r["epoch"] <= state.epoch]
    rewrite_jsonl(run_dir / HISTORY, ctx.history)
    return False


def _read(path: Any) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.exists() else []


def select_path(model: BioAutoMLNAS, path: Path) -> None:
    """θ := the genotype `path`: its ops' logits SELECTED_LOGIT, every other 0."""
    with torch.no_grad():
        model.theta.zero_()
        for i, cell in enumerate(path):
            for j, op in enumerate(cell):
                model.theta[i, j, OP_NAMES.index(op)] = SELECTED_LOGIT
    model.sync_prune_mask()


def write_outcome(
    ctx: SearchContext, strategy: Strategy, path: Path, score: Score, select_seconds: float
) -> None:
    """genotype.json and .txt (as `bionas derive` writes them) and search.json."""
    run_dir, state = ctx.config.run_dir, ctx.state
    genotype = ctx.model.genotype()
    if from_genotype(genotype) != path:
        raise AssertionError(f"θ derives {from_genotype(genotype)}, not the chosen {path}")
    genotype.save(run_dir / GENOTYPE_JSON)
    (run_dir / GENOTYPE_TXT).write_text(render(genotype), encoding="utf-8")
    w_steps = [r for r in _read(run_dir / STEPS_LOG) if r["kind"] == "w"]
    train_seconds = sum(e.get("seconds") or 0.0 for e in state.history)
    policy_seconds = sum(r["seconds"] for r in ctx.history if r["phase"] == "train")
    body = {
        "format": FORMAT,
        "finished": True,
        "strategy": strategy.name,
        "ops": ctx.config.ops,
        "op_names": list(ctx.ops),
        "genotype": to_json(path),
        "val_acc": score.val_acc,
        "val_loss": score.val_loss,
        "scored_on": {
            "split": ctx.config.val_split,
            "samples": score.samples,
            "batch_norm": "batch statistics of each validation batch",
        },  # fmt: skip
        "budget": {k: getattr(ctx.config, k) for k in BUDGET_OPTIONS},
        "spent": {
            "epochs": len(state.history),
            "weight_steps": len(w_steps),
            "images_seen": sum(r["samples"] for r in w_steps),
            "evaluations": len(ctx.history),
            "val_images_scored": sum(r["samples"] for r in ctx.history),
            "policy_updates": sum(1 for r in ctx.history if "advantage" in r),
            # wall time of the w steps (epochs.jsonl), of enas' policy updates within the
            # epochs, and of the search after training (its last run, after a resume);
            # per-epoch validation and checkpoints are not counted
            "train_seconds": train_seconds,
            "policy_seconds": policy_seconds,
            "search_seconds": select_seconds,
            "wall_seconds": train_seconds + policy_seconds + select_seconds,
        },
    }
    tmp = run_dir / (SEARCH_JSON + ".tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / SEARCH_JSON)


BUDGET_OPTIONS = ("epochs", "search_evaluations", "search_val_batches", "population",
                  "sample_size", "policy_lr")  # fmt: skip
