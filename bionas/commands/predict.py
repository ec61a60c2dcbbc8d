"""`bionas predict MODEL_DIR …`: classify a few images (JSON), or a whole metadata table or
dataset split (a CSV or Parquet file with one row per input row)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bionas.errors import BionasError

FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
DIR = click.Path(exists=True, file_okay=False, path_type=Path)
TABLE_ONLY = {"images_root": "--images", "split": "--split", "out": "--out",
              "low_confidence": "--low-confidence", "limit": "--limit",
              "profile_file": "--profile-file", "workers": "--workers"}  # fmt: skip


@click.command()
@click.argument("run_dir", type=DIR)
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--meta", "meta_pairs", multiple=True, metavar="FIELD=VALUE",
              help="Single images: a metadata value, e.g. --meta dna_bin=BOLD:AAA1234 "
              "(repeatable); fields left out are fed as unknown.")  # fmt: skip
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--bbox", "boxes", multiple=True, metavar="X0,Y0,X1,Y1 | TSV",
              help="Single images: the specimen's box in the photo's pixels, one per image in "
              "order (cropped as ingest crops: box + --crop-margin). With --metadata: the "
              "bounding-box TSV, joined on the id as ingest joins it.")  # fmt: skip
@click.option("--crop-margin", type=click.FloatRange(min=0), default=None,
              help="Single images: fraction of the box added on each side [default: the "
              "model's dataset's, else 0.1].")  # fmt: skip
@click.option("--metadata", type=FILE, default=None,
              help="A metadata table in a profile's layout: predict every row's photo.")  # fmt: skip
@click.option("--images", "images_root", type=DIR, default=None,
              help="With --metadata: the folder the table's image paths are relative to.")  # fmt: skip
@click.option("--profile", default="bioscan-5m", show_default=True,
              help="With --metadata: the table's dataset profile (bioscan-5m, insects-1m).")  # fmt: skip
@click.option("--profile-file", type=FILE, default=None,
              help="With --metadata: a TOML profile (README \"Other datasets\").")  # fmt: skip
@click.option("--dataset", "dataset_dir", type=DIR, default=None,
              help="An ingested dataset: predict every sample of --split.")  # fmt: skip
@click.option("--split", default=None, help="With --dataset: the split to predict.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The prediction table: .csv or .parquet (written atomically).")  # fmt: skip
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader worker processes that read, crop and decode photos "
              "[default: all cores; 0: in this process].")  # fmt: skip
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--low-confidence", type=click.FloatRange(0, 1), default=None, metavar="P",
              help="Flag rows whose calibrated top-1 probability is below P [default: the "
              "threshold of `bionas calibrate`, else 0.5].")  # fmt: skip
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="With --metadata: only the first N rows.")  # fmt: skip
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(run_dir: Path, images: tuple[Path, ...], **options) -> None:
    """Predict with the model of RUN_DIR (a run folder or an export folder).

    \b
    Three forms:
      RUN_DIR IMAGE...                        top-k classes per image, printed as JSON
      RUN_DIR --metadata TABLE --images ROOT --out FILE
                                              every row of a metadata table, from its photos
      RUN_DIR --dataset DATASET_DIR --split NAME --out FILE
                                              every sample of an ingested split

    Single images: the model was trained on specimen crops; give crops (such as BIOSCAN's
    cropped_256 photos), or whole photos with the specimen's --bbox. Metadata values are
    looked up in the model's vocabularies; a field left out, or a value never seen in
    training, is fed as unknown.

    A table is read as `bionas ingest` reads it (the profile's columns and image paths,
    the --bbox TSV, no path leaving --images) and each photo is cropped, resized and
    JPEG-encoded as ingest would with the options of the model's dataset, so a photo gets
    the same input here as after ingest. The output has one row per input row, in input
    order: processid, status (ok, or why the row has no prediction: missing_file,
    corrupt_image, bad_bbox, ...), detail, top1, top1_prob, ... to --top-k (calibrated
    probabilities), low_confidence, and each metadata field the model uses with
    <field>_known (whether its vocabulary knows the value). A summary goes to stderr.

    \b
    Examples:
      bionas predict run/ specimen.jpg
      bionas predict run/ a.jpg b.jpg --meta dna_bin=BOLD:AAA1234 --meta class=Insecta --top-k 3
      bionas predict run/ photo_1024x768.jpg --bbox 310,220,690,540
      bionas predict run/final --metadata season.csv --images photos/original_full \\
             --bbox season_bbox.tsv --out predictions.parquet
      bionas predict export/ --metadata i1m.csv --images i1m/images --profile insects-1m \\
             --out i1m.csv --low-confidence 0.7
      bionas predict run/final --dataset ds/ --split test --out test.csv
    """
    batch = options["metadata"] is not None or options["dataset_dir"] is not None
    if batch and images:
        raise BionasError(
            "give IMAGE arguments or --metadata/--dataset, not both "
            f"(got {len(images)} image(s) and a table)"
        )
    if batch:
        _predict_table(run_dir, options)
    elif not images:
        raise BionasError(
            "nothing to predict: give IMAGE files, --metadata TABLE --images ROOT --out FILE, "
            "or --dataset DATASET_DIR --split NAME --out FILE (see bionas predict --help)"
        )
    else:
        _predict_images(run_dir, images, options)


def _predict_images(run_dir: Path, images: tuple[Path, ...], options: dict) -> None:
    from bionas.trainer.config import resolve_device
    from bionas.trainer.predict import parse_box, parse_meta, predict_images
    from bionas.trainer.predictor import load_predictor

    for name, flag in TABLE_ONLY.items():
        if options[name] is not None:
            raise BionasError(f"{flag} is for --metadata or --dataset, not for single images")
    predictor = load_predictor(run_dir, resolve_device(options["device"]))
    meta = parse_meta(options["meta_pairs"], predictor.meta_fields)
    parsed = [parse_box(b) for b in options["boxes"]]
    result = predict_images(predictor, list(images), meta, top_k=options["top_k"],
                            boxes=parsed, margin=options["crop_margin"])  # fmt: skip
    _supernet_note(run_dir, result["network"])
    click.echo(json.dumps({"run_dir": str(run_dir), **result}, indent=2))


def _predict_table(run_dir: Path, options: dict) -> None:
    from bionas.batch_predict import BatchPredictConfig, predict_to_file

    if options["meta_pairs"] or options["crop_margin"] is not None:
        flag = "--meta" if options["meta_pairs"] else "--crop-margin"
        raise BionasError(
            f"{flag} is for single images: a table's rows carry their own metadata, and "
            "its crops use the margin of the model's dataset"
        )
    if len(options["boxes"]) > 1:
        raise BionasError(f"--bbox takes one TSV with --metadata, got {len(options['boxes'])}")
    if options["out"] is None:
        raise BionasError("--out FILE is needed with --metadata or --dataset (.csv or .parquet)")
    cfg = BatchPredictConfig(
        model_dir=run_dir,
        out=options["out"],
        metadata=options["metadata"],
        images=options["images_root"],
        bbox=Path(options["boxes"][0]) if options["boxes"] else None,
        profile=options["profile"],
        profile_file=options["profile_file"],
        dataset=options["dataset_dir"],
        split=options["split"],
        top_k=options["top_k"],
        batch_size=options["batch_size"],
        workers=options["workers"],
        device=options["device"],
        low_confidence=options["low_confidence"],
        limit=options["limit"],
        progress=not options["quiet"],
    )
    summary = predict_to_file(cfg)
    _supernet_note(run_dir, summary.network)
    click.echo(summary.text(), err=True)


def _supernet_note(run_dir: Path, network: str) -> None:
    if network == "supernet":
        click.echo(
            f"note: {run_dir} is a search run, so the supernet (every op weighted by α) "
            f"answers; its final model is {run_dir}/final (`bionas train --retrain-epochs N`)",
            err=True,
        )
