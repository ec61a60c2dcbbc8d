"""`bionas ablate DATASET_DIR --plan PLAN --out RUNS_DIR`: run, evaluate and compare a plan."""

from __future__ import annotations

from pathlib import Path

import click

DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command(context_settings={"max_content_width": 100})
@click.argument("dataset_dir", type=DIR)
@click.option(
    "--plan",
    "plan_spec",
    required=True,
    help="A plan TOML file, or a built-in plan: paper-table1 (the paper's Table I, "
    "E001-E015) or tiny (3 quick experiments on CPU).",
)
@click.option(
    "--out",
    "runs_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="RUNS_DIR: one run folder per experiment, and the comparison.",
)
@click.option(
    "--only",
    multiple=True,
    help="Run only this experiment (repeat for several); the comparison still lists all.",
)
@click.option("--dry-run", is_flag=True, help="Say what each experiment needs, run nothing.")
def command(
    dataset_dir: Path, plan_spec: str, runs_dir: Path, only: tuple[str, ...], dry_run: bool
) -> None:
    """Run a plan of experiments one after another, evaluate each, compare them.

    Each experiment is `bionas train DATASET_DIR --out RUNS_DIR/NAME` with the plan's
    default arguments then its own, run in a child process (its memory and any crash
    stay there), then `bionas evaluate` with the plan's evaluate arguments. Output is
    streamed and kept in RUNS_DIR/NAME/ablate.log; RUNS_DIR/NAME/experiment.json
    records the arguments, the stage reached and the wall time.

    \b
    Rerun the same command after a crash, Ctrl-C or a failed experiment: a finished
    experiment (trained and evaluated) is skipped, a trained one is only evaluated, an
    interrupted one resumes from its checkpoint (`bionas train --resume`). A finished
    experiment whose arguments in the plan changed is refused; move its folder away.

    \b
    At the end, RUNS_DIR/comparison.md, .csv and .png compare every experiment of the
    plan (`bionas compare`); the table is printed too. Exit status 1 if any failed.

    \b
    Plan file (TOML):
      [plan]
      description = "fusion ablation"
      [defaults]
      args = ["--epochs", "10", "--gpu-memory-gb", "12"]   # bionas train arguments
      evaluate = ["--split", "test"]                        # bionas evaluate arguments
      [[experiment]]
      name = "E003"
      description = "gated fusion"
      args = ["--fusion", "gated"]                          # after the defaults

    \b
    Examples:
      bionas ablate ds/ --plan tiny --out runs/             # 3 experiments, ~1 min on CPU
      bionas ablate ds/ --plan paper-table1 --out runs/     # the paper's Table I
      bionas ablate ds/ --plan paper-table1 --out runs/ --only E009 --only E012
      bionas ablate ds/ --plan my-plan.toml --out runs/ --dry-run
      tensorboard --logdir runs/                            # every run's curves
    """
    from bionas.ablate import AblateConfig, plan_rows, run_plan
    from bionas.ablate_plan import load_plan
    from bionas.compare_output import markdown_table, write_comparison

    plan = load_plan(plan_spec)
    cfg = AblateConfig(
        dataset_dir=dataset_dir, plan=plan.select(only), runs_dir=runs_dir, dry_run=dry_run
    )
    click.echo(f"plan {plan.name} ({plan.source}): {len(cfg.plan.experiments)} experiment(s)")
    outcomes = run_plan(cfg, echo=lambda line: click.echo(line, err=True))
    if dry_run:
        for outcome in outcomes:
            click.echo(f"{outcome.name}: {outcome.action}")
        return
    rows = plan_rows(plan, runs_dir)
    click.echo(markdown_table(rows), nl=False)
    written = write_comparison(rows, runs_dir)
    click.echo(f"wrote {', '.join(str(p) for p in written.values() if p is not None)}")
    skipped = [o.name for o in outcomes if o.action == "done"]
    if skipped:
        click.echo(f"skipped (already trained and evaluated): {', '.join(skipped)}")
    failed = [o.name for o in outcomes if not o.ok]
    if failed:
        raise click.ClickException(
            f"failed: {', '.join(failed)} (see RUNS_DIR/NAME/ablate.log); rerun the same "
            "command to retry them, finished experiments are skipped"
        )
