"""`bionas synth OUT_DIR`: a synthetic dataset in the layout of BIOSCAN-5M or Insects-1M."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", "n", default=2000, show_default=True, type=click.IntRange(min=1),
              help="Number of specimens (metadata rows before duplicates).")  # fmt: skip
@click.option("--seed", default=0, show_default=True, type=int,
              help="Same seed, same bytes: CSV, TSV and every image.")  # fmt: skip
@click.option("--corrupt", default=0, show_default=True, type=click.IntRange(min=0),
              metavar="K", help="Plant K bad inputs of each kind, for testing ingest's rejects "
              "(bioscan-5m only).")  # fmt: skip
@click.option("--images/--no-images", default=True, show_default=True,
              help="--no-images writes only the tables (scales to 5M rows).")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes drawing images (default: all cores); output does not depend on it.")  # fmt: skip
@click.option("--profile", default="bioscan-5m", show_default=True,
              help="Dataset layout to imitate: bioscan-5m or insects-1m.")  # fmt: skip
@click.option("--task", type=click.Choice(["orders", "pairs"]), default="orders",
              show_default=True, help="orders: specimens whose look follows their order. pairs: "
              "4 classes told apart only by the angle of a dot pair, for evaluating "
              "architecture search (bioscan-5m only).")  # fmt: skip
@click.option("--overwrite", is_flag=True,
              help="Replace the metadata, bbox, corruptions.json and images of an earlier run.")  # fmt: skip
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(
    out_dir: Path,
    n: int,
    seed: int,
    corrupt: int,
    images: bool,
    workers: int | None,
    profile: str,
    task: str,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Write a synthetic dataset in the layout of a real release to OUT_DIR.

    --profile bioscan-5m (default): metadata.csv (the official 23 columns), bbox.tsv and
    images/original_full/<split>/[<chunk>/]<processid>.jpg (1024x768 JPEGs of specimens
    whose look depends on their order), with long-tailed orders (at --n 5150850: 55, 21 with
    >= 500 records, Diptera 71%), sparse deep ranks and dna_bin clusters. corruptions.json lists the planted bad inputs (--corrupt), the rows
    whose order is naturally empty, and real-world variants ingest must accept (PNG
    behind .jpg, grayscale, CMYK, EXIF-rotated, a bbox partly outside the image, a row
    without bbox).

    --profile insects-1m: metadata.csv with image_id, file_name, class, order, suborder,
    superfamily, family, subfamily, tribe, subtribe, genus, species (no split, no DNA)
    and images/<order>/<image_id>.jpg (512x384, file_name is relative to images/):
    long-tailed orders (at --n 1017036: 38 with >= 500 images, 16 below), optional deep
    ranks, spiders and other arachnids; shared orders look as in bioscan-5m.

    --task pairs (bioscan-5m layout): the order column holds pair_000, pair_030, pair_060
    or pair_090 (balanced), the angle of two identical dark dots on a noisy floor; no
    other column carries the class. Cells of pooling, skip, 1x1 conv and SE cannot tell 0
    from 90 degrees (nor 30 from 60) on a transpose-symmetric stem, learned kxk convs can:
    a NAS search should find them.

    \b
    Examples:
      bionas synth data/ --n 2000 --corrupt 2
      bionas ingest data/metadata.csv --images data/images/original_full \\
             --bbox data/bbox.tsv --out ds/
      bionas synth big/ --n 5150850 --no-images     # a full-size metadata CSV
      bionas synth pairs/ --task pairs --n 6000
      bionas ingest pairs/metadata.csv --images pairs/images/original_full \\
             --bbox pairs/bbox.tsv --size 64 --min-class-count 1 --out ds-pairs/
      bionas synth i1m/ --profile insects-1m --n 3000
      bionas ingest i1m/metadata.csv --images i1m/images --profile insects-1m \\
             --split-source random --out ds-i1m/
    """
    from bionas.ingest.synth import SynthConfig, generate

    config = SynthConfig(out_dir=out_dir, n=n, seed=seed, corrupt=corrupt, images=images,
                         workers=workers, profile=profile, overwrite=overwrite,
                         progress=not quiet, task=task)  # fmt: skip
    summary = generate(config)
    duplicates = summary.n_metadata_rows - summary.n_specimens
    kind = f"{profile} pairs" if task == "pairs" else profile
    click.echo(f"Wrote a synthetic {kind} dataset to {summary.out_dir}/")
    click.echo(f"  metadata.csv      {summary.n_metadata_rows:,} rows "
               f"({summary.n_specimens:,} specimens + {duplicates} duplicated)")  # fmt: skip
    if summary.bbox_tsv is not None:
        click.echo(f"  bbox.tsv          {summary.n_bbox_rows:,} rows")
    if summary.images_root is not None:
        click.echo(f"  images            {summary.n_images:,} files under {summary.images_root}/")
    if summary.corruptions_json is not None:
        planted = sum(len(v) for v in summary.corruptions.values())
        variants = sum(len(v) for v in summary.accepted_variants.values())
        click.echo(f"  corruptions.json  {planted} planted bad inputs, {variants} accepted variants, "
                   f"{len(summary.natural_empty_order)} rows with an empty order")  # fmt: skip
    if summary.split_counts:
        splits = ", ".join(f"{k} {v:,}" for k, v in summary.split_counts.items())
        click.echo(f"  splits: {splits}")
    top = list(summary.order_counts.items())
    orders = ", ".join(f"{k} {v:,}" for k, v in top[:5])
    more = ", ..." if len(top) > 5 else ""
    click.echo(f"  orders: {len(top)} labelled ({orders}{more})")
