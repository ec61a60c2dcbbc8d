"""A policy over genotypes and its REINFORCE update (`--search reinforce` and `enas`).

The policy is one categorical distribution per edge: logits [cells, 3, 10] with the ops
outside `--ops` masked out. They are the supernet's θ, so the policy checkpoints and
resumes with the run, and alphas.jsonl shows its probabilities as darts' α. It is not an
LSTM controller (ENAS's): edges are drawn independently, which the REINFORCE update below
does not need to know about; the choice keeps the policy small, exact to resume and easy to
read, at the cost of not learning dependencies between edges.

REINFORCE (Williams 1992): θ += lr · (R − b) ∇ log π(path), with R the path's validation
accuracy under the shared weights, b an exponential moving average of the rewards before
(decay `BASELINE_DECAY`, starting at chance accuracy 1 / classes), Adam at `--policy-lr`
without weight decay, and no entropy bonus.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

from bionas.trainer.genotype import EDGE_NAMES, derive
from bionas.trainer.model import BioAutoMLNAS
from bionas.trainer.ops import OP_NAMES
from bionas.trainer.search.space import Path, from_genotype

BASELINE_DECAY = 0.9


def policy_probabilities(model: BioAutoMLNAS) -> Tensor:
    """π per edge on the host: [cells, 3, 10], 0 for the ops outside the set."""
    alphas = model.alphas()
    cells = len(model.image_encoder.reduction_flags)
    rows = [alphas[f"cell{i}.{e}"] for i in range(cells) for e in EDGE_NAMES]
    return torch.stack(rows).reshape(cells, len(EDGE_NAMES), len(OP_NAMES)).cpu()


def sample_policy(rng: random.Random, probs: Tensor) -> Path:
    """One op per edge from π (reachable or not: a dead path earns its low reward)."""
    return tuple(
        tuple(rng.choices(OP_NAMES, weights=row.tolist())[0] for row in cell) for cell in probs
    )


def policy_mode(model: BioAutoMLNAS) -> Path:
    """The most probable op per edge, cut edges restored so the path is reachable."""
    return from_genotype(derive(model.alphas(), model.image_encoder.reduction_flags))


def log_probability(model: BioAutoMLNAS, path: Path) -> Tensor:
    """log π(path) = Σ over edges of log π(op | edge), differentiable in θ."""
    logits = model.theta if model.theta_mask is None else model.theta + model.theta_mask
    logp = torch.log_softmax(logits.float(), dim=-1)
    index = torch.tensor([[OP_NAMES.index(op) for op in cell] for cell in path])
    return logp.gather(-1, index.to(logp.device)[..., None]).sum()


def reinforce_update(
    model: BioAutoMLNAS,
    optimizer: torch.optim.Optimizer,
    path: Path,
    reward: float,
    baseline: float,
) -> float:
    """One REINFORCE step on θ for `path`; returns the advantage R − b."""
    theta = model.theta
    was = theta.requires_grad
    theta.requires_grad_(True)
    optimizer.zero_grad(set_to_none=True)
    advantage = reward - baseline
    (-advantage * log_probability(model, path)).backward()
    optimizer.step()
    theta.requires_grad_(was)
    model.mark_prune_mask_stale()  # θ changed (no copy now: path forwards do not need it)
    return advantage


def next_baseline(baseline: float, reward: float) -> float:
    return BASELINE_DECAY * baseline + (1 - BASELINE_DECAY) * reward
