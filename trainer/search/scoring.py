"""Scoring a genotype with the supernet's shared weights (every search but darts).

A candidate is scored on the first `--search-val-batches` batches of the validation split,
the same batches for every candidate (read once, in manifest order), by running only its
path through the supernet (`BioAutoMLNAS.forward(..., path=...)`). BatchNorm uses the
statistics of each validation batch (train-mode BN, as ENAS and random search with weight
sharing evaluate): the supernet's running statistics mix every path it was trained on and
fit none of them, and re-estimating them per candidate would cost a pass over train
batches each time. The running statistics are put back afterwards, and dropout is off.
The score is the accuracy; ties go to the lower loss.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from bionas.errors import BionasError
from bionas.trainer.data import Batch, val_spec
from bionas.trainer.model import BioAutoMLNAS
from bionas.trainer.search.space import Path
from bionas.trainer.session import Session
from bionas.trainer.step import task_loss, to_device


@dataclass(frozen=True)
class Score:
    val_acc: float
    val_loss: float
    samples: int

    @property
    def key(self) -> tuple[float, float]:
        """Larger is better: accuracy, then the lower loss."""
        return (self.val_acc, -self.val_loss)


def score_batches(session: Session, count: int) -> list[Batch]:
    """The first `count` validation batches, kept on the host for every candidate."""
    from bionas.trainer.loop import _loader  # the loop imports the search registry

    if not session.val_shards:
        raise BionasError(
            f"--search {session.config.search} scores genotypes on the validation split, and "
            f"{session.config.dataset_dir} has no {session.config.val_split!r} split "
            "(choose one with --val-split, or use --search darts)"
        )
    loader = _loader(session, val_spec(session.config, session.val_shards, session.batch_size))
    batches = list(itertools.islice(iter(loader), count))
    if not batches:
        raise BionasError(f"no readable sample in the {session.config.val_split!r} split")
    return batches


@torch.no_grad()
def score_path(model: BioAutoMLNAS, path: Path, batches: list[Batch], session: Session) -> Score:
    """Accuracy and loss of `path` on `batches` with the shared weights (see above)."""
    saved = [(b, b.clone()) for b in model.buffers()]
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()  # batch statistics; the running ones are restored below
    loss_sum, correct, samples = 0.0, 0, 0
    try:
        for batch in batches:
            images, meta, labels = to_device(batch, session.device)
            with session.amp.autocast():
                logits = model(images, meta, path=path)
            loss_sum += float(task_loss(logits, labels, session.config.label_smoothing)) * len(
                batch
            )
            correct += int((logits.argmax(1) == labels).sum())
            samples += len(batch)
    finally:
        for buffer, value in saved:
            buffer.copy_(value)
        model.train()
    return Score(correct / samples, loss_sum / samples, samples)
