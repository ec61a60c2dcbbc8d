"""The training loop's records: a step's line of steps.jsonl (read from the device a
window at a time), the epoch's totals over every step, and the epoch's record (epochs.jsonl,
the history); all over every rank."""

from __future__ import annotations

from typing import Any

import torch

from bionas.trainer.checkpoint import TrainState
from bionas.trainer.data import SKIP_REASONS, StreamPosition
from bionas.trainer.distributed import Dist
from bionas.trainer.logs import STEPS_LOG, append_jsonl
from bionas.trainer.optimizers import Optimizers
from bionas.trainer.session import Session
from bionas.trainer.step import StepValues, StepWindow


def log_window(
    session: Session, state: TrainState, window: StepWindow, bar: Any
) -> list[dict[str, Any]]:
    """Read the window's steps (one host sync), add them to the epoch's totals, append
    their lines to steps.jsonl and show the last one on the progress bar; their records."""
    records = []
    for header, values in window.read(session.dist):
        accumulate(state.totals, header["kind"], values)
        records.append(step_record(header, values))
    if session.dist.is_main:
        append_jsonl(session.run_dir / STEPS_LOG, *records)
    last = records[-1]
    bar.set_postfix(loss=f"{last['loss']:.3f}", img_s=f"{last['img_per_s']:.0f}")
    return records


def accumulate(totals: dict[str, float], kind: str, values: StepValues) -> None:
    for key, value in (
        (f"{kind}_loss_sum", values.loss * values.samples),
        (f"{kind}_correct", values.correct),
        (f"{kind}_samples", values.samples),
        ("seconds", values.seconds),
    ):
        totals[key] = totals.get(key, 0.0) + value


def step_header(state: TrainState, kind: str, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The fields of a step's record the host knows when the step is queued."""
    return {
        "epoch": state.epoch + 1,
        "batch": state.batch - 1,
        "step": state.step,
        "kind": kind,
        "lr": optimizer.param_groups[0]["lr"],
    }


def step_record(header: dict[str, Any], values: StepValues) -> dict[str, Any]:
    return {
        **header,
        "loss": values.loss,
        "acc": values.correct / values.samples,
        "grad_norm": values.grad_norm,
        "samples": values.samples,  # of all ranks
        "img_per_s": values.samples / values.seconds,
        "alpha_entropy": values.alpha_entropy,
    }


def skipped_over_ranks(position: StreamPosition, dist: Dist) -> dict[str, int]:
    """Samples this epoch's stream skipped, by reason, over all ranks."""
    skipped = position.skipped()
    if not dist.enabled:
        return skipped
    reasons = list(SKIP_REASONS)  # the same on all ranks
    totals = dist.sum([skipped.get(k, 0) for k in reasons])
    return {k: int(v) for k, v in zip(reasons, totals, strict=True)}


def theta_skipped(state: TrainState, dist: Dist) -> dict[str, int]:
    """What the held-out θ stream (`--arch-data heldout`) skipped this epoch, by reason, over
    all ranks. One stream runs across epochs and passes and its counts with it, so this is
    them less their value at the last epoch's end (`TrainState.arch_skipped`)."""
    ran = skipped_over_ranks(state.arch or StreamPosition(), dist)
    return {k: ran.get(k, 0) - state.arch_skipped.get(k, 0) for k in SKIP_REASONS}


def epoch_record(
    state: TrainState,
    searching: bool,
    opts: Optimizers,
    val: dict[str, Any],
    skipped: dict[str, int],
) -> dict[str, Any]:
    t = state.totals

    def ratio(a: str, b: str) -> float | None:
        return t[a] / t[b] if t.get(b) else None

    samples = t.get("w_samples", 0.0) + t.get("theta_samples", 0.0)
    return {
        "epoch": state.epoch + 1,
        "step": state.step,
        "steps": state.step - (state.history[-1]["step"] if state.history else 0),  # taken
        "searching": searching,
        "train_loss": (t.get("w_loss_sum", 0.0) + t.get("theta_loss_sum", 0.0)) / samples,
        "train_acc": (t.get("w_correct", 0.0) + t.get("theta_correct", 0.0)) / samples,
        "w_loss": ratio("w_loss_sum", "w_samples"),
        "w_acc": ratio("w_correct", "w_samples"),
        "theta_loss": ratio("theta_loss_sum", "theta_samples"),
        "theta_acc": ratio("theta_correct", "theta_samples"),
        "lr_w": opts.w.param_groups[0]["lr"],
        "lr_theta": None if opts.theta is None else opts.theta.param_groups[0]["lr"],
        "seconds": t.get("seconds", 0.0),
        "img_per_s": samples / t["seconds"] if t.get("seconds") else None,
        "skipped": skipped,
        **val,
    }
