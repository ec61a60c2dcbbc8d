"""What a search run does to θ and w, read from the parameters, not from the logs.

Algorithm 1 (SPEC §6): an even batch of an epoch updates w with AdamW while θ stays put;
an odd batch updates θ with Adam while w (parameters and BatchNorm buffers) stays put; a
fixed genotype has no θ and updates w on every batch.

How the tests look: the runs checkpoint after every step (`checkpoint_every=1`), so a
step hook reads the parameters between steps; and a recorder around the loop's call of
`train_step` keeps each step's batch, the RNG state (dropout) and a copy of the model
before the step. From those, `step_gradient` recomputes the gradient here (smoothed
cross-entropy, clipping at norm 1), and the expected move follows from Adam's first
step, whatever its betas: bias correction makes m̂ = g and v̂ = g², so each parameter
moves by lr·g/(|g| + eps) ≈ lr·sign(g) against its gradient.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from datasets import make_tiny_dataset  # tests/datasets.py
from torch import Tensor, nn

import bionas.trainer.loop as loop
import bionas.trainer.step_guard as step_guard
from bionas.cli import main
from bionas.trainer.config import TrainConfig
from bionas.trainer.logs import read_jsonl

LR_W, LR_THETA = 0.004, 0.02  # neither the defaults (1e-3, 3e-4) nor each other
WD_W, WD_THETA = 1e-4, 1e-3  # the paper's weight decays (the defaults)
ADAM_EPS = 1e-8  # torch's default, which bionas keeps
OPS = ("dw_sep_3x3", "dw_sep_5x5", "dil_conv_3x3", "dil_conv_5x5", "conv_1x1", "se",
       "avg_pool_3x3", "max_pool_3x3", "skip", "zero")  # fmt: skip  # θ's last axis (SPEC §6)
TINY = ["--device", "cpu", "--image-size", "32", "--cells", "2", "--channels", "4",
        "--batch-size", "8", "--workers", "0", "--shuffle-buffer", "16", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # 40 train samples / batch 8 = 5 batches: an odd count, so batch parity within an
    # epoch and step parity over the run disagree in the second epoch
    return make_tiny_dataset(tmp_path_factory.mktemp("ds"), n=40, shards_per_split=2)


def tiny_config(dataset: Path, run_dir: Path, **changes) -> TrainConfig:
    base = TrainConfig(dataset_dir=dataset, run_dir=run_dir, epochs=1, batch_size=8,
                       image_size=32, cells=2, channels=4, embed_dim=16, meta_embed_dim=4,
                       workers=0, shuffle_buffer=16, quiet=True, lr_w=LR_W, lr_theta=LR_THETA)  # fmt: skip
    return replace(base, **changes)


# --- observing a run ---------------------------------------------------------------------


@dataclass
class StepCall:
    """One call of `train_step`, as the loop made it."""

    model: nn.Module  # a copy of the model just before the step
    batch: tuple[Tensor, Tensor, Tensor]  # images, metadata indices, labels
    rng: Tensor  # torch's RNG state just before the step (the dropout masks)


@contextmanager
def recording_steps() -> Iterator[list[StepCall]]:
    """Record every step the loop takes (the step itself runs unchanged)."""
    calls: list[StepCall] = []
    real = step_guard.train_step

    def record(model, images, meta, labels, *args, **kwargs):
        batch = (images.clone(), meta.clone(), labels.clone())
        calls.append(StepCall(copy.deepcopy(model), batch, torch.get_rng_state()))
        return real(model, images, meta, labels, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(step_guard, "train_step", record)
        yield calls


@dataclass
class Observed:
    run_dir: Path
    records: list[dict] = field(default_factory=list)  # step records, as the hook saw them
    after: list[dict[str, Tensor]] = field(default_factory=list)  # state_dict after each step
    payloads: list[dict] = field(default_factory=list)  # the checkpoint after each step
    calls: list[StepCall] = field(default_factory=list)


def observe(config: TrainConfig) -> Observed:
    """Train with a checkpoint after every step; keep each step's input and result."""
    config = replace(config, checkpoint_every=1)
    seen = Observed(config.run_dir)

    def after_step(record: dict) -> None:
        payload = torch.load(config.run_dir / "checkpoints" / "last.pt", weights_only=True)
        seen.records.append(record)
        seen.after.append({k: v.clone() for k, v in payload["model"].items()})
        seen.payloads.append(payload)

    with recording_steps() as calls:
        loop.train(config, on_step=after_step)
    seen.calls = calls
    return seen


@pytest.fixture(scope="module")
def search(dataset, tmp_path_factory, torch_single_thread_module):
    run = tmp_path_factory.mktemp("search") / "run"
    return observe(tiny_config(dataset, run, epochs=2))


# --- independent expectations ------------------------------------------------------------


def weights(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """w: everything in the state_dict but θ (parameters and BatchNorm buffers)."""
    return {k: v for k, v in state.items() if k != "theta"}


def changed(before: dict[str, Tensor], after: dict[str, Tensor]) -> list[str]:
    assert before.keys() == after.keys()
    return [k for k in before if not torch.equal(before[k], after[k])]


def alpha_table(record: dict) -> Tensor:
    """An alphas.jsonl line as a [cells, 3, 10] tensor (edges cellI.e1/e2a/e2b, OPS order)."""
    rows = record["alphas"]
    cells = len(rows) // 3
    return torch.tensor(
        [[[rows[f"cell{i}.{e}"][op] for op in OPS] for e in ("e1", "e2a", "e2b")]
         for i in range(cells)],
        dtype=torch.float64,
    )  # fmt: skip


def softmax(theta: Tensor) -> Tensor:
    return torch.softmax(theta.double(), dim=-1)


def step_gradient(call: StepCall, names: list[str]) -> dict[str, Tensor]:
    """The gradient of the named parameters a step saw, recomputed from its model, batch
    and dropout masks: cross-entropy with label smoothing 0.1, the group's total norm
    clipped to 1.0 (SPEC §6)."""
    model = copy.deepcopy(call.model).train()  # its forward moves BN statistics
    params = dict(model.named_parameters())
    wanted = [params[name] for name in names]
    for p in model.parameters():
        p.requires_grad_(True)
    images, meta, labels = call.batch
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(call.rng)
        loss = F.cross_entropy(model(images, meta).float(), labels, label_smoothing=0.1)
    grads = torch.autograd.grad(loss, wanted, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(wanted, grads, strict=True)]
    norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
    scale = min(1.0, 1.0 / (norm + 1e-6))
    return {name: g * scale for name, g in zip(names, grads, strict=True)}


def assert_adam_first_step(moved: Tensor, grad: Tensor, lr: float, decay: Tensor) -> None:
    """`moved` is Adam's first step: -lr·g/(|g| + eps) - `decay` (AdamW's decoupled
    decay; zero for Adam) wherever the gradient is clearly non-zero, nothing beyond."""
    expected = -lr * grad / (grad.abs() + ADAM_EPS) - decay
    decided = grad.abs() > 1e-6
    assert decided.float().mean() > 0.5, "the recomputed gradient is ~0 almost everywhere"
    torch.testing.assert_close(moved[decided], expected[decided], atol=0.005 * lr, rtol=0)
    # where the gradient is ~0 the parameter moves by less than lr, never by more (give or
    # take float32 rounding of weights up to ~8)
    assert ((moved + decay).abs() <= lr * 1.001 + 1e-6).all()


def assert_first_theta_step(call: StepCall, before: Tensor, after: Tensor, lr: float) -> None:
    """Adam with coupled L2 (the paper's): the gradient is clip(g) + wd·θ."""
    grad = step_gradient(call, ["theta"])["theta"] + WD_THETA * before
    assert_adam_first_step(after - before, grad, lr, torch.zeros_like(before))


def assert_first_w_step(call: StepCall, before: dict, after: dict, lr: float) -> None:
    """AdamW: the decoupled decay moves w by lr·wd·w besides the gradient step."""
    names = [n for n, _ in call.model.named_parameters() if n != "theta"]
    grads = step_gradient(call, names)
    flat = lambda parts: torch.cat([t.flatten() for t in parts])  # noqa: E731
    moved = flat(after[n] - before[n] for n in names)
    decay = flat(lr * WD_W * before[n] for n in names)
    assert_adam_first_step(moved, flat(grads[n] for n in names), lr, decay)


# --- through bionas.trainer.loop.train -----------------------------------------------------


def test_a_search_run_moves_theta_and_logs_the_alphas_it_ends_with(search):
    alphas = read_jsonl(search.run_dir / "alphas.jsonl")
    assert [a["epoch"] for a in alphas] == [0, 1, 2]
    initial, final = alpha_table(alphas[0]), alpha_table(alphas[-1])
    saved = torch.load(search.run_dir / "model.pt", weights_only=True)["state_dict"]
    torch.testing.assert_close(softmax(saved["theta"]), final, atol=1e-7, rtol=0)
    torch.testing.assert_close(softmax(search.calls[0].model.theta), initial, atol=1e-7, rtol=0)
    # 4 θ steps of lr 0.02: every logit moved, and α by far more than float noise
    assert (saved["theta"] != search.calls[0].model.theta).all()
    assert (final - initial).abs().max() > 1e-3


def test_even_batches_change_only_w_and_odd_batches_only_theta(search):
    # batch index within the epoch: 0 1 2 3 4 | 0 1 2 3 4
    expected = ["w", "theta", "w", "theta", "w"] * 2
    assert len(search.after) == len(search.calls) == len(expected)
    for step, kind in enumerate(expected):
        before = search.calls[step].model.state_dict()
        after = search.after[step]
        theta_moved = not torch.equal(before["theta"], after["theta"])
        w_changed = changed(weights(before), weights(after))
        if kind == "theta":
            assert theta_moved, f"step {step + 1}: θ did not move on a θ step"
            assert w_changed == [], f"step {step + 1}: a θ step changed w: {w_changed[:5]}"
        else:
            assert not theta_moved, f"step {step + 1}: θ moved on a w step"
            assert len(w_changed) >= 0.9 * len(weights(after)), f"step {step + 1}: w stood still"
    assert [r["kind"] for r in search.records] == expected  # and the log says so


def test_the_first_w_step_moves_each_weight_by_lr_w_against_its_gradient(search):
    call = search.calls[0]
    assert_first_w_step(call, call.model.state_dict(), search.after[0], LR_W)


def test_the_first_theta_step_moves_each_logit_by_lr_theta_against_its_gradient(search):
    call = search.calls[1]
    before = call.model.state_dict()["theta"]
    assert_first_theta_step(call, before, search.after[1]["theta"], LR_THETA)


def test_each_step_logs_the_rate_of_the_optimiser_it_ran(search):
    lrs = [(r["kind"], r["lr"]) for r in search.records]
    assert lrs == [("w", LR_W), ("theta", LR_THETA), ("w", LR_W), ("theta", LR_THETA),
                   ("w", LR_W)] * 2  # fmt: skip


def test_a_fixed_genotype_run_has_no_theta_and_updates_w_on_every_batch(
    dataset, tmp_path, torch_single_thread
):
    ops = [("conv_1x1", "skip", "max_pool_3x3"), ("dw_sep_3x3", "zero", "avg_pool_3x3")]
    cells = [{"index": i, "reduction": True,  # 2 cells: both reduction cells (cells // 3 = 0)
              "edges": {"e1": {"op": a}, "e2a": {"op": b}, "e2b": {"op": c}}}
             for i, (a, b, c) in enumerate(ops)]  # fmt: skip
    genotype = tmp_path / "genotype.json"
    genotype.write_text(json.dumps({"format": "bionas.genotype/1", "cells": cells}))
    seen = observe(tiny_config(dataset, tmp_path / "fixed", genotype=genotype))

    assert len(seen.after) == len(seen.calls) == 5
    assert all("theta" not in state for state in seen.after)
    assert seen.payloads[-1]["theta_optimizer"] is None
    for step in range(5):  # odd batches too
        w_changed = changed(seen.calls[step].model.state_dict(), seen.after[step])
        assert len(w_changed) >= 0.9 * len(seen.after[step]), f"step {step + 1}"
    assert_first_w_step(seen.calls[0], seen.calls[0].model.state_dict(), seen.after[0], LR_W)
    saved = torch.load(seen.run_dir / "model.pt", weights_only=True)
    assert "theta" not in saved["state_dict"]
    assert [e["op"] for c in saved["model_config"]["genotype"]["cells"]
            for e in c["edges"].values()] == [op for cell in ops for op in cell]  # fmt: skip
    assert read_jsonl(seen.run_dir / "alphas.jsonl") == []


# --- through the CLI ------------------------------------------------------------------------


def test_cli_learning_rates_set_the_size_of_the_w_and_theta_steps(
    dataset, tmp_path, torch_single_thread
):
    run = tmp_path / "run"
    argv = ["train", str(dataset), "--out", str(run), *TINY, "--max-steps", "2",
            "--lr-w", str(LR_W), "--lr-theta", str(LR_THETA)]  # fmt: skip
    with recording_steps() as calls:
        result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(calls) == 2
    steps = read_jsonl(run / "steps.jsonl")
    assert [(s["kind"], s["lr"]) for s in steps] == [("w", LR_W), ("theta", LR_THETA)]

    initial, after_w = calls[0].model.state_dict(), calls[1].model.state_dict()
    final = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    initial_alpha = alpha_table(read_jsonl(run / "alphas.jsonl")[0])
    torch.testing.assert_close(softmax(initial["theta"]), initial_alpha, atol=1e-7, rtol=0)
    # step 1 (batch 0): w moved by --lr-w per weight, θ stayed
    assert torch.equal(after_w["theta"], initial["theta"])
    assert_first_w_step(calls[0], initial, after_w, LR_W)
    # step 2 (batch 1): θ moved by --lr-theta per logit, w and BN buffers stayed
    assert changed(weights(after_w), weights(final)) == []
    assert_first_theta_step(calls[1], after_w["theta"], final["theta"], LR_THETA)
