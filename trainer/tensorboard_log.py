"""TensorBoard event files in RUN_DIR/tensorboard/, when the `tensorboard` package is there.

The JSONL logs (`bionas.trainer.logs`) are the record; these event files are a view of the
same numbers for `tensorboard --logdir RUNS_DIR`: per step the loss, accuracy and img/s of
w and θ steps and the mean α entropy; per epoch the train and validation loss and
accuracy, img/s, the collapse monitors and α of every op on every edge. The x axis is the
global step throughout.

Optional by design: without `tensorboard` installed (`pip install 'bionas[tensorboard]'`)
nothing is written, and a TensorBoard failure (full disk, a broken install) is logged once
and ends the event files, never the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bionas.trainer.ops import OP_NAMES

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
Hook = Callable[[dict[str, Any]], None]
_EPOCH_SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "img_per_s": "speed/img_per_s",
    "alpha_entropy_mean": "alpha_entropy/mean",
    "param_free_mass_mean": "collapse/param_free_mass_mean",
    "skip_count": "collapse/skip_edges",
    "cut_edges": "collapse/cut_edges",
    "pruned_ops": "collapse/pruned_ops",
}


class TensorBoardLog:
    """One run's event files; every method is a no-op when there is no writer."""

    def __init__(self, writer: Any | None) -> None:
        self._writer = writer

    @classmethod
    def open(cls, run_dir: Path, *, step: int, enabled: bool = True) -> TensorBoardLog:
        """A log in RUN_DIR/tensorboard, or a no-op one (disabled, or no `tensorboard`).
        Events from `step` on that an earlier attempt wrote are purged (TensorBoard's
        purge_step): all of them for a fresh run, those after the checkpoint on resume."""
        if not enabled:
            return cls(None)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
            return cls(None)
        except Exception as err:  # a broken install (say a protobuf mismatch) fails here
            log.warning("TensorBoard cannot be imported, no event files for this run: %s", err)
            return cls(None)
        try:
            writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=step)
        except Exception as err:  # any failure: see _guard
            log.warning("TensorBoard could not start, no event files for this run: %s", err)
            return cls(None)
        return cls(writer)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def step_hook(self, then: Hook | None) -> Hook | None:
        """`then` (the caller's step hook) preceded by this log's `step`."""
        if self._writer is None:
            return then

        def hook(record: dict[str, Any]) -> None:
            self.step(record)
            if then is not None:
                then(record)

        return hook

    def step(self, record: dict[str, Any]) -> None:
        """One line of steps.jsonl: loss, accuracy, img/s by kind (w or θ), α entropy."""
        kind, step = record["kind"], record["step"]
        values = {
            f"step/{kind}_loss": record.get("loss"),
            f"step/{kind}_acc": record.get("acc"),
            "step/img_per_s": record.get("img_per_s"),
            "step/alpha_entropy_mean": record.get("alpha_entropy"),
        }
        self._guard("step", lambda: self._scalars(values, step))

    def epoch(self, record: dict[str, Any], alphas: dict[str, torch.Tensor]) -> None:
        """One line of epochs.jsonl, plus α of every op on every edge; flushed to disk."""
        step = record["step"]
        values = {tag: record.get(key) for key, tag in _EPOCH_SCALARS.items()}
        for edge, entropy in (record.get("alpha_entropy") or {}).items():
            values[f"alpha_entropy/{edge}"] = entropy
        for edge, row in alphas.items():
            for op, alpha in zip(OP_NAMES, row.tolist(), strict=False):
                values[f"alpha/{edge}/{op}"] = alpha
        self._guard("epoch", lambda: (self._scalars(values, step), self._writer.flush()))

    def close(self) -> None:
        self._guard("close", lambda: self._writer.close())
        self._writer = None

    def _scalars(self, values: dict[str, Any], step: int) -> None:
        for tag, value in values.items():
            if isinstance(value, int | float):
                self._writer.add_scalar(tag, value, global_step=step)

    def _guard(self, what: str, action: Callable[[], Any]) -> None:
        # TensorBoard is a view of logs the run writes anyway: whatever goes wrong in it
        # (an OSError, a protobuf or import error of a broken install) must not stop
        # training, so it is reported once and the event files end there.
        if self._writer is None:
            return
        try:
            action()
        except Exception as err:  # any failure: see above
            log.warning("TensorBoard %s failed, no more event files for this run: %s", what, err)
            self._writer = None
