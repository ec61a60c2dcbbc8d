"""`bionas ablate`: run a plan's experiments one after another, evaluate each, compare.

Each experiment is `bionas train DATASET_DIR --out RUNS_DIR/<name> <defaults> <args>` then
`bionas evaluate <model> <evaluate args>`, each in a child process: a run's GPU memory,
CUDA state and any crash stay in it, and the next experiment starts clean. The children's
output is streamed and kept in RUNS_DIR/<name>/ablate.log.

Resumable: RUNS_DIR/<name>/experiment.json records the arguments, how far the experiment
got and its wall time. On a rerun an experiment is

    done       trained and evaluated (metrics.json on the plan's split): skipped
    evaluate   trained, not evaluated: evaluated only
    resume     a checkpoint, training not finished: `bionas train … --resume`
    train      nothing yet: trained from scratch

A finished experiment whose arguments in the plan changed is refused before anything
runs (move its folder away to run it again). An experiment that fails is recorded and
the others still run; the command then exits 1. The comparison (bionas.compare) of every
experiment of the plan is written to RUNS_DIR/comparison.{md,csv,png} at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bionas.ablate_plan import Experiment, Plan, option_value
from bionas.compare import EXPERIMENT_NAME, model_dirs, run_rows
from bionas.errors import BionasError
from bionas.trainer.final import FINAL_DIR
from bionas.trainer.run import CHECKPOINT, CONFIG_NAME

FORMAT = "bionas.experiment/1"
PR_SET_PDEATHSIG = 1  # prctl(2)
STOP_SECONDS = 30.0  # how long a stopped experiment may take to exit before SIGKILL
LOG_NAME = "ablate.log"
Echo = Callable[[str], None]


@dataclass(frozen=True)
class AblateConfig:
    dataset_dir: Path
    plan: Plan  # already narrowed by --only
    runs_dir: Path
    dry_run: bool = False


@dataclass(frozen=True)
class Outcome:
    name: str
    action: str  # done / evaluate / resume / train, as found before running
    ok: bool


def run_plan(cfg: AblateConfig, echo: Echo) -> list[Outcome]:
    """Run every experiment of the plan that is not done; returns what happened to each."""
    dataset = Path(cfg.dataset_dir).resolve()
    actions = {e.name: plan_action(cfg, e, dataset) for e in cfg.plan.experiments}
    outcomes = []
    for experiment in cfg.plan.experiments:
        action = actions[experiment.name]
        run_dir = cfg.runs_dir / experiment.name
        command = train_command(dataset, run_dir, cfg.plan.train_args(experiment), action)
        echo(f"[{experiment.name}] {action}: {experiment.description}")
        if cfg.dry_run:
            if action in ("train", "resume"):
                echo("  " + shlex.join(command[2:]))  # as typed: bionas train …
            if action != "done":
                model = planned_model_dir(run_dir, cfg.plan.train_args(experiment))
                echo("  " + shlex.join(["bionas", "evaluate", str(model), *cfg.plan.evaluate_args]))
            outcomes.append(Outcome(experiment.name, action, True))
            continue
        ok = action == "done" or run_experiment(cfg, experiment, run_dir, action, dataset, echo)
        outcomes.append(Outcome(experiment.name, action, ok))
    return outcomes


def plan_action(cfg: AblateConfig, experiment: Experiment, dataset: Path) -> str:
    """What an experiment needs (module docstring); refuses a changed finished one."""
    run_dir = cfg.runs_dir / experiment.name
    record = read_record(run_dir)
    args = list(cfg.plan.train_args(experiment))
    trained = record.get("status") in ("trained", "evaluated")
    started = trained or (run_dir / CHECKPOINT).is_file()
    changed = record and (record.get("args") != args or record.get("dataset_dir") != str(dataset))
    if started and changed:
        raise BionasError(
            f"{run_dir} was trained with other arguments or on another dataset than plan "
            f"{cfg.plan.name} gives now ({record.get('args')} on {record.get('dataset_dir')}); "
            "move the folder away to run the experiment again, or restore the plan"
        )
    if trained:
        return "done" if evaluated(run_dir, cfg.plan.split) else "evaluate"
    if (run_dir / CHECKPOINT).is_file():
        return "resume"
    return "train"


def evaluated(run_dir: Path, split: str) -> bool:
    """Whether the run's headline model has an evaluation on `split` (default location)."""
    headline, _ = model_dirs(run_dir)[0]
    return (headline / "eval" / split / "metrics.json").is_file()


def planned_model_dir(run_dir: Path, args: tuple[str, ...]) -> Path:
    """The model an experiment's arguments will produce: RUN_DIR/final with a retraining
    stage, else RUN_DIR (before training; afterwards `model_dirs` says)."""
    retrain = option_value(args, "--retrain-epochs")
    return run_dir / FINAL_DIR if retrain and retrain.isdigit() and int(retrain) > 0 else run_dir


def train_command(dataset: Path, run_dir: Path, args: tuple[str, ...], action: str) -> list[str]:
    resume = ["--resume"] if action == "resume" else []
    return [sys.executable, "-m", "bionas", "train", str(dataset), "--out", str(run_dir),
            *args, *resume]  # fmt: skip


def run_experiment(
    cfg: AblateConfig, experiment: Experiment, run_dir: Path, action: str, dataset: Path,
    echo: Echo,
) -> bool:  # fmt: skip
    """Train (or resume) then evaluate one experiment, recording each stage; True if both
    succeeded."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = read_record(run_dir)
    wall = dict(record.get("wall_seconds") or {})
    record.update(
        format=FORMAT, plan=cfg.plan.name, name=experiment.name,
        description=experiment.description, args=list(cfg.plan.train_args(experiment)),
        dataset_dir=str(dataset),
    )  # fmt: skip
    if action in ("train", "resume"):
        write_record(run_dir, {**record, "status": "training", "wall_seconds": wall})
        command = train_command(dataset, run_dir, cfg.plan.train_args(experiment), action)
        code, seconds = run_logged(command, run_dir / LOG_NAME, echo)
        wall["train"] = wall.get("train", 0.0) + seconds  # over every attempt
        if code != 0:
            write_record(run_dir, {**record, "status": "failed", "returncode": code,
                                   "wall_seconds": wall})  # fmt: skip
            echo(f"[{experiment.name}] training failed (exit {code}); see {run_dir / LOG_NAME}")
            return False
        write_record(run_dir, {**record, "status": "trained", "wall_seconds": wall})
    headline, _ = model_dirs(run_dir)[0]
    command = [sys.executable, "-m", "bionas", "evaluate", str(headline), *cfg.plan.evaluate_args]
    code, seconds = run_logged(command, run_dir / LOG_NAME, echo)
    wall["evaluate"] = seconds
    status = "evaluated" if code == 0 else "trained"  # a failed evaluation is retried next time
    write_record(run_dir, {**record, "status": status, "wall_seconds": wall})
    if code != 0:
        echo(f"[{experiment.name}] evaluation failed (exit {code}); see {run_dir / LOG_NAME}")
    return code == 0


def run_logged(command: list[str], log_path: Path, echo: Echo) -> tuple[int, float]:
    """Run a child process, its output streamed to `echo` and appended to `log_path`;
    (exit code, wall seconds)."""
    started = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # epoch lines as they happen
    with open(log_path, "a", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            preexec_fn=_stop_with_parent,
        ) as child:  # fmt: skip
            assert child.stdout is not None
            try:
                for line in child.stdout:
                    log.write(line)
                    echo("  " + line.rstrip("\n"))
                code = child.wait()
            except BaseException:  # Ctrl-C, or an error here: the experiment stops too
                _stop(child)
                raise
    return code, time.monotonic() - started


def _stop(child: subprocess.Popen) -> None:
    """SIGTERM (train checkpoints nothing more but leaves its files whole), then SIGKILL."""
    child.terminate()
    try:
        child.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _stop_with_parent() -> None:
    """In the child, before exec: SIGTERM when ablate dies, even by SIGKILL (Linux), so no
    orphan trains on while a rerun resumes the same folder."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def read_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / EXPERIMENT_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BionasError(f"cannot read {path}: {err}; move it away to start over") from None


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    path = run_dir / EXPERIMENT_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def plan_rows(plan: Plan, runs_dir: Path) -> list[dict[str, Any]]:
    """The comparison's rows for every experiment of the plan, in the plan's order; one
    not run yet is a row with a note."""
    rows: list[dict[str, Any]] = []
    for experiment in plan.experiments:
        run_dir = runs_dir / experiment.name
        if (run_dir / CONFIG_NAME).is_file():
            rows.extend(run_rows(run_dir))
        else:
            rows.append({"run": experiment.name, "note": "not trained yet"})
    return rows
