"""The search training loop: Algorithm 1 of the paper, read top to bottom.

    train()          setup (bionas.trainer.session) -> epochs -> final checkpoint, model
    run_epoch()      batches -> one step each -> a window of steps read -> logs -> checkpoints
                     (train_epoch: out of memory -> half the batch, bionas.trainer.rebatch;
                     the step and the batch fetch that catch it: bionas.trainer.step_guard)
    end_epoch()      validation -> collapse monitors -> history -> checkpoint
    train_step()     one w step or one θ step (bionas.trainer.step)
    records          steps.jsonl lines, epoch totals and records (bionas.trainer.records)

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

`--arch-data heldout`: θ steps read a fixed slice of whole train shards
(`bionas.trainer.heldout`) through one persistent iterator, w steps read the other
shards; an epoch is then one pass over the w shards with a θ step after each w step.
What that stream skipped in the epoch is the epoch record's `theta_skipped`.

Host syncs: a step's loss, correct count and gradient norm stay on the device. Every
`--log-every` steps (and before a checkpoint, at the end of an epoch or of --max-steps) one
read brings that window of steps to the host (`bionas.trainer.step.StepWindow`); it feeds
steps.jsonl (still one line per step), the progress bar, the step hooks (TensorBoard) and
the epoch's totals, which sum every step, so the epoch record does not depend on N.
The host's list of ops to launch (the prune mask) is copied at these reads too.

Several ranks (torchrun, `bionas.trainer.distributed`): each rank reads its share of
every stream and takes the same steps through DistributedDataParallel; step and epoch
records are over all ranks; only rank 0 writes RUN_DIR.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bionas.errors import BionasError
from bionas.shards.atomic import Locked, exclusive_lock
from bionas.trainer.batch_decode import decode_batches, resolve_decode
from bionas.trainer.batch_size import is_out_of_memory, release_cached_memory
from bionas.trainer.checkpoint import (
    TrainState,
    check_replicas,
    checkpoint_payload,
    rank_state,
    save_checkpoint,
)
from bionas.trainer.config import TrainConfig
from bionas.trainer.data import (
    Batch,
    BatchStream,
    StreamPosition,
    StreamSpec,
    arch_spec,
    epoch_length,
    make_loader,
    train_spec,
    val_spec,
)
from bionas.trainer.distributed import SINGLE, Dist
from bionas.trainer.genotype import architecture_of
from bionas.trainer.logs import (
    ALPHAS_LOG,
    EPOCHS_LOG,
    alpha_record,
    append_jsonl,
    collapse_monitors,
    mean_alpha_entropy,
    progress_bar,
)
from bionas.trainer.model import BioAutoMLNAS
from bionas.trainer.optimizers import Optimizers
from bionas.trainer.rebatch import halve_batch
from bionas.trainer.records import (
    epoch_record,
    log_window,
    skipped_over_ranks,
    step_header,
    theta_skipped,
)
from bionas.trainer.run import CHECKPOINT, save_model
from bionas.trainer.session import Session, start_session
from bionas.trainer.step import StepOutOfMemory, StepWindow, task_loss, to_device
from bionas.trainer.step_guard import next_batch, try_step
from bionas.trainer.tensorboard_log import TensorBoardLog

log = logging.getLogger(__name__)
TRAIN_LOCK = ".train.lock"  # in RUN_DIR, held by rank 0 while it trains
StepHook = Callable[[dict[str, Any]], None]


def train(
    config: TrainConfig,
    *,
    on_step: StepHook | None = None,
    on_epoch: StepHook | None = None,
    dist: Dist = SINGLE,
) -> list[dict[str, Any]]:
    """Run (or with `config.resume`, continue) a training run; returns the epoch history.
    With `dist` from `process_group`, this is one rank of a distributed run; the hooks
    then see the all-rank records on every rank. A `--search` other than darts (with no
    --genotype to train) runs its own strategy (`bionas.trainer.search`). One training
    writes a run folder at a time: rank 0 holds RUN_DIR/.train.lock."""
    if not dist.is_main:
        return _train(config, on_step=on_step, on_epoch=on_epoch, dist=dist)
    run_dir = Path(config.run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive_lock(run_dir / TRAIN_LOCK):
            return _train(config, on_step=on_step, on_epoch=on_epoch, dist=dist)
    except BaseException as err:
        if created and {p.name for p in run_dir.iterdir()} <= {TRAIN_LOCK}:
            (run_dir / TRAIN_LOCK).unlink(missing_ok=True)  # refused before writing: no trace
            run_dir.rmdir()
        if not isinstance(err, Locked):
            raise

        who = f" ({err.holder})" if err.holder else ""
        raise BionasError(
            f"another bionas train{who} is writing {config.run_dir} ({err.path} is locked): "
            "wait for it to finish or stop it, or choose another --out"
        ) from None


def _train(
    config: TrainConfig,
    *,
    on_step: StepHook | None = None,
    on_epoch: StepHook | None = None,
    dist: Dist = SINGLE,
) -> list[dict[str, Any]]:
    if config.search != "darts" and config.genotype is None:
        from bionas.trainer.search import STRATEGIES  # it imports this module

        return STRATEGIES[config.search](config, on_step=on_step, on_epoch=on_epoch, dist=dist)
    session, model, forward, opts, state = start_session(config, dist)
    # a view of the logs for `tensorboard --logdir`, when installed; never fails the run
    board = TensorBoardLog.open(session.run_dir, step=state.step, enabled=dist.is_main)
    on_step = board.step_hook(on_step)
    arch_batches: Iterator[Batch] | None = None
    while state.epoch < session.config.epochs and not _stop(session, state):
        searching = bool(model.arch_parameters()) and state.epoch >= session.config.warmup_epochs
        if searching and session.heldout and arch_batches is None:
            spec = arch_spec(session.config, session.heldout.arch, session.batch_size)
            arch_batches = iter(_loader(session, spec, state.arch))
        session, finished = train_epoch(
            session, model, forward, opts, state, searching, arch_batches, on_step
        )
        if finished is None:  # the batch was halved: θ's stream is rebuilt at the new size
            arch_batches = None
        elif finished:
            record = end_epoch(session, model, opts, state, searching)
            board.epoch(record, model.alphas())
            if on_epoch is not None:
                on_epoch(record)
    _checkpoint(session, model, opts, state)
    board.close()
    if dist.is_main:
        save_model(session.run_dir, model)
    return state.history


def _checkpoint(session: Session, model: BioAutoMLNAS, opts: Optimizers, state: TrainState) -> None:
    """Rank 0 writes the checkpoint, with every rank's own part; the others wait for it."""
    dist = session.dist
    ranks = dist.all_gather(rank_state(model, state)) if dist.enabled else None
    if ranks is not None:
        check_replicas(ranks)
    if dist.is_main:
        payload = checkpoint_payload(
            model,
            opts.stateful(),
            state,
            ranks,
            config=session.config.to_dict(),
            batch_size=session.batch_size,
            vocab_sha256={f: v.sha256 for f, v in session.encoding.vocabs.items()},
            architecture=architecture_of(model.cfg.genotype),
        )
        save_checkpoint(session.run_dir / CHECKPOINT, payload)
    dist.barrier()  # no rank runs ahead of (or exits before) a complete checkpoint


def _loader(
    session: Session, spec: StreamSpec, start: StreamPosition | None = None
) -> Iterable[Batch]:
    """This rank's share of the stream `spec` describes (`--decode gpu`: JPEGs decoded here,
    on the device, a batch at a time)."""
    on_device = resolve_decode(session.config.decode, session.device) == "gpu"
    spec = replace(spec, rank=session.dist.rank, world_size=session.dist.world_size,
                   uint8=session.device.type == "cuda", encoded=on_device)  # fmt: skip
    dataset = BatchStream(spec, session.encoding, start)
    loader = make_loader(dataset, session.config.workers, pin_memory=session.device.type == "cuda")
    if on_device:
        return decode_batches(loader, spec.image_size, session.device, spec.strict)
    return loader


# --- training ----------------------------------------------------------------------


def _stop(session: Session, state: TrainState) -> bool:
    return session.config.max_steps is not None and state.step >= session.config.max_steps


def train_epoch(
    session: Session,
    model: BioAutoMLNAS,
    forward: nn.Module,
    opts: Optimizers,
    state: TrainState,
    searching: bool,
    arch_batches: Iterator[Batch] | None,
    on_step: StepHook | None,
) -> tuple[Session, bool | None]:
    """`run_epoch` -> (session, finished); after a step that ran out of memory, the session
    at half the batch (checkpointed) and None: the rest of the epoch is still to run
    (`bionas.trainer.rebatch`)."""
    try:
        finished = run_epoch(session, model, forward, opts, state, searching, arch_batches, on_step)
    except StepOutOfMemory as err:
        out_of_memory = str(err)  # acted on below, once the except block let go of the step
    else:
        return session, finished
    session = halve_batch(session, model, opts, state, searching, out_of_memory)
    _checkpoint(session, model, opts, state)  # a resume goes on at the new size
    return session, None


def run_epoch(
    session: Session,
    model: BioAutoMLNAS,
    forward: nn.Module,
    opts: Optimizers,
    state: TrainState,
    searching: bool,
    arch_batches: Iterator[Batch] | None,
    on_step: StepHook | None,
) -> bool:
    """Train the rest of the epoch in progress; False when --max-steps stopped it early.
    `forward` is what the steps call (`model` in DDP on several ranks)."""
    cfg, dist = session.config, session.dist
    shards, samples = session.train_shards, session.train_samples
    if session.heldout:  # w steps read only the shards outside the held-out slice
        shards, samples = session.heldout.w, session.heldout.w_samples
    steps, main_batches = epoch_length(
        samples, session.batch_size, bool(session.heldout), searching, dist.world_size
    )
    spec = train_spec(cfg, shards, session.batch_size, state.epoch, main_batches)
    main_batches_iter = iter(_loader(session, spec, state.main))
    quiet = cfg.quiet or not dist.is_main
    bar = progress_bar(steps, state.batch, f"epoch {state.epoch + 1}/{cfg.epochs}", quiet)
    model.train()
    window = StepWindow()
    entropy = mean_alpha_entropy(model.alphas())  # θ moves only in θ steps
    while state.batch < steps:
        if _stop(session, state):
            bar.close()
            return False
        started = time.perf_counter()
        kind = "theta" if searching and state.batch % 2 == 1 else "w"
        from_arch = kind == "theta" and arch_batches is not None
        batch = next_batch(session, arch_batches if from_arch else main_batches_iter, kind)
        result = None if batch is None else try_step(session, model, forward, opts, batch, kind)
        if result is None:  # the steps before it are logged; _train goes on at half the batch
            records = log_window(session, state, window, bar) if len(window) else []
            model.sync_prune_mask()  # as at every read: a resume launches the same ops
            for record in records if on_step is not None else ():
                on_step(record)
            bar.close()
            raise StepOutOfMemory(kind, session.batch_size)
        # only now: the samples of a step that failed are read again (bionas.trainer.rebatch)
        (state.arch if from_arch else state.main).advance(batch)
        if kind == "theta":
            entropy = mean_alpha_entropy(model.alphas())
        state.batch += 1
        state.step += 1
        optimizer = opts.w if kind == "w" else opts.theta
        window.add(step_header(state, kind, optimizer), result, entropy, started)
        bar.update()
        checkpoint = bool(cfg.checkpoint_every) and state.step % cfg.checkpoint_every == 0
        last = state.batch == steps or _stop(session, state)
        # read before a checkpoint too: it holds the totals of every step before it
        if checkpoint or last or state.step % cfg.log_every == 0:
            records = log_window(session, state, window, bar)
            model.sync_prune_mask()  # the host just waited: stop launching what θ pruned
            if checkpoint:
                _checkpoint(session, model, opts, state)
            for record in records if on_step is not None else ():
                on_step(record)
    bar.close()
    return True


def end_epoch(
    session: Session, model: BioAutoMLNAS, opts: Optimizers, state: TrainState, searching: bool
) -> dict[str, Any]:
    """Validate, record the epoch (logs + history), then checkpoint and save the model."""
    dist = session.dist
    dist.average_buffers(model)  # one set of running statistics to validate and save
    val = _validate(session, model, opts, state)
    model.train()
    alphas = model.alphas()
    record = epoch_record(state, searching, opts, val, skipped_over_ranks(state.main, dist))
    if session.heldout:  # θ steps' own stream: what it skipped is counted apart
        record["theta_skipped"] = theta_skipped(state, dist)
    record.update(collapse_monitors(alphas, model.pruned_op_count()))
    state.history.append(record)
    if dist.is_main:
        append_jsonl(session.run_dir / EPOCHS_LOG, record)
        if alphas:
            append_jsonl(
                session.run_dir / ALPHAS_LOG, alpha_record(alphas, state.epoch + 1, state.step)
            )
        streams = {"skipped": "training", "theta_skipped": "θ stream", "val_skipped": "validation"}
        for stream, what in streams.items():
            skipped = {k: v for k, v in record.get(stream, {}).items() if v}
            if skipped:
                log.warning("epoch %d %s skipped samples: %s", state.epoch + 1, what, skipped)
    state.epoch, state.batch, state.totals, state.main = state.epoch + 1, 0, {}, StreamPosition()
    for reason, n in record.get("theta_skipped", {}).items():  # the next epoch's baseline
        state.arch_skipped[reason] = state.arch_skipped.get(reason, 0) + n
    release_cached_memory()  # the paper's between-epoch cache clearing + gc
    _checkpoint(session, model, opts, state)
    if dist.is_main:
        save_model(session.run_dir, model)
    return record


def _validate(
    session: Session, model: BioAutoMLNAS, opts: Optimizers, state: TrainState
) -> dict[str, Any]:
    """`evaluate` at the end of an epoch; when it runs out of memory even one sample at a
    time, the epoch's training is checkpointed first (on one process: several would wait
    for the failed rank) and the run stops, saying so: `--resume` validates again."""
    if not session.val_shards:
        return {}
    try:
        return evaluate(model, session)
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
    if not session.dist.enabled:
        _checkpoint(session, model, opts, state)
    raise BionasError(
        f"validation ran out of memory even at batch size 1 (epoch {state.epoch + 1}); "
        "its training is in the checkpoint: free the device's memory (or lower --image-size) "
        "and go on with --resume, which validates the epoch again"
    )


def evaluate(model: nn.Module, session: Session) -> dict[str, Any]:
    """Loss (same criterion as training) and accuracy on the whole validation split (each
    rank on its share, then summed: no collective inside the loop, whose length differs
    between ranks). Validation keeps no state, so running out of memory (new shapes, cuDNN
    workspaces the train step's probe never saw) is answered by validating again at half
    the batch, on this rank alone, rather than losing the epoch."""
    batch_size = session.batch_size
    while True:
        try:
            return _evaluate(model, session, batch_size)
        except RuntimeError as err:
            if not is_out_of_memory(err) or batch_size == 1:
                raise
        release_cached_memory()  # the failed batch's tensors went with the except block
        log.warning(
            "validation ran out of memory at batch size %d; validating again at %d",
            batch_size, max(1, batch_size // 2),
        )  # fmt: skip
        batch_size = max(1, batch_size // 2)


@torch.no_grad()
def _evaluate(model: nn.Module, session: Session, batch_size: int) -> dict[str, Any]:
    model.eval()
    loader = _loader(session, val_spec(session.config, session.val_shards, batch_size))
    loss_sum, correct, samples = 0.0, 0, 0
    read = StreamPosition()  # what each worker skipped: its last batch's counts
    for batch in loader:
        read.advance(batch)
        images, meta, labels = to_device(batch, session.device)
        with session.amp.autocast():
            logits = model(images, meta)
        loss_sum += float(task_loss(logits, labels, session.config.label_smoothing)) * len(batch)
        correct += int((logits.argmax(1) == labels).sum())
        samples += len(batch)
    loss_sum, correct, samples = session.dist.sum([loss_sum, correct, samples])
    correct, samples = int(correct), int(samples)
    skipped = {"val_skipped": skipped_over_ranks(read, session.dist)}
    if samples == 0:
        return {"val_loss": None, "val_acc": None, "val_samples": 0, **skipped}
    return {
        "val_loss": loss_sum / samples,
        "val_acc": correct / samples,
        "val_samples": samples,
        **skipped,
    }
