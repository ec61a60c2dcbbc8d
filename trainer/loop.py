"""The search training loop: Algorithm 1 of the paper, read top to bottom.

    train()          setup -> epochs -> final checkpoint and model
    start_session()  config -> dataset and vocabularies -> model -> batch size ->
                     optimisers -> RUN_DIR (fresh) or checkpoint (resume)
    run_epoch()      batches -> one step each -> logs -> step checkpoints
    end_epoch()      validation -> collapse monitors -> history -> checkpoint
    train_step()     one w step or one θ step

Algorithm 1: an even batch (index within the epoch) updates the weights w with AdamW
(lr 1e-3, wd 1e-4) while θ is frozen; an odd batch updates θ with Adam (lr 3e-4, wd
1e-3) while w is frozen. Both clip the gradient norm at 1.0 (after unscaling) and use
cross-entropy with label smoothing 0.1. A fixed genotype, and the first
`--warmup-epochs` epochs, update w on every batch. The learning rates are constant (the
paper names no schedule).

BatchNorm on θ steps: the model stays in train mode, so a θ step normalises with batch
statistics like the w step it alternates with (as in DARTS), but its running statistics
are put back afterwards: every parameter and buffer of w is bit-identical across a θ
step, and the running statistics that evaluation uses come from w steps only.

`--arch-data heldout`: θ steps read a fixed slice of train (a hash of the processid)
through one persistent iterator, w steps read the rest; an epoch is then one pass over
the w slice with a θ step after each w step.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from bionas.errors import BionasError
from bionas.manifests.manifest import Manifest, load_manifest
from bionas.trainer.batch_size import (
    cap_gpu_memory,
    choose_batch_size,
    release_cached_memory,
    restoring_probe,
)
from bionas.trainer.checkpoint import (
    TrainState,
    checkpoint_payload,
    load_for_resume,
    refuse_overwrite,
    restore_checkpoint,
    save_checkpoint,
)
from bionas.trainer.config import Amp, TrainConfig, resolve_amp, resolve_device
from bionas.trainer.data import (
    Batch,
    BatchStream,
    Encoding,
    StreamPosition,
    StreamSpec,
    arch_spec,
    check_shards_exist,
    epoch_length,
    load_encoding,
    make_loader,
    train_spec,
    val_spec,
)
from bionas.trainer.genotype import Genotype
from bionas.trainer.leakage import resolve_meta_fields
from bionas.trainer.logs import (
    ALPHAS_LOG,
    EPOCHS_LOG,
    STEPS_LOG,
    alpha_record,
    append_jsonl,
    collapse_monitors,
    mean_alpha_entropy,
    progress_bar,
    start_logs,
    trim_logs,
)
from bionas.trainer.model import BioAutoMLNAS, build_model
from bionas.trainer.run import (
    CHECKPOINT,
    load_genotype,
    model_config_for,
    save_model,
    write_run_config,
)

log = logging.getLogger(__name__)
StepHook = Callable[[dict[str, Any]], None]


def train(
    config: TrainConfig, *, on_step: StepHook | None = None, on_epoch: StepHook | None = None
) -> list[dict[str, Any]]:
    """Run (or with `config.resume`, continue) a training run; returns the epoch history."""
    session, model, opts, state = start_session(config)
    arch_batches: Iterator[Batch] | None = None
    while state.epoch < session.config.epochs and not _stop(session, state):
        searching = bool(model.arch_parameters()) and state.epoch >= session.config.warmup_epochs
        if searching and session.heldout and arch_batches is None:
            spec = arch_spec(session.config, session.train_shards, session.batch_size)
            arch_batches = iter(_loader(session, spec, state.arch))
        finished = run_epoch(session, model, opts, state, searching, arch_batches, on_step)
        if finished:
            record = end_epoch(session, model, opts, state, searching)
            if on_epoch is not None:
                on_epoch(record)
    _checkpoint(session, model, opts, state)
    save_model(session.run_dir, model)
    return state.history


# --- setup -------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """What a run is set up with; fixed for the run (model, optimisers and state change)."""

    config: TrainConfig  # target, metadata fields and cells resolved
    encoding: Encoding
    device: torch.device
    amp: Amp
    batch_size: int
    train_shards: tuple[Path, ...]
    train_samples: int
    val_shards: tuple[Path, ...]
    heldout: bool  # θ steps read the held-out slice of train

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir


@dataclass
class Optimizers:
    w: torch.optim.Optimizer
    theta: torch.optim.Optimizer | None  # None for a fixed genotype
    w_scaler: torch.amp.GradScaler  # disabled unless fp16 autocast
    theta_scaler: torch.amp.GradScaler

    def stateful(self) -> dict[str, Any]:
        return {
            "w_optimizer": self.w,
            "theta_optimizer": self.theta,
            "w_scaler": self.w_scaler,
            "theta_scaler": self.theta_scaler,
        }


def build_optimizers(model: BioAutoMLNAS, config: TrainConfig, amp: Amp) -> Optimizers:
    """AdamW on w; Adam (coupled L2, the paper's) or AdamW on θ; one loss scaler each."""
    w = torch.optim.AdamW(
        model.weight_parameters(), lr=config.lr_w, weight_decay=config.weight_decay_w
    )
    theta = None
    if model.arch_parameters():
        kind = torch.optim.Adam if config.theta_optimizer == "adam" else torch.optim.AdamW
        theta = kind(
            model.arch_parameters(), lr=config.lr_theta, weight_decay=config.weight_decay_theta
        )
    scalers = [torch.amp.GradScaler("cuda", enabled=amp.loss_scaling) for _ in range(2)]
    return Optimizers(w, theta, *scalers)


def start_session(config: TrainConfig) -> tuple[Session, BioAutoMLNAS, Optimizers, TrainState]:
    """Resolve the options against dataset and device, build model and optimisers, then
    start RUN_DIR afresh or (with --resume) restore its checkpoint."""
    _seed_everything(config.seed)
    config, manifest, encoding, genotype = _resolve_dataset(config)
    device = resolve_device(config.device)
    amp = resolve_amp(config, device)
    model = build_model(model_config_for(config, encoding, genotype)).to(device)
    checkpoint_path = config.run_dir / CHECKPOINT
    payload = None
    if config.resume:
        vocab_sha256 = {f: v.sha256 for f, v in encoding.vocabs.items()}
        payload = load_for_resume(checkpoint_path, config, vocab_sha256)
    else:
        refuse_overwrite(checkpoint_path)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if config.gpu_memory_gb is not None:
            cap_gpu_memory(config.gpu_memory_gb, device)
    elif config.gpu_memory_gb is not None:
        log.warning("--gpu-memory-gb caps CUDA memory; ignored on %s", device)
    samples = manifest.num_samples("train")
    if payload is not None:
        batch_size = int(payload["batch_size"])
    else:
        batch_size = _pick_batch_size(config, model, encoding, device, amp, samples)
    has_val = config.val_split in manifest.splits
    session = Session(
        config=config,
        encoding=encoding,
        device=device,
        amp=amp,
        batch_size=batch_size,
        train_shards=tuple(check_shards_exist(manifest, "train")),
        train_samples=samples,
        val_shards=tuple(check_shards_exist(manifest, config.val_split)) if has_val else (),
        heldout=config.arch_data == "heldout" and bool(model.arch_parameters()),
    )
    opts = build_optimizers(model, config, amp)
    state = _start_or_restore(session, model, opts, payload)
    return session, model, opts, state


def _resolve_dataset(
    config: TrainConfig,
) -> tuple[TrainConfig, Manifest, Encoding, Genotype | None]:
    """Manifest, target, metadata fields (leakage guard), vocabularies, genotype."""
    try:
        manifest = load_manifest(config.dataset_dir)
    except (FileNotFoundError, ValueError) as err:
        raise BionasError(str(err)) from None
    if "train" not in manifest.splits:
        raise BionasError(f"{config.dataset_dir} has no 'train' split to train on")
    target = config.target or manifest.target
    try:
        meta_fields = resolve_meta_fields(
            config.meta_fields,
            target,
            manifest.body.get("vocabs", {}),
            allow_target_leakage=config.allow_target_leakage,
        )
    except ValueError as err:
        raise BionasError(str(err)) from None
    genotype = load_genotype(config.genotype)
    cells = len(genotype.cells) if genotype is not None else config.cells
    config = replace(config, target=target, meta_fields=meta_fields, cells=cells)
    encoding = load_encoding(manifest, target, meta_fields)
    return config, manifest, encoding, genotype


def _start_or_restore(
    session: Session, model: BioAutoMLNAS, opts: Optimizers, payload: dict[str, Any] | None
) -> TrainState:
    """A fresh TrainState and empty logs, or the checkpoint's state and trimmed logs;
    then (re)write config.json and the vocabulary copies."""
    if payload is None:
        state = TrainState(arch=StreamPosition() if session.heldout else None)
        start_logs(session.run_dir, model.alphas())
    else:
        state = restore_checkpoint(payload, model, opts.stateful())
        trim_logs(session.run_dir, state.step, state.epoch, state.history)
        if state.arch is None and session.heldout:
            state.arch = StreamPosition()
    write_run_config(
        session.run_dir,
        train_config=session.config.to_dict(),
        model_config=model.cfg,
        encoding=session.encoding,
        dataset_dir=session.config.dataset_dir,
        image_size=session.config.image_size,
        extra={
            "batch_size": session.batch_size,
            "amp": session.amp.to_dict(),
            "device": str(session.device),
        },
    )
    return state


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def _pick_batch_size(
    config: TrainConfig,
    model: BioAutoMLNAS,
    encoding: Encoding,
    device: torch.device,
    amp: Amp,
    samples: int,
) -> int:
    """--batch-size N, or auto: the CUDA search over real w + θ steps, 32 on CPU."""

    def probe_step(batch_size: int) -> None:
        # loss scale 1: fp16 steps must not be skipped as overflowed, or the optimiser
        # state (part of the memory a real step needs) would never be allocated
        scaler = torch.amp.GradScaler("cuda", init_scale=1.0, enabled=amp.loss_scaling)
        opts = replace(build_optimizers(model, config, amp), w_scaler=scaler, theta_scaler=scaler)
        size = config.image_size
        images = torch.randn(batch_size, 3, size, size, device=device)
        meta = torch.zeros(batch_size, len(encoding.meta_vocabs), dtype=torch.long, device=device)
        labels = torch.randint(encoding.num_classes, (batch_size,), device=device)
        for kind in ("w", "theta") if opts.theta is not None else ("w",):
            train_step(model, images, meta, labels, kind, opts, amp)

    fits = None
    if config.batch_size is None and device.type == "cuda":
        fits = restoring_probe(model, probe_step)
    batch_size = choose_batch_size(config.batch_size, device, fits, samples)
    log.info("batch size %d", batch_size)
    return batch_size


def _checkpoint(session: Session, model: BioAutoMLNAS, opts: Optimizers, state: TrainState) -> None:
    payload = checkpoint_payload(
        model,
        opts.stateful(),
        state,
        config=session.config.to_dict(),
        batch_size=session.batch_size,
        vocab_sha256={f: v.sha256 for f, v in session.encoding.vocabs.items()},
    )
    save_checkpoint(session.run_dir / CHECKPOINT, payload)


def _loader(session: Session, spec: StreamSpec, start: StreamPosition | None = None) -> DataLoader:
    dataset = BatchStream(spec, session.encoding, start)
    return make_loader(dataset, session.config.workers, pin_memory=session.device.type == "cuda")


# --- training ----------------------------------------------------------------------


def _stop(session: Session, state: TrainState) -> bool:
    return session.config.max_steps is not None and state.step >= session.config.max_steps


def run_epoch(
    session: Session,
    model: nn.Module,
    opts: Optimizers,
    state: TrainState,
    searching: bool,
    arch_batches: Iterator[Batch] | None,
    on_step: StepHook | None,
) -> bool:
    """Train the rest of the epoch in progress; False when --max-steps stopped it early."""
    cfg = session.config
    fraction = cfg.heldout_fraction if session.heldout else None
    steps, main_batches = epoch_length(
        session.train_samples, session.batch_size, fraction, searching
    )
    spec = train_spec(
        cfg, session.train_shards, session.batch_size, state.epoch, main_batches,
        heldout=session.heldout,
    )  # fmt: skip
    main_batches_iter = iter(_loader(session, spec, state.main))
    bar = progress_bar(steps, state.batch, f"epoch {state.epoch + 1}/{cfg.epochs}", cfg.quiet)
    model.train()
    while state.batch < steps:
        if _stop(session, state):
            bar.close()
            return False
        started = time.perf_counter()
        kind = "theta" if searching and state.batch % 2 == 1 else "w"
        from_arch = kind == "theta" and arch_batches is not None
        batch = next(arch_batches if from_arch else main_batches_iter)
        (state.arch if from_arch else state.main).advance(batch)
        images, meta, labels = _to_device(batch, session.device)
        result = train_step(
            model, images, meta, labels, kind, opts, session.amp,
            grad_clip=cfg.grad_clip, label_smoothing=cfg.label_smoothing,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        state.batch += 1
        state.step += 1
        _accumulate(state.totals, kind, result, seconds)
        record = _step_record(state, kind, result, seconds, opts, model)
        append_jsonl(session.run_dir / STEPS_LOG, record)
        bar.update()
        bar.set_postfix(loss=f"{result.loss:.3f}", img_s=f"{result.samples / seconds:.0f}")
        if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
            _checkpoint(session, model, opts, state)
        if on_step is not None:
            on_step(record)
    bar.close()
    return True


@dataclass(frozen=True)
class StepResult:
    loss: float
    correct: int
    samples: int
    grad_norm: float  # before clipping


def task_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.1) -> Tensor:
    """Cross-entropy with label smoothing, computed in fp32."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def train_step(
    model: nn.Module,
    images: Tensor,
    meta: Tensor,
    labels: Tensor,
    kind: str,
    opts: Optimizers,
    amp: Amp,
    *,
    grad_clip: float = 1.0,
    label_smoothing: float = 0.1,
) -> StepResult:
    """One step of Algorithm 1: `kind="w"` updates the weights, `"theta"` the θ logits;
    the other group is frozen (requires_grad off) and stays bit-identical."""
    if kind == "w":
        params, optimizer, scaler = model.weight_parameters(), opts.w, opts.w_scaler
    elif kind == "theta" and opts.theta is not None:
        params, optimizer, scaler = model.arch_parameters(), opts.theta, opts.theta_scaler
    else:
        raise ValueError(f"cannot take a {kind!r} step with this model")
    updated = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in updated)
    running_stats = [(b, b.clone()) for b in model.buffers()] if kind == "theta" else []
    model.zero_grad(set_to_none=True)
    with amp.autocast():
        logits = model(images, meta)
        loss = task_loss(logits, labels, label_smoothing)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    with torch.no_grad():
        for buffer, saved in running_stats:
            buffer.copy_(saved)
    return StepResult(
        loss=float(loss.detach()),
        correct=int((logits.detach().argmax(1) == labels).sum()),
        samples=int(labels.shape[0]),
        grad_norm=float(grad_norm),
    )


def _to_device(batch: Batch, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    return (
        batch.images.to(device, non_blocking=True),
        batch.meta.to(device, non_blocking=True),
        batch.labels.to(device, non_blocking=True),
    )


def _accumulate(totals: dict[str, float], kind: str, result: StepResult, seconds: float) -> None:
    for key, value in (
        (f"{kind}_loss_sum", result.loss * result.samples),
        (f"{kind}_correct", result.correct),
        (f"{kind}_samples", result.samples),
        ("seconds", seconds),
    ):
        totals[key] = totals.get(key, 0.0) + value


def _step_record(
    state: TrainState,
    kind: str,
    result: StepResult,
    seconds: float,
    opts: Optimizers,
    model: nn.Module,
) -> dict[str, Any]:
    optimizer = opts.w if kind == "w" else opts.theta
    return {
        "epoch": state.epoch + 1,
        "batch": state.batch - 1,
        "step": state.step,
        "kind": kind,
        "loss": result.loss,
        "acc": result.correct / result.samples,
        "grad_norm": result.grad_norm,
        "lr": optimizer.param_groups[0]["lr"],
        "img_per_s": result.samples / seconds,
        "alpha_entropy": mean_alpha_entropy(model.alphas()),
    }


def end_epoch(
    session: Session, model: nn.Module, opts: Optimizers, state: TrainState, searching: bool
) -> dict[str, Any]:
    """Validate, record the epoch (logs + history), then checkpoint and save the model."""
    val = evaluate(model, session) if session.val_shards else {}
    model.train()
    alphas = model.alphas()
    record = _epoch_record(state, searching, opts, val)
    record.update(collapse_monitors(alphas, model.pruned_op_count()))
    state.history.append(record)
    append_jsonl(session.run_dir / EPOCHS_LOG, record)
    if alphas:
        append_jsonl(
            session.run_dir / ALPHAS_LOG, alpha_record(alphas, state.epoch + 1, state.step)
        )
    skipped = {k: v for k, v in record["skipped"].items() if v}
    if skipped:
        log.warning("epoch %d skipped samples: %s", state.epoch + 1, skipped)
    state.epoch, state.batch, state.totals, state.main = state.epoch + 1, 0, {}, StreamPosition()
    release_cached_memory()  # the paper's between-epoch cache clearing + gc
    _checkpoint(session, model, opts, state)
    save_model(session.run_dir, model)
    return record


def _epoch_record(
    state: TrainState, searching: bool, opts: Optimizers, val: dict[str, Any]
) -> dict[str, Any]:
    t = state.totals

    def ratio(a: str, b: str) -> float | None:
        return t[a] / t[b] if t.get(b) else None

    samples = t.get("w_samples", 0.0) + t.get("theta_samples", 0.0)
    return {
        "epoch": state.epoch + 1,
        "step": state.step,
        "steps": state.batch,
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
        "skipped": state.main.skipped(),
        **val,
    }


@torch.no_grad()
def evaluate(model: nn.Module, session: Session) -> dict[str, Any]:
    """Loss (same criterion as training) and accuracy on the whole validation split."""
    model.eval()
    loader = _loader(session, val_spec(session.config, session.val_shards, session.batch_size))
    loss_sum, correct, samples = 0.0, 0, 0
    for batch in loader:
        images, meta, labels = _to_device(batch, session.device)
        with session.amp.autocast():
            logits = model(images, meta)
        loss_sum += float(task_loss(logits, labels, session.config.label_smoothing)) * len(batch)
        correct += int((logits.argmax(1) == labels).sum())
        samples += len(batch)
    if samples == 0:
        return {"val_loss": None, "val_acc": None, "val_samples": 0}
    return {"val_loss": loss_sum / samples, "val_acc": correct / samples, "val_samples": samples}
