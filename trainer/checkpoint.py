"""Checkpoints: `RUN_DIR/checkpoints/last.pt`, written atomically, read with weights_only.

A checkpoint holds only tensors and plain containers (dicts, lists, str, numbers), so
`torch.load(..., weights_only=True)` reads it without unpickling code: model state (w
and θ), both optimisers, both loss scalers, the training position (epoch, batch within
the epoch, global step, and the data streams' positions), the history, partial sums of
the epoch in progress, RNG states (python, numpy, torch, cuda), the config and the
vocabularies' sha256.

Resuming is exact on CPU: the data stream is a function of (seed, epoch) and can skip
the batches already used (see `bionas.trainer.data.StreamPosition`), and the RNG states
are those of the moment the checkpoint was taken.

A distributed run (rank 0 writes the file) also stores, per rank, what differs between
ranks (`rank_state`): its stream positions, its RNG states and its BatchNorm running
statistics (ranks average them only at the end of an epoch). Everything else (w, θ,
optimisers, scalers, the all-rank metric sums) is equal on all ranks, and every rank
restores it from the one file, then its own part. With the same number of ranks a resume
is exact on CPU (gloo all-reduces deterministically); on CUDA it is as exact as one GPU's
(non-deterministic kernels). The number of ranks may change only at an epoch end: the
streams then start the epoch afresh on the new split, the held-out θ stream restarts,
and each rank's RNG is seeded anew, so the run goes on but is no longer bit-comparable.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bionas.errors import BionasError
from bionas.trainer.config import LEGACY_DEFAULTS, TrainConfig
from bionas.trainer.data import POSITION_VERSION, StreamPosition
from bionas.trainer.distributed import fingerprint
from bionas.trainer.run import CHECKPOINT

FORMAT = "bionas.checkpoint/1"
log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where training is: what a checkpoint restores besides model and optimisers."""

    epoch: int = 0  # the epoch in progress, 0-based
    batch: int = 0  # batches done in it
    step: int = 0  # steps done in the whole run
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    totals: dict[str, float] = field(default_factory=dict)  # running sums of this epoch
    main: StreamPosition = field(default_factory=StreamPosition)  # this epoch's stream
    arch: StreamPosition | None = None  # the persistent held-out stream of θ steps
    # what `arch` had skipped over all ranks when the last epoch ended: its counts run over
    # the whole run, so an epoch's `theta_skipped` is them less these (records.theta_skipped)
    arch_skipped: dict[str, int] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # events.jsonl: batch size

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "history": self.history,
            "totals": dict(self.totals),
            "main": self.main.to_dict(),
            "arch": None if self.arch is None else self.arch.to_dict(),
            "arch_skipped": dict(self.arch_skipped),
            "events": self.events,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        arch = data.get("arch")
        return cls(
            epoch=int(data["epoch"]),
            batch=int(data["batch"]),
            step=int(data["step"]),
            history=list(data["history"]),
            totals=dict(data["totals"]),
            main=StreamPosition.from_dict(data["main"]),
            arch=None if arch is None else StreamPosition.from_dict(arch),
            # none before theta_skipped: the next epoch reports all the stream had skipped
            arch_skipped=dict(data.get("arch_skipped", {})),
            events=list(data.get("events", [])),  # none before events.jsonl
        )


def capture_rng() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (weights_only-loadable)."""
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a temporary file, fsync, rename, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save({"format": FORMAT, **payload}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without unpickling code; a clear error when it is not one."""
    path = Path(path)
    if not path.exists():
        raise BionasError(
            f"cannot resume: {path} does not exist (no checkpoint was written yet; "
            "start without --resume)"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise BionasError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BionasError(f"{path} is not a bionas checkpoint ({FORMAT})")
    return payload


def rank_state(model: nn.Module, state: TrainState) -> dict[str, Any]:
    """This rank's part of a distributed checkpoint (see the module docstring), with its
    step count and a fingerprint of its w and θ, which must agree on all ranks."""
    return {
        "step": state.step,
        "main": state.main.to_dict(),
        "arch": None if state.arch is None else state.arch.to_dict(),
        "rng": capture_rng(),
        "buffers": {name: b.detach().cpu().clone() for name, b in model.named_buffers()},
        "params_sha256": fingerprint(model.named_parameters()),
    }


def check_replicas(ranks: Sequence[Mapping[str, Any]]) -> None:
    """Every rank must have taken the same steps to the same w and θ; a bug otherwise."""
    steps = [r["step"] for r in ranks]
    hashes = [r["params_sha256"][:12] for r in ranks]
    if len(set(steps)) > 1 or len(set(hashes)) > 1:
        raise RuntimeError(f"ranks diverged: steps {steps}, parameter sha256 {hashes}")


def checkpoint_payload(
    model: nn.Module,
    stateful: Mapping[str, Any],
    state: TrainState,
    ranks: Sequence[Mapping[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Model, every object with a state_dict (optimisers, scalers; None allowed), the
    training state and the RNG states, plus `extra` plain values (config, batch size, …);
    `ranks`: every rank's `rank_state` in a distributed run."""
    payload: dict[str, Any] = {
        "model": model.state_dict(),
        "state": state.to_dict(),
        "rng": capture_rng(),
        "world_size": len(ranks) if ranks else 1,
        **extra,
    }
    if ranks and len(ranks) > 1:
        payload["ranks"] = list(ranks)
    for name, obj in stateful.items():
        payload[name] = None if obj is None else obj.state_dict()
    return payload


def restore_checkpoint(
    payload: Mapping[str, Any],
    model: nn.Module,
    stateful: Mapping[str, Any],
    rank: int = 0,
    world_size: int = 1,
) -> TrainState:
    """Put model, optimisers, scalers and RNGs back (and, written by as many ranks as now,
    this rank's streams, RNGs and running statistics); returns the training state."""
    model.load_state_dict(payload["model"])
    for name, obj in stateful.items():
        if obj is not None and payload.get(name):  # a disabled scaler saved {}
            obj.load_state_dict(payload[name])
    restore_rng(payload["rng"])
    state = TrainState.from_dict(payload["state"])
    if saved_world_size(payload) != world_size:
        state.arch = None  # the held-out stream's split changed with the ranks: restart it
        state.arch_skipped = {}  # and its counts with it
        return state  # an epoch end (load_for_resume): the streams start afresh anyway
    if "ranks" in payload:
        mine = payload["ranks"][rank]
        restore_rng(mine["rng"])
        state.main = StreamPosition.from_dict(mine["main"])
        state.arch = None if mine["arch"] is None else StreamPosition.from_dict(mine["arch"])
        with torch.no_grad():
            for name, value in mine["buffers"].items():
                model.get_buffer(name).copy_(value)
    return state


def saved_world_size(payload: Mapping[str, Any]) -> int:
    return int(payload.get("world_size", 1))


def refuse_overwrite(path: Path) -> None:
    """A fresh run must not silently replace a resumable one."""
    if path.exists():
        raise BionasError(
            f"{path.parent.parent} already holds a run ({path.name}); pass --resume to "
            "continue it, or choose another --out"
        )


def load_for_resume(
    path: Path, config: TrainConfig, vocab_sha256: Mapping[str, str], world_size: int = 1
) -> dict[str, Any]:
    """The checkpoint to resume from; refused when options or vocabularies changed, or
    when it was written mid-epoch by another number of ranks."""
    payload = load_checkpoint(path)
    saved, batch = saved_world_size(payload), int(payload["state"]["batch"])
    if saved != world_size and batch > 0:
        epoch = int(payload["state"]["epoch"]) + 1
        raise BionasError(
            f"cannot resume {config.run_dir}: its checkpoint was written by {saved} "
            f"process(es) in the middle of epoch {epoch} (after batch {batch}), and the "
            f"data streams of {saved} rank(s) cannot continue on {world_size}. Resume with "
            f"{saved} process(es) (torchrun --nproc-per-node ...), or from a checkpoint "
            "written at the end of an epoch."
        )
    changed = config.differences(TrainConfig.from_stored(payload["config"]))
    if changed:
        listed = ", ".join(f"{k}={new!r} (was {old!r})" for k, (new, old) in changed.items())
        raise BionasError(
            f"cannot resume {config.run_dir}: options differ from the checkpointed run: "
            f"{listed}. Pass the original options, or start a new run with another --out."
        )
    if payload["vocab_sha256"] != dict(vocab_sha256):
        raise BionasError(
            f"cannot resume {config.run_dir}: the dataset's vocabularies changed since the "
            "checkpoint, so class and metadata indices would mean something else"
        )
    _check_stream_positions(payload["state"], config)
    return payload


def _check_stream_positions(state: Mapping[str, Any], config: TrainConfig) -> None:
    """Positions stored before streams had passes (`POSITION_VERSION`): a held-out θ
    stream's is refused, a mid-epoch main stream's resumes, no longer bit-exactly."""
    arch = state.get("arch")
    if arch is not None and StreamPosition.version_of(arch) < POSITION_VERSION:
        raise BionasError(
            f"cannot resume {config.run_dir}: it was checkpointed by an older bionas whose "
            "--arch-data heldout slice was chosen sample by sample (a hash of the "
            "processid); this version holds out whole train shards, so the run cannot go on "
            "with the same slices. Finish it with the bionas that started it, or start a "
            "new run with another --out."
        )
    main = state["main"]
    if StreamPosition.version_of(main) < POSITION_VERSION and int(main["batches"]) > 0:
        log.warning(
            "%s was checkpointed mid-epoch by an older bionas: the rest of epoch %d reads "
            "as many samples, but its batches differ from an uninterrupted run's",
            config.run_dir, int(state["epoch"]) + 1,
        )  # fmt: skip


def check_architecture(payload: Mapping[str, Any], architecture: Any, run_dir: Path) -> None:
    """Refuse to resume a fixed network with another genotype than it was trained with (the
    path may differ: a moved run, or `--out` spelt otherwise). Checkpoints written before
    the architecture was recorded are not checked."""
    if "architecture" not in payload or payload["architecture"] == architecture:
        return
    raise BionasError(
        f"cannot resume {run_dir}: its genotype is not the one the checkpointed run trained "
        "(another op on some edge). Pass the original genotype, or start a new run."
    )


def stored_config(run_dir: Path) -> dict[str, Any]:
    """The options a run was checkpointed with (what `--resume` continues with)."""
    return {**LEGACY_DEFAULTS, **load_checkpoint(Path(run_dir) / CHECKPOINT)["config"]}
