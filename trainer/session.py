"""Setting up a training run: everything `bionas.trainer.loop.train` needs before the
first batch.

    start_session()  config -> dataset and vocabularies -> model -> batch size ->
                     optimisers -> RUN_DIR (fresh) or checkpoint (resume)

On several ranks every rank sets up the same way (same seed, same model, same checkpoint
file); the batch size is the smallest any rank chose; only rank 0 writes RUN_DIR; and
each rank's own randomness (dropout) is then seeded apart (`rank_seed`).
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bionas.errors import BionasError
from bionas.manifests.manifest import Manifest, load_manifest
from bionas.trainer.backbones import load_backbone_weights
from bionas.trainer.batch_decode import resolve_decode
from bionas.trainer.batch_size import cap_gpu_memory, pick_batch_size
from bionas.trainer.checkpoint import (
    TrainState,
    check_architecture,
    load_for_resume,
    refuse_overwrite,
    restore_checkpoint,
    saved_world_size,
)
from bionas.trainer.config import (
    PAPER_LR_THETA,
    Amp,
    TrainConfig,
    auto_lr_theta,
    resolve_amp,
    resolve_device,
)
from bionas.trainer.data import StreamPosition, check_shards_exist, epoch_length
from bionas.trainer.distributed import SINGLE, Dist, data_parallel, rank_seed
from bionas.trainer.encoding import Encoding, load_encoding
from bionas.trainer.genotype import Genotype, architecture_of
from bionas.trainer.heldout import HeldOutShards, split_heldout
from bionas.trainer.leakage import dataset_taxonomy, resolve_meta_fields
from bionas.trainer.logs import EVENTS_LOG, start_logs, trim_logs
from bionas.trainer.model import BioAutoMLNAS, ModelConfig, build_model
from bionas.trainer.optimizers import Optimizers, build_optimizers, lazy_fields_for
from bionas.trainer.rebatch import change_batch_size
from bionas.trainer.run import (
    CHECKPOINT,
    CONFIG_NAME,
    load_genotype,
    model_config_for,
    run_encoding,
    write_run_config,
)
from bionas.trainer.step_options import (
    StepOptions,
    apply_step_options,
    match_state_layouts,
    resolve_step_options,
)
from bionas.trainer.train_values import TRAIN_VALUES_NAME, restrict_to_train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    """What a run is set up with; fixed for the run (model, optimisers and state change)."""

    config: TrainConfig  # target, metadata fields and cells resolved
    encoding: Encoding
    device: torch.device
    amp: Amp
    batch_size: int  # per rank
    train_shards: tuple[Path, ...]
    train_samples: int  # all ranks together
    val_shards: tuple[Path, ...]
    heldout: HeldOutShards | None  # with --arch-data heldout: θ steps' shards, w steps'
    dist: Dist = SINGLE
    lr_theta: float | None = None  # θ's learning rate as resolved (`--lr-theta auto`)
    # sha256 of the dataset's own vocabulary files for the fields used (before the cut to
    # the train values): what a resume checks the dataset against
    dataset_vocab_sha256: dict[str, str] = field(default_factory=dict)
    lazy_fields: tuple[str, ...] = ()  # tables updated lazily (`--sparse-embeddings`)
    step_options: StepOptions = StepOptions()  # --compile, --channels-last, fused, resolved

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir


def start_session(
    config: TrainConfig, dist: Dist = SINGLE
) -> tuple[Session, BioAutoMLNAS, nn.Module, Optimizers, TrainState]:
    """Resolve the options against dataset and device, build model and optimisers, then
    start RUN_DIR afresh or (with --resume) restore its checkpoint. Returns the model and
    what train steps call forward on (the model in DDP on several ranks)."""
    _seed_everything(config.seed)
    config, manifest, encoding, genotype = _resolve_dataset(config)
    dataset_vocabs = {f: manifest.body["vocabs"][f]["sha256"] for f in encoding.vocabs}
    if config.resume:  # before the model is built: the encoding sizes its embeddings
        encoding = resume_encoding(config.run_dir, dataset_vocabs, encoding)
    device = dist.device if dist.enabled else resolve_device(config.device)
    threads = config.threads or cpu_threads(device, config.workers)
    if threads is not None:
        torch.set_num_threads(threads)
    amp = resolve_amp(config, device)
    model = build_backbone_checked(model_config_for(config, encoding, genotype), config)
    model = model.to(device)
    if config.weights is not None and not config.resume:  # a resume restores its own
        load_backbone_weights(model.image_encoder, config.weights)
    train_shards = tuple(check_shards_exist(manifest, "train", config.strict))
    heldout = None
    if config.arch_data == "heldout" and model.arch_parameters():
        heldout = split_heldout(manifest, train_shards, config.heldout_fraction)
    checkpoint_path = config.run_dir / CHECKPOINT
    payload = None
    if config.resume:
        vocab_sha256 = {f: v.sha256 for f, v in encoding.vocabs.items()}
        payload = load_for_resume(checkpoint_path, config, vocab_sha256, dist.world_size)
        check_architecture(payload, architecture_of(genotype), config.run_dir)
    else:
        refuse_overwrite(checkpoint_path)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if config.gpu_memory_gb is not None:
            cap_gpu_memory(config.gpu_memory_gb, device)
    elif config.gpu_memory_gb is not None:
        log.warning("--gpu-memory-gb caps CUDA memory; ignored on %s", device)
    samples = manifest.num_samples("train")
    lazy = lazy_fields_for(config, model, dist)
    if payload is not None:  # --resume --batch-size N goes on at N (trainer.rebatch)
        batch_size = config.batch_size or int(payload["batch_size"])
    else:
        per_rank = samples // dist.world_size
        picked = pick_batch_size(config, model, encoding, device, amp, per_rank, lazy)
        batch_size = dist.min(picked)
    has_val = config.val_split in manifest.splits
    lr_theta = _resolve_lr_theta(config, model, heldout, samples, batch_size, dist.world_size)
    if payload is not None and lr_theta is not None and payload.get("theta_optimizer"):
        # a resumed run goes on at the rate it ran at (the optimiser state restores it);
        # `auto` would otherwise report a rate recomputed from a changed --epochs
        lr_theta = float(payload["theta_optimizer"]["param_groups"][0]["lr"])
    session = Session(
        config=config,
        encoding=encoding,
        device=device,
        amp=amp,
        batch_size=batch_size,
        train_shards=train_shards,
        train_samples=samples,
        val_shards=(
            tuple(check_shards_exist(manifest, config.val_split, config.strict)) if has_val else ()
        ),
        heldout=heldout,
        dist=dist,
        lr_theta=lr_theta,
        dataset_vocab_sha256=dataset_vocabs,
        lazy_fields=lazy,
        step_options=resolve_step_options(config, model, device),
    )
    opts = build_optimizers(model, config, amp, lr_theta, lazy)
    apply_step_options(model, session.step_options)  # after the probe, which runs eager
    # DDP copies rank 0's parameters and buffers to every rank when it is built: wrap
    # before restoring, which puts back each rank's own running statistics
    forward = data_parallel(model, dist)
    state = _start_or_restore(session, model, opts, payload)
    return session, model, forward, opts, state


def cpu_threads(device: torch.device, workers: int) -> int | None:
    """Default torch threads: on CPU with DataLoader workers, the cores the workers leave
    (OpenMP threads that share a core with a busy worker spin and stall each other: on 2
    cores, a demo-sized supernet step measured 1.74 s with 2 threads against 0.11 s with
    1 while another process held a core); otherwise torch's own default (None)."""
    if device.type != "cpu" or workers == 0 or "OMP_NUM_THREADS" in os.environ:
        return None  # torchrun sets OMP_NUM_THREADS=1 per rank: its choice stands
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - workers)


def resume_encoding(run_dir: Path, dataset_vocabs: dict[str, str], encoding: Encoding) -> Encoding:
    """A resumed run goes on with the vocabularies it trained with (RUN_DIR/vocabs), as long
    as the dataset's vocabulary files are still the ones it started from: how the trainer
    derives its vocabularies from them may have changed since (bionas 0.2 cuts feature
    values absent from train), and a run keeps its own indices. A changed dataset file is
    left to `load_for_resume` to refuse."""
    try:
        body = json.loads((run_dir / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return encoding
    started_from = body.get("dataset_vocab_sha256") or body.get("vocab_sha256")  # 0.1: uncut
    if started_from != dataset_vocabs:
        return encoding
    own = run_encoding(run_dir, body, encoding.target, encoding.meta_fields)
    if own is not None and own != encoding:
        log.info("resuming with the vocabularies %s was trained with", run_dir)
    return own or encoding


def _resolve_lr_theta(
    config: TrainConfig,
    model: BioAutoMLNAS,
    heldout: HeldOutShards | None,
    train_samples: int,
    batch_size: int,
    world_size: int,
) -> float | None:
    """θ's learning rate: the given one, or `auto_lr_theta` of the θ steps the search plans
    (every epoch after the warm-up; --max-steps does not count, it is a stop)."""
    if not model.arch_parameters():
        return None
    if config.lr_theta is not None:
        return config.lr_theta
    samples = heldout.w_samples if heldout else train_samples
    steps, _ = epoch_length(samples, batch_size, bool(heldout), True, world_size)
    theta_steps = (steps // 2) * max(config.epochs - config.warmup_epochs, 0)
    if theta_steps == 0:
        return PAPER_LR_THETA  # all warm-up: no θ step planned to scale to
    lr = auto_lr_theta(theta_steps)
    log.info("--lr-theta auto: %d θ steps planned -> lr %.3g", theta_steps, lr)
    return lr


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
            dataset_taxonomy(manifest.body),
            allow_target_leakage=config.allow_target_leakage,
        )
    except ValueError as err:
        raise BionasError(str(err)) from None
    genotype = load_genotype(config.genotype, config.cells)
    cells = len(genotype.cells) if genotype is not None else config.cells
    config = replace(config, target=target, meta_fields=meta_fields, cells=cells)
    encoding = load_encoding(manifest, target, meta_fields)
    # values that occur only outside the train split encode as unknown (SPEC §6)
    encoding = restrict_to_train(encoding, manifest, config.run_dir / TRAIN_VALUES_NAME)
    return config, manifest, encoding, genotype


def _start_or_restore(
    session: Session, model: BioAutoMLNAS, opts: Optimizers, payload: dict[str, Any] | None
) -> TrainState:
    """A fresh TrainState and empty logs, or the checkpoint's state and trimmed logs;
    then (re)write config.json and the vocabulary copies (rank 0 only)."""
    dist, main = session.dist, session.dist.is_main
    if payload is None:
        state = TrainState(arch=StreamPosition() if session.heldout else None)
        if main:
            start_logs(session.run_dir, model.alphas())
        if dist.enabled:
            _seed_everything(rank_seed(session.config.seed, dist.rank, 0))
    else:
        state = restore_checkpoint(payload, model, opts.stateful(), dist.rank, dist.world_size)
        match_state_layouts(opts.w, opts.theta)  # the checkpoint's may be the other layout
        if main:
            trim_logs(session.run_dir, state.step, state.epoch, state.history, state.events)
        if state.arch is None and session.heldout:
            state.arch = StreamPosition()
        if int(payload["batch_size"]) != session.batch_size:
            _resume_at_batch_size(session, model, state, int(payload["batch_size"]))
        saved = saved_world_size(payload)
        if saved != dist.world_size:
            _seed_everything(rank_seed(session.config.seed, dist.rank, state.step))
            if main:
                log.warning(
                    "resuming a run of %d process(es) on %d: it goes on from epoch %d, "
                    "but is no longer bit-comparable with an uninterrupted run",
                    saved, dist.world_size, state.epoch + 1,
                )  # fmt: skip
    if main:
        write_run_config(
            session.run_dir,
            train_config=session.config.to_dict(),
            model_config=model.cfg,
            encoding=session.encoding,
            dataset_dir=session.config.dataset_dir,
            image_size=session.config.image_size,
            extra={
                "batch_size": session.batch_size,
                "world_size": dist.world_size,
                "amp": session.amp.to_dict(),
                "lr_theta": session.lr_theta,
                "sparse_embedding_fields": list(session.lazy_fields),
                "step_options": session.step_options.to_dict(),
                "dataset_vocab_sha256": session.dataset_vocab_sha256,
                "device": str(session.device),
                "decode": resolve_decode(session.config.decode, session.device),
                **({"heldout": session.heldout.to_dict()} if session.heldout else {}),
            },
        )
    return state


def _resume_at_batch_size(
    session: Session, model: BioAutoMLNAS, state: TrainState, saved: int
) -> None:
    """`--resume --batch-size N` on a run checkpointed at another size: the epoch goes on
    from the same samples in batches of N, and events.jsonl says so (trainer.rebatch)."""
    searching = bool(model.arch_parameters()) and state.epoch >= session.config.warmup_epochs
    paired = bool(session.heldout) and searching
    events = session.run_dir / EVENTS_LOG if session.dist.is_main else None
    change_batch_size(state, saved, session.batch_size, "resume", paired=paired, events_log=events)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def build_backbone_checked(cfg: ModelConfig, config: TrainConfig) -> BioAutoMLNAS:
    """The model; for a torchvision backbone, also one forward of a blank image at
    --image-size, so a size the network cannot take (ViT's patch multiple, Inception's
    minimum) is one line now rather than a traceback at the first step."""
    if cfg.backbone is None:
        return build_model(cfg)
    size = config.image_size
    try:
        model = build_model(cfg)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model.image_encoder(torch.zeros(1, 3, size, size))
        model.train(was_training)
    except (ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BionasError(
            f"--backbone {cfg.backbone} cannot take --image-size {size}: {first}"
        ) from None
    return model
