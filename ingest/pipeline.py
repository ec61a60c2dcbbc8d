"""`bionas ingest` end to end: plan -> execute -> record."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from bionas.errors import BionasError
from bionas.ingest.config import IngestConfig
from bionas.ingest.execute import STATE_DIR, build_tasks, execute, rejects_frame
from bionas.ingest.plan import make_plan
from bionas.ingest.preflight import check_image_root, sampled_paths
from bionas.ingest.profiles import resolve_profile
from bionas.ingest.record import (
    build_vocabularies,
    class_counts,
    input_entries,
    landed_samples,
    manifest_body,
)
from bionas.manifests.manifest import REJECTS_NAME, SHARD_DIR, VOCAB_DIR, write_manifest
from bionas.manifests.vocab import write_vocab

log = logging.getLogger(__name__)
_SHARD_FILE = re.compile(r"^[a-z_]+-\d{6}\.tar(\.zst)?(\.tmp)?$")


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
    cfg.out.mkdir(parents=True, exist_ok=True)
    shard_dir = cfg.out / SHARD_DIR
    inputs = input_entries(cfg)  # hashed once: the manifest and resume both use it
    tasks = build_tasks(plan, cfg, profile, shard_dir, inputs)
    remove_stale_shards(shard_dir, {t.path for t in tasks})
    run = execute(
        tasks, plan.rows, cfg.out, cfg.worker_count, progress, cfg.executor, cfg.ray_address
    )

    image_rejects = rejects_frame(run.results)
    # stable: ties (a duplicated id listed under two splits) keep file order
    rejects = pl.concat([plan.rejects, image_rejects]).sort(
        ["stage", "processid", "reason"], maintain_order=True
    )
    rejects.write_parquet(cfg.out / REJECTS_NAME)
    landed = landed_samples(plan.samples, image_rejects)
    vocabs = build_vocabularies(plan.frame, landed, cfg, profile)
    for vocab in vocabs.values():
        write_vocab(vocab, cfg.out / VOCAB_DIR)
    counts = class_counts(plan.frame, landed, vocabs[cfg.target])
    extra = {"excluded_by_split": plan.excluded, "clipped_bboxes": plan.clipped_bboxes}
    body = manifest_body(cfg, profile, run.results, vocabs, counts, rejects, inputs, extra)
    write_manifest(cfg.out, body)
    return IngestSummary(
        out=cfg.out,
        samples={s: e["samples"] for s, e in body["splits"].items()},
        shards=len(run.results),
        kept_shards=run.kept_shards,
        rejects=body["rejects"]["by_reason"],
        excluded=plan.excluded,
        clipped_bboxes=plan.clipped_bboxes,
        processed=run.processed,
        seconds=run.seconds,
    )


def remove_stale_shards(shard_dir: Path, planned: set[Path]) -> None:
    """Delete shard files (and temporaries) of ours that the current plan does not write."""
    if not shard_dir.is_dir():
        return
    for path in shard_dir.glob("*/*"):
        if _SHARD_FILE.match(path.name) and path not in planned:
            log.info("removing stale %s", path)
            path.unlink()
    state = shard_dir.parent / STATE_DIR
    for path in state.glob("*/*.json") if state.is_dir() else []:
        if shard_dir / path.parent.name / path.name.removesuffix(".json") not in planned:
            path.unlink()
