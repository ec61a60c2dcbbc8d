"""Search, derive, then train the derived network from scratch: one command to the product.

    RUN_DIR/                 the search (supernet, θ, logs, checkpoints)
    RUN_DIR/genotype.json    its derived architecture (argmax α per edge, never dead)
    RUN_DIR/final/           the fixed network of that genotype, trained from scratch for
                             `--retrain-epochs` epochs with the same options: the model
                             to evaluate, predict with and deploy

As in DARTS' protocol (search, then train the discrete architecture anew), the final
network does not inherit the supernet's weights: those were trained as part of a
mixture. Both stages checkpoint; `--resume` continues whichever one was interrupted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from bionas.errors import BionasError
from bionas.trainer.config import TrainConfig
from bionas.trainer.derive import GENOTYPE_JSON, derive_run
from bionas.trainer.distributed import SINGLE, Dist
from bionas.trainer.genotype import architecture_of
from bionas.trainer.loop import StepHook, train
from bionas.trainer.run import CHECKPOINT, CONFIG_NAME, load_trained, model_config_from_dict

log = logging.getLogger(__name__)

FINAL_DIR = "final"


def final_config(search: TrainConfig) -> TrainConfig:
    """The options of the retraining stage: the search's, on the derived genotype."""
    final_dir = search.run_dir / FINAL_DIR
    return replace(
        search,
        run_dir=final_dir,
        genotype=search.run_dir / GENOTYPE_JSON,
        epochs=search.retrain_epochs,
        retrain_epochs=0,
        warmup_epochs=0,
        max_steps=None,
        resume=search.resume and (final_dir / CHECKPOINT).exists(),
    )


def search_and_retrain(
    config: TrainConfig,
    *,
    on_stage: StepHook | None = None,
    on_epoch: StepHook | None = None,
    dist: Dist = SINGLE,
) -> dict[str, list[dict[str, Any]]]:
    """Run `train(config)`; with `config.retrain_epochs`, then derive the genotype and train
    it from scratch in RUN_DIR/final. Returns the epoch history of each stage that ran.
    `on_stage` sees {"stage": "search" | "derive" | "final", ...} as each one starts."""
    if config.retrain_epochs and config.genotype is not None:
        raise BionasError(
            "--retrain-epochs retrains the genotype a search derives; this run already "
            "trains a fixed --genotype (train it longer with --epochs instead)"
        )
    notify = on_stage or (lambda record: None)
    notify({"stage": "search", "run_dir": str(config.run_dir)})
    histories = {"search": train(config, on_epoch=on_epoch, dist=dist)}
    if not config.retrain_epochs:
        return histories
    if len(histories["search"]) < config.epochs:
        log.warning("the search stopped before its last epoch: no final model (resume it)")
        return histories
    final = final_config(config)
    refuse_a_final_of_another_genotype(config.run_dir, final.run_dir)  # on every rank
    if dist.is_main:
        derived = derive_run(config.run_dir)
        notify({"stage": "derive", "genotype": str(derived.json_path), "text": derived.text})
    dist.barrier()  # every rank reads the genotype rank 0 wrote
    notify({"stage": "final", "run_dir": str(final.run_dir), "epochs": final.epochs})
    histories["final"] = train(final, on_epoch=on_epoch, dist=dist)
    return histories


def refuse_a_final_of_another_genotype(search_dir: Path, final_dir: Path) -> None:
    """A search resumed for more epochs may derive another genotype than the one its final
    model was trained on: then the final model would neither resume nor match genotype.json.
    Refused before anything is written; a final stage not started yet is fine."""
    if not (final_dir / CHECKPOINT).exists() or not (final_dir / CONFIG_NAME).exists():
        return
    stored = json.loads((final_dir / CONFIG_NAME).read_text())["model_config"]
    trained_on = architecture_of(model_config_from_dict(stored).genotype)
    now = architecture_of(load_trained(search_dir).model.genotype())
    if trained_on != now:
        raise BionasError(
            f"{final_dir} was trained on the genotype the search derived earlier, and the "
            f"search now derives another one. Move {final_dir} away to train the new genotype "
            "from scratch, or resume without adding search epochs."
        )


def final_run_dir(run_dir: Path) -> Path:
    return Path(run_dir) / FINAL_DIR
