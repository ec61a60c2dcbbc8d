"""The loop's side of running out of memory: fetch a batch and take a step, turning an
out-of-memory error before the optimiser step into "go on at half the batch"
(`bionas.trainer.rebatch`), and any other into a stop that says what to do.

    next_batch()   None when fetching (`--decode gpu`: decoding on the device) ran out
    try_step()     None when the copy to the device or the gradient ran out; a stop when
                   the optimiser step did (its update may be half applied)

On several ranks a rank cannot shrink its batch alone: the run stops there, naming
`--resume --batch-size`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from bionas.trainer.batch_size import is_out_of_memory
from bionas.trainer.data import Batch
from bionas.trainer.model import BioAutoMLNAS
from bionas.trainer.optimizers import Optimizers
from bionas.trainer.rebatch import resume_smaller
from bionas.trainer.session import Session
from bionas.trainer.step import StepOutOfMemory, StepResult, to_device, train_step


def try_step(
    session: Session,
    model: BioAutoMLNAS,
    forward: nn.Module,
    opts: Optimizers,
    batch: Batch,
    kind: str,
) -> StepResult | None:
    """`train_step` on `batch`; None when it ran out of memory before its optimiser step
    (its tensors are gone once this returns). Out of memory inside the optimiser step, or
    on several ranks, stops the run with what to do (`bionas.trainer.rebatch`)."""
    cfg = session.config
    try:
        images, meta, labels = _to_device(batch, session.device, kind)
        return train_step(
            model, images, meta, labels, kind, opts, session.amp,
            grad_clip=cfg.grad_clip, label_smoothing=cfg.label_smoothing, forward=forward,
        )  # fmt: skip
    except StepOutOfMemory as err:
        stop_if_distributed(session, str(err))
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        what = f"a {kind} step ran out of memory inside its optimiser step"
        why = "its update may be half applied, so the run stops rather than go on from it"
        raise resume_smaller(what, len(batch), why) from None
    return None


def next_batch(session: Session, batches: Iterator[Batch], kind: str) -> Batch | None:
    """The next batch; None when fetching it ran out of device memory (`--decode gpu`
    decodes and resizes on the device in here). Nothing of it reached the run's state, so
    the run goes on at half the batch as after a step that ran out (the streams are built
    again from the last good step); on several ranks it stops (`stop_if_distributed`)."""
    try:
        return next(batches)
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
    stop_if_distributed(session, f"decoding a batch for a {kind} step ran out of memory")
    return None


def stop_if_distributed(session: Session, what: str) -> None:
    """On several ranks a rank cannot shrink its batch alone (the others would wait for it
    in the next collective): stop, naming `--resume --batch-size`."""
    if session.dist.enabled:
        why = f"rank {session.dist.rank} cannot shrink its batch while the others wait"
        raise resume_smaller(what, session.batch_size, why)


def _to_device(batch: Batch, device: torch.device, kind: str) -> tuple[Tensor, Tensor, Tensor]:
    """`to_device`; running out of memory for the copy is a `StepOutOfMemory` (nothing
    has changed yet: the step can be taken again on smaller batches)."""
    try:
        return to_device(batch, device)
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
    raise StepOutOfMemory(kind, len(batch))
