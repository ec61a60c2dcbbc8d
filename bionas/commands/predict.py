"""`bionas predict RUN_DIR IMAGE...`: top-k classes with probabilities, as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--meta",
    "meta_pairs",
    multiple=True,
    metavar="FIELD=VALUE",
    help="A metadata value, e.g. --meta dna_bin=BOLD:AAA1234 (repeatable); "
    "fields left out are fed as unknown.",
)
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1))
def command(
    run_dir: Path, images: tuple[Path, ...], meta_pairs: tuple[str, ...], top_k: int
) -> None:
    """Predict the class of each IMAGE with the model of RUN_DIR; prints JSON.

    Metadata values are looked up in the run's vocabularies; a field left out, or a
    value never seen in training, is fed as unknown.

    \b
    Examples:
      bionas predict run/ specimen.jpg
      bionas predict run/ a.jpg b.jpg --meta dna_bin=BOLD:AAA1234 --meta class=Insecta --top-k 3
    """
    from bionas.trainer.predict import parse_meta, predict_images
    from bionas.trainer.run import load_trained

    run = load_trained(run_dir, map_location="cpu")
    meta = parse_meta(meta_pairs, run.meta_fields)
    result = predict_images(run, list(images), meta, top_k=top_k)
    click.echo(json.dumps({"run_dir": str(run_dir), **result}, indent=2))
