"""`bionas ingest` end to end: plan -> execute -> record.

The dataset folder is consistent at every instant (SPEC §8). Under the lock of --out,
after checking that a finished dataset there has this run's recipe (or --overwrite),
and after deciding which shards are kept (which only reads), `manifest.json` is set
aside for `manifest.incomplete.json` before any file is touched; every file is then
written atomically, and `manifest.json` last. A crash, Ctrl-C, SIGTERM or full disk at
any point leaves a folder that readers refuse as unfinished and a rerun resumes.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import polars as pl

from bionas.errors import BionasError
from bionas.ingest.config import IngestConfig
from bionas.ingest.execute import ShardFailure, ShardResult, build_tasks, execute, rejects_frame
from bionas.ingest.outdir import locked, output_error, sweep_temp_files
from bionas.ingest.plan import Plan, make_plan
from bionas.ingest.preflight import check_image_root, sampled_paths
from bionas.ingest.profiles import DatasetProfile, resolve_profile
from bionas.ingest.recipe import refuse_other_recipe, resume_command, run_recipe
from bionas.ingest.record import (
    build_vocabularies,
    class_counts,
    input_entries,
    landed_samples,
    manifest_body,
)
from bionas.ingest.resume import partition, save_state, stale_files
from bionas.ingest.signals import sigterm_as_interrupt
from bionas.manifests.manifest import (
    REJECTS_NAME,
    SHARD_DIR,
    VOCAB_DIR,
    clear_incomplete,
    mark_incomplete,
    write_manifest,
)
from bionas.manifests.vocab import write_vocab
from bionas.shards.atomic import write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestSummary:
    out: Path
    samples: dict[str, int]  # per split
    shards: int
    kept_shards: int
    rejects: dict[str, int]  # per reason
    excluded: int
    clipped_bboxes: int
    processed: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def run_ingest(cfg: IngestConfig, progress: bool = True) -> IngestSummary:
    """Plan, then write the dataset (SIGTERM stops it as Ctrl-C does: resumable)."""
    with sigterm_as_interrupt():
        profile = resolve_profile(cfg.profile, cfg.profile_file)
        if not cfg.images.is_dir():
            raise BionasError(f"--images {cfg.images}: no such folder")
        plan = make_plan(cfg, profile)
        if plan.samples.height == 0:
            raise BionasError(
                f"no usable rows in {cfg.metadata}: {plan.rejects.height} rejected, "
                f"{plan.excluded} outside --splits"
            )
        check_image_root(cfg.images, sampled_paths(plan, profile))
        try:
            with locked(cfg.out):
                try:
                    return write_dataset(cfg, profile, plan, progress)
                finally:
                    sweep_temp_files(cfg.out)  # what an error or interrupt left
        except OSError as exc:
            error = output_error(exc, cfg.out)
            if error is None:
                raise
            raise error from None


def write_dataset(
    cfg: IngestConfig, profile: DatasetProfile, plan: Plan, progress: bool
) -> IngestSummary:
    """Write (or resume) the dataset of `plan` into `cfg.out`; the caller holds its lock."""
    start = time.perf_counter()
    sweep_temp_files(cfg.out)
    inputs = input_entries(cfg)  # hashed once: the manifest and resume both use it
    recipe = run_recipe(cfg, profile, inputs)
    if not cfg.overwrite:
        refuse_other_recipe(cfg.out, recipe)
    tasks = build_tasks(plan, cfg, profile, cfg.out / SHARD_DIR, inputs)
    kept, todo = partition(tasks, cfg.out, plan.rows)
    # from here until manifest.json is back, readers see an unfinished dataset
    mark_incomplete(cfg.out, {"recipe": recipe, "command": resume_command(cfg)})
    for path in stale_files(cfg.out, {t.path for t in tasks}):
        log.info("removing stale %s", path)
        path.unlink()
    done_images = sum(t.size for t in tasks) - sum(t.size for t in todo)
    run = execute(todo, plan.rows, partial(save_state, cfg.out), cfg.worker_count, progress,
                  cfg.executor, cfg.ray_address, done_images)  # fmt: skip
    if run.failures:
        raise transient_failure(run.failures)
    results = sorted([*kept, *run.results], key=lambda r: (r.split, r.index))
    body = record(cfg, profile, plan, results, inputs)
    write_manifest(cfg.out, body)  # last: from now on the dataset is finished
    clear_incomplete(cfg.out)
    return IngestSummary(
        out=cfg.out,
        samples={s: e["samples"] for s, e in body["splits"].items()},
        shards=len(results),
        kept_shards=len(kept),
        rejects=body["rejects"]["by_reason"],
        excluded=plan.excluded,
        clipped_bboxes=plan.clipped_bboxes,
        processed=run.processed,
        seconds=time.perf_counter() - start,
    )


def record(
    cfg: IngestConfig,
    profile: DatasetProfile,
    plan: Plan,
    results: list[ShardResult],
    inputs: dict,
) -> dict:
    """Write rejects.parquet and the vocabularies (atomically); return the manifest body."""
    image_rejects = rejects_frame(results)
    # stable: ties (a duplicated id listed under two splits) keep file order
    rejects = pl.concat([plan.rejects, image_rejects]).sort(
        ["stage", "processid", "reason"], maintain_order=True
    )
    buffer = io.BytesIO()
    rejects.write_parquet(buffer)
    write_atomic(cfg.out / REJECTS_NAME, buffer.getvalue())
    landed = landed_samples(plan.samples, image_rejects)
    vocabs = build_vocabularies(plan.frame, landed, cfg, profile)
    for vocab in vocabs.values():
        write_vocab(vocab, cfg.out / VOCAB_DIR)
    counts = class_counts(plan.frame, landed, vocabs[cfg.target])
    extra = {"excluded_by_split": plan.excluded, "clipped_bboxes": plan.clipped_bboxes}
    return manifest_body(cfg, profile, results, vocabs, counts, rejects, inputs, extra)


def transient_failure(failures: list[ShardFailure]) -> BionasError:
    first = failures[0].error
    return BionasError(
        f"{len(failures)} shard(s) not written: reading {first.path} failed ({first.error}), "
        "an error that may pass; rerun the same command to retry them (finished shards "
        "are kept). If it persists, fix or remove that file (a missing file is a reject)."
    )
