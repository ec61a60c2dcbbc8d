"""`bionas demo`: the whole pipeline on a small synthetic dataset, in a few CPU minutes."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option(
    "--out",
    default="bionas-demo",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder for the synthetic data, dataset, run and evaluation.",
)
@click.option("--n", default=1500, show_default=True, help="Synthetic specimens.")
@click.option("--epochs", default=8, show_default=True, help="Search epochs.")
@click.option(
    "--retrain-epochs",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Epochs of training the derived genotype from scratch (the final model).",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--workers", default=2, show_default=True, help="Processes for synth and ingest.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(out: Path, **options) -> None:
    """Run synth -> ingest -> search -> derive -> final model -> evaluate, on synthetic data.

    Takes a few minutes on 2 CPU cores, needs no download, and prints where every
    output is: shards and manifest, the search run (logs, checkpoints, α), the derived
    genotype, the final model trained from scratch on it, metrics.json and the plots.
    The search uses --lr-theta auto (a short search at the paper's 3e-4 leaves α flat)
    and --theta-optimizer adamw (Adam's coupled decay pulls a short search's α back to
    uniform once the task is learnt; see BENCHMARKS.md §10).

    \b
    Examples:
      bionas demo
      bionas demo --out /tmp/demo --n 3000 --epochs 12
    """
    from bionas.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out=out, **options), say=lambda msg: click.echo(msg, err=True))
    click.echo(f"synthetic data   {result.data}")
    click.echo(f"dataset (shards) {result.dataset}   (bionas inspect {result.dataset})")
    click.echo(f"search run       {result.run}   (steps.jsonl, epochs.jsonl, alphas.jsonl)")
    click.echo(f"genotype         {result.run / 'genotype.json'}")
    click.echo(result.genotype_text.rstrip())
    click.echo(f"final model      {result.run / 'final'}   (the derived genotype, from scratch)")
    click.echo(f"evaluation       {result.eval_dir}   (metrics.json, *.png)")
    click.echo(f"                 {result.run / 'eval' / 'test'}   (search run, alphas.png)")
    click.echo("test accuracy:")
    click.echo(f"  final model      {result.test_accuracy:.3f}   (the product)")
    for group, label in (
        ("seen_bin", "seen BIN"),
        ("unseen_bin", "unseen BIN"),
        ("no_bin", "no BIN"),
    ):
        metrics = result.final.get(group) or {}
        if metrics.get("n_samples"):
            click.echo(f"    {label:<14} {metrics['accuracy']:.3f}   (n={metrics['n_samples']})")
    click.echo(f"  derived, inherited weights {result.search['derived']['accuracy']:.3f}   "
               "(before retraining)")  # fmt: skip
    click.echo(f"  supernet         {result.search['supernet']['accuracy']:.3f}   (as searched)")
    click.echo(f"  majority class   {result.majority_rate:.3f}")
    click.echo("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()))
