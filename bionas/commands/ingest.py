"""`bionas ingest`: metadata + images -> verified, deterministic WebDataset shards."""

from __future__ import annotations

from pathlib import Path

import click


def _ratios(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected numbers like 0.7,0.2,0.1, got {value!r}") from None


def _shard_size(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"expected a number of samples or 'auto', got {value!r}") from None


@click.command("ingest")
@click.argument("metadata_csv", type=click.Path(path_type=Path))
@click.option(
    "--images",
    required=True,
    type=click.Path(path_type=Path),
    help="Image package folder, e.g. .../images/original_full.",
)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Dataset folder to write."
)
@click.option(
    "--bbox", type=click.Path(path_type=Path), help="Bounding-box TSV (crop to the specimen)."
)
@click.option(
    "--profile",
    default="bioscan-5m",
    show_default=True,
    help="Built-in dataset layout: bioscan-5m or insects-1m.",
)
@click.option(
    "--profile-file",
    type=click.Path(path_type=Path),
    help="Your own dataset layout as TOML (see README: Other datasets).",
)
@click.option("--target", default="order", show_default=True, help="Field to classify.")
@click.option(
    "--min-class-count",
    default=500,
    show_default=True,
    help="Target classes with fewer records fold into 'Other'.",
)
@click.option(
    "--split-source",
    type=click.Choice(["random", "official"]),
    default="random",
    show_default=True,
    help="Random = seeded hash of processid (the paper); official = split column.",
)
@click.option(
    "--split-ratios",
    default="0.7,0.2,0.1",
    show_default=True,
    callback=_ratios,
    help="train,val,test fractions for --split-source random.",
)
@click.option("--splits", default=None, help="Comma list of splits to write (default: all).")
@click.option(
    "--seed", default=0, show_default=True, help="Seed of the split hash and sample order."
)
@click.option("--size", default=256, show_default=True, help="Shorter side of output images, px.")
@click.option("--quality", default=90, show_default=True, help="JPEG quality of output images.")
@click.option(
    "--crop-margin",
    default=0.1,
    show_default=True,
    help="Fraction of the bbox added on each side before cropping.",
)
@click.option(
    "--shard-size",
    default="auto",
    show_default=True,
    callback=_shard_size,
    help="Samples per shard; auto aims at ~100 MB shards.",
)
@click.option(
    "--compression", type=click.Choice(["none", "zstd"]), default="none", show_default=True
)
@click.option("--workers", default=0, show_default=True, help="Worker processes; 0 = all cores.")
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where shards are written: local worker processes, or Ray tasks (pip install 'bionas[ray]').",
)
@click.option(
    "--ray-address",
    default=None,
    help="Ray cluster to join (e.g. auto); default: start a local Ray with --workers CPUs.",
)
@click.option("--limit", type=int, default=None, help="Use only the first N rows (quick tries).")
@click.option("--with-barcode", is_flag=True, help="Also carry dna_barcode into records.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a dataset in --out made with other options (without it: refuse).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(metadata_csv: Path, splits: str | None, quiet: bool, **options) -> None:
    """Turn a metadata CSV and its images into verified WebDataset shards.

    Plans with Polars (only the needed columns), rejects bad rows with a reason
    (rejects.parquet), crops each image to its bbox, resizes and re-encodes it, and
    writes deterministic shards, vocabularies and manifest.json (last: until then the
    folder reads as unfinished). Rerunning the same command resumes: shards whose sha256
    still matches are kept. A run with other options refuses to touch a dataset in --out
    unless --overwrite; one ingest at a time can write a folder (a lock).

    \b
    Examples:
      bionas ingest BIOSCAN_5M_Insect_Dataset_metadata.csv \\
          --images bioscan5m/images/original_full \\
          --bbox BIOSCAN_5M_Insect_bbox.tsv --out ds/
      bionas ingest BIOSCAN_5M_Insect_Dataset_metadata.csv \\
          --images bioscan5m/images/cropped_256 --out ds/   # already cropped: no --bbox
      bionas ingest meta.csv --images imgs/ --out ds/ --split-source official \\
          --splits train,val,test --compression zstd --limit 10000
    """
    from bionas.ingest.config import IngestConfig
    from bionas.ingest.pipeline import run_ingest

    cfg = IngestConfig(
        metadata=metadata_csv,
        splits=tuple(s.strip() for s in splits.split(",")) if splits else None,
        **options,
    )
    summary = run_ingest(cfg, progress=not quiet)
    click.echo(
        f"wrote {sum(summary.samples.values())} samples in {summary.shards} shards to {summary.out}"
    )
    for split, n in summary.samples.items():
        click.echo(f"  {split:<14} {n:>10} samples")
    if summary.kept_shards:
        click.echo(f"  resumed: kept {summary.kept_shards} shards from an earlier run")
    total_rejects = sum(summary.rejects.values())
    click.echo(f"rejected {total_rejects} rows (see {summary.out / 'rejects.parquet'})")
    for reason, n in summary.rejects.items():
        click.echo(f"  {reason:<22} {n:>8}")
    if summary.clipped_bboxes:
        click.echo(f"clipped {summary.clipped_bboxes} bboxes that reached outside the image")
    if summary.excluded:
        click.echo(f"{summary.excluded} valid rows were in splits not asked for (--splits)")
    click.echo(
        f"processed {summary.processed} images in {summary.seconds:.1f} s "
        f"({summary.images_per_second:.0f} img/s)"
    )
