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
@click.option(
    "--bbox",
    "boxes",
    multiple=True,
    metavar="X0,Y0,X1,Y1",
    help="The specimen's box in the photo's pixels, one per image in order: the photo is "
    "cropped to it as ingest crops (box + --crop-margin).",
)
@click.option(
    "--crop-margin",
    default=0.1,
    show_default=True,
    help="Fraction of the box added on each side (use the dataset's ingest value).",
)
def command(
    run_dir: Path,
    images: tuple[Path, ...],
    meta_pairs: tuple[str, ...],
    top_k: int,
    boxes: tuple[str, ...],
    crop_margin: float,
) -> None:
    """Predict the class of each IMAGE with the model of RUN_DIR; prints JSON.

    The model was trained on specimen crops: give crops (such as BIOSCAN's cropped_256
    photos), or whole photos with the specimen's --bbox. Metadata values are looked up
    in the run's vocabularies; a field left out, or a value never seen in training, is
    fed as unknown.

    \b
    Examples:
      bionas predict run/ specimen.jpg
      bionas predict run/ a.jpg b.jpg --meta dna_bin=BOLD:AAA1234 --meta class=Insecta --top-k 3
      bionas predict run/ photo_1024x768.jpg --bbox 310,220,690,540
    """
    from bionas.trainer.predict import parse_box, parse_meta, predict_images
    from bionas.trainer.run import load_trained

    run = load_trained(run_dir, map_location="cpu")
    meta = parse_meta(meta_pairs, run.meta_fields)
    parsed = [parse_box(b) for b in boxes]
    result = predict_images(run, list(images), meta, top_k=top_k, boxes=parsed, margin=crop_margin)
    if result["network"] == "supernet":
        click.echo(
            f"note: {run_dir} is a search run, so the supernet (every op weighted by α) "
            f"answers; its final model is {run_dir}/final (`bionas train --retrain-epochs N`)",
            err=True,
        )
    click.echo(json.dumps({"run_dir": str(run_dir), **result}, indent=2))
