"""`bionas demo`: synth -> ingest -> search -> derive -> final model -> evaluate, small and fast.

Two search settings differ from `bionas train`'s defaults, both documented options:
- `--lr-theta auto`: a demo search has ~130 θ steps, and at the paper's 3e-4 (tuned for
  tens of thousands) α would stay flat and the genotype be arbitrary; auto spreads DARTS'
  total θ travel over the steps there are (`trainer.config.auto_lr_theta`);
- `--theta-optimizer adamw`: with the paper's Adam, the weight decay on θ is coupled into
  the gradient, and once the task is learnt Adam normalises that decay term alone and
  pulls θ back towards uniform by about lr per step (BENCHMARKS.md §10); decoupled decay
  lets the search keep what it found. On the demo's data (n=1500, 8 epochs) this leaves 0
  of 9 edges a near tie, against 5 of 9 with Adam.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bionas.errors import BionasError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("bionas-demo")
    n: int = 1500  # synthetic specimens
    seed: int = 0
    epochs: int = 8  # search
    retrain_epochs: int = 8  # the derived genotype, from scratch
    image_size: int = 64  # training resolution; the paper's is 224
    ingest_size: int = 96  # shorter side stored in the shards
    channels: int = 8
    cells: int = 3
    batch_size: int = 32
    workers: int = 2
    quiet: bool = False


@dataclass(frozen=True)
class DemoResult:
    data: Path
    dataset: Path
    run: Path
    eval_dir: Path  # the final model's evaluation
    genotype_text: str
    final: dict[str, Any]  # the final model's test metrics, by dna_bin group
    search: dict[str, Any]  # the search run's: derived (inherited weights) and supernet
    majority_rate: float
    seconds: dict[str, float]

    @property
    def test_accuracy(self) -> float:
        return float(self.final["all"]["accuracy"])


def run_demo(cfg: DemoConfig, say=log.info) -> DemoResult:
    """Run the whole pipeline in `cfg.out`; `say` reports each stage as it starts."""
    from bionas.ingest.config import IngestConfig
    from bionas.ingest.pipeline import run_ingest
    from bionas.ingest.synth import SynthConfig, generate
    from bionas.trainer.config import TrainConfig
    from bionas.trainer.evaluate import EvaluateConfig, evaluate_run
    from bionas.trainer.final import FINAL_DIR, search_and_retrain

    data, dataset, run = cfg.out / "data", cfg.out / "dataset", cfg.out / "run"
    if (run / "checkpoints").exists():
        raise BionasError(f"{cfg.out} already holds a demo run: choose another --out or delete it")
    seconds: dict[str, float] = {}
    progress = not cfg.quiet

    def stage(name: str, fn, *args: Any, **kwargs: Any) -> Any:
        say(f"[{name}] ...")
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds[name] = time.perf_counter() - start
        return result

    if not (data / "metadata.csv").exists():
        stage("synth", generate, SynthConfig(out_dir=data, n=cfg.n, seed=cfg.seed,
                                             workers=cfg.workers, progress=progress))  # fmt: skip
    ingest_cfg = IngestConfig(
        metadata=data / "metadata.csv", images=data / "images" / "original_full",
        bbox=data / "bbox.tsv", out=dataset, min_class_count=20, size=cfg.ingest_size,
        shard_size=256, seed=cfg.seed, workers=cfg.workers,
    )  # fmt: skip
    stage("ingest", run_ingest, ingest_cfg, progress=progress)
    train_cfg = TrainConfig(
        dataset_dir=dataset, run_dir=run, epochs=cfg.epochs, batch_size=cfg.batch_size,
        image_size=cfg.image_size, channels=cfg.channels, cells=cfg.cells,
        workers=min(cfg.workers, 1), seed=cfg.seed, quiet=cfg.quiet, shuffle_buffer=256,
        lr_theta=None, theta_optimizer="adamw", retrain_epochs=cfg.retrain_epochs,
    )  # fmt: skip
    derived: dict[str, str] = {}
    stage("search + final", search_and_retrain, train_cfg,
          on_stage=lambda r: derived.update(text=r["text"]) if r["stage"] == "derive" else None)  # fmt: skip
    evaluated = {}
    for name, run_dir in (("search", run), ("final", run / FINAL_DIR)):
        evaluated[name] = stage(f"evaluate {name}", evaluate_run, EvaluateConfig(
            run_dir=run_dir, split="test", progress=progress, latency_runs=5))  # fmt: skip
    search = evaluated["search"]
    return DemoResult(
        data=data, dataset=dataset, run=run, eval_dir=run / FINAL_DIR / "eval" / "test",
        genotype_text=derived.get("text", ""), final=evaluated["final"]["metrics"],
        search={"derived": search["metrics"]["all"], "supernet": search["supernet"]["metrics"]["all"]},
        majority_rate=majority_rate(dataset, "test"), seconds=seconds,
    )  # fmt: skip


def majority_rate(dataset: Path, split: str) -> float:
    """Accuracy of always predicting the split's most frequent class."""
    from bionas.manifests.manifest import load_manifest

    counts = load_manifest(dataset).class_counts(split)
    return max(counts.values()) / sum(counts.values())
