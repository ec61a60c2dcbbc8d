"""Changing a run's batch size part-way: after a step ran out of memory, or on
`--resume --batch-size N`.

Out of memory mid-training, on one process: a step that runs out of memory before its
optimiser step (`bionas.trainer.step.StepOutOfMemory`) has changed nothing the run keeps,
so the last good step is the last completed one and the run goes on from it. The loop logs
the steps before it, drops the failed step's tensors and gradients, gives the loss scalers
a fresh record, empties the CUDA cache and halves the batch (never below MIN_BATCH). The
failed batch's samples are not lost: a stream position advances only once its batch's
step completed, so the streams are rebuilt at the new size from where the last good step
left them and read those samples again. The change goes to the log, events.jsonl,
config.json and a checkpoint written at once (a resume continues at the new size).

The run stops instead, saying what to do, when the batch is already MIN_BATCH; when the
error came from inside the optimiser step (the update may be half applied: resume from the
last checkpoint); and on several ranks, where the others would wait forever at the next
collective (resume with --batch-size).

A new size re-expresses the epoch's progress in batches of that size (`rescale_progress`):
the samples the streams have read, divided by the new size and rounded up (an epoch never
reads a sample twice; it may leave out less than a batch at its end, as every epoch's
dropped remainder does). The rest of the epoch is then what an epoch at the new size has
left, and the progress bar, the steps left and the w/θ alternation follow from that index:
interleaved, the index after a halving is even, so a w step comes next (after a failed θ
step too); held out, a pending θ step stays pending.

This is exact with at most one DataLoader worker. With W workers an epoch is a count of
batches, batch i from worker i % W, each worker reading its own whole shards as an endless
stream (`bionas.trainer.data`): a worker whose shards hold fewer samples than its share
wraps into its next pass, as in any epoch. A change of size keeps each worker's cursor but
deals the rest of the epoch out round-robin at the new size, so a worker can read up to
one batch more or less than its shards' remainder (tests: exactly once with 0 workers).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bionas.errors import BionasError
from bionas.trainer.batch_size import MIN_BATCH, release_cached_memory
from bionas.trainer.checkpoint import TrainState
from bionas.trainer.logs import EVENTS_LOG, append_jsonl
from bionas.trainer.run import update_run_config

if TYPE_CHECKING:  # the session imports this module
    from bionas.trainer.model import BioAutoMLNAS
    from bionas.trainer.optimizers import Optimizers
    from bionas.trainer.session import Session

log = logging.getLogger(__name__)

SMALLER_MODEL = (
    "start a new run (another --out) with a smaller model or input: a lower --image-size, "
    "--channels or --cells, or --dilated separable; or train on a device with more memory "
    "(or a higher --gpu-memory-gb, if that capped this one)"
)


def halved_batch_size(batch_size: int, what: str) -> int:
    """Half of `batch_size`, at least MIN_BATCH; a BionasError (what to do instead) when it
    is MIN_BATCH or less already. `what`: the failure, for the message."""
    if batch_size <= MIN_BATCH:
        raise BionasError(
            f"{what} at batch size {batch_size} per rank, and bionas trains with no fewer "
            f"than {MIN_BATCH}: {SMALLER_MODEL}"
        )
    return max(batch_size // 2, MIN_BATCH)


def resume_smaller(what: str, batch_size: int, why: str) -> BionasError:
    """The error that stops a run which cannot go on in place: resume with a smaller batch."""
    smaller = halved_batch_size(batch_size, what)
    return BionasError(
        f"{what} at batch size {batch_size} per rank; {why}. Resume from the last checkpoint "
        f"with a smaller batch: `bionas train ... --resume --batch-size {smaller}`"
    )


def rescale_progress(state: TrainState, old: int, new: int, paired: bool) -> None:
    """Re-express the epoch's progress (and the held-out θ stream's) in batches of `new`
    samples (see the module docstring). `paired`: a θ step from the held-out stream follows
    every w step, so the epoch's index counts two steps per main batch."""
    main = -(-state.main.batches * old // new)
    if paired:  # w steps at even indices: `state.batch` odd means a θ step is pending
        state.batch = 2 * main - state.batch % 2
    else:
        state.batch = main
    state.main.batches = main
    if state.arch is not None:
        state.arch.batches = -(-state.arch.batches * old // new)


def fresh_scaler(scaler: torch.amp.GradScaler, device_type: str) -> torch.amp.GradScaler:
    """The same loss scale and growth count, without the record of the failed step (a
    GradScaler that unscaled for an optimiser refuses to unscale again before update())."""
    fresh = torch.amp.GradScaler(device_type, enabled=scaler.is_enabled())
    fresh.load_state_dict(scaler.state_dict())
    return fresh


def batch_size_event(state: TrainState, old: int, new: int, reason: str) -> dict[str, Any]:
    """A line of events.jsonl: the batch size changed after `state.step` steps."""
    return {
        "event": "batch_size",
        "reason": reason,  # "out_of_memory" or "resume"
        "epoch": state.epoch + 1,
        "step": state.step,
        "from": old,
        "to": new,
    }


def change_batch_size(
    state: TrainState, old: int, new: int, reason: str, *, paired: bool, events_log: Path | None
) -> None:
    """Go on at `new` samples per batch: rescale the progress, then record the change in
    the state (the checkpoint's events), the log and `events_log` (rank 0's events.jsonl)."""
    rescale_progress(state, old, new, paired)
    event = batch_size_event(state, old, new, reason)
    state.events.append(event)
    if events_log is not None:
        append_jsonl(events_log, event)
    log.log(
        logging.WARNING if reason == "out_of_memory" else logging.INFO,
        "batch size %d -> %d per rank (%s) after step %d: epoch %d goes on from its batch %d "
        "of the new size",
        old, new, reason.replace("_", " "), state.step, state.epoch + 1, state.batch,
    )  # fmt: skip


def halve_batch(
    session: Session,
    model: BioAutoMLNAS,
    opts: Optimizers,
    state: TrainState,
    searching: bool,
    what: str,
) -> Session:
    """After a step ran out of memory before its update: free what it held, halve the
    batch, record it (log, events.jsonl, config.json; the caller checkpoints) and return the
    session that goes on from the last good step."""
    old = session.batch_size
    new = halved_batch_size(old, what)
    model.zero_grad(set_to_none=True)
    opts.w_scaler = fresh_scaler(opts.w_scaler, session.amp.device_type)
    opts.theta_scaler = fresh_scaler(opts.theta_scaler, session.amp.device_type)
    release_cached_memory()
    events = session.run_dir / EVENTS_LOG if session.dist.is_main else None
    paired = bool(session.heldout) and searching
    change_batch_size(state, old, new, "out_of_memory", paired=paired, events_log=events)
    session = replace(session, batch_size=new, config=replace(session.config, batch_size=new))
    if session.dist.is_main:
        update_run_config(session.run_dir, session.config.to_dict(), batch_size=new)
    return session
