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
@click.option("--epochs", default=8, show_default=True, help="Search training epochs.")
@click.option("--seed", default=0, show_default=True)
@click.option("--workers", default=2, show_default=True, help="Processes for synth and ingest.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(out: Path, **options) -> None:
    """Run synth -> ingest -> train -> derive -> evaluate on a small synthetic dataset.

    Takes a few minutes on 2 CPU cores, needs no download, and prints where every
    output is: shards and manifest, the run (logs, checkpoints, model), the derived
    genotype, metrics.json and the plots.

    \b
    Examples:
      bionas demo
      bionas demo --out /tmp/demo --n 3000 --epochs 12
    """
    from bionas.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out=out, **options), say=lambda msg: click.echo(msg, err=True))
    click.echo(f"synthetic data   {result.data}")
    click.echo(f"dataset (shards) {result.dataset}   (bionas inspect {result.dataset})")
    click.echo(f"training run     {result.run}   (steps.jsonl, epochs.jsonl, model.pt)")
    click.echo(f"genotype         {result.run / 'genotype.json'}")
    click.echo(result.genotype_text.rstrip())
    click.echo(f"evaluation       {result.eval_dir}   (metrics.json, *.png)")
    click.echo(
        f"test accuracy {result.test_accuracy:.3f}  vs  majority-class rate "
        f"{result.majority_rate:.3f}"
    )
    click.echo("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()))
