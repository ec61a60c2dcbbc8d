"""`bionas vocab`: (re)build vocabularies from a metadata table, without images."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.command("vocab")
@click.argument("metadata", type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="A dataset folder (its vocabularies are replaced) or any folder.",
)
@click.option(
    "--profile", default="bioscan-5m", show_default=True, help="bioscan-5m or insects-1m."
)
@click.option("--profile-file", type=click.Path(path_type=Path), help="Your own layout as TOML.")
@click.option(
    "--target", default="order", show_default=True, help="The class field (gets 'Other')."
)
@click.option(
    "--field", "fields", multiple=True, help="Feature field to write (repeatable; default: all)."
)
@click.option(
    "--min-count",
    default=500,
    show_default=True,
    help="Target classes with fewer records fold into 'Other' (a class with exactly this many stays).",
)
@click.option("--count-splits", default=None, help="Comma list: count only rows of these splits.")
@click.option(
    "--align-to",
    type=click.Path(path_type=Path),
    help="Compare the target classes with another dataset's by name.",
)
def command(
    metadata: Path,
    profile: str,
    profile_file: Path | None,
    fields: tuple[str, ...],
    count_splits: str | None,
    **options,
) -> None:
    """Write vocabularies (index 0 unknown, 'Other' for the target, counts, sha256).

    Reads only the needed columns with Polars and no images. When --out is a dataset
    made by `bionas ingest`, its vocabulary files are replaced and manifest.json records
    the new version: the next `bionas train` uses the new indices (shards hold raw
    strings, so nothing is re-ingested).

    \b
    Examples:
      bionas vocab insects1m/metadata.csv --profile insects-1m --out vocab-i1m/ \\
          --align-to ds-bioscan/
      bionas vocab BIOSCAN_5M_Insect_Dataset_metadata.csv --out ds/ --min-count 1000
    """
    from bionas.ingest.profiles import resolve_profile
    from bionas.ingest.vocabulary import VocabConfig, build_vocabs, write_alignment, write_vocabs
    from bionas.manifests.vocab import OTHER

    start = time.perf_counter()
    cfg = VocabConfig(
        metadata=metadata,
        fields=fields,
        count_splits=tuple(s.strip() for s in count_splits.split(",")) if count_splits else None,
        **options,
    )
    vocabs = build_vocabs(cfg, resolve_profile(profile, profile_file))
    directory = write_vocabs(cfg, vocabs)
    target = vocabs[cfg.target]
    click.echo(
        f"{cfg.target}: {len(target) - 1} classes (min count {cfg.min_count}, "
        f"counted splits: {', '.join(target.counted_splits)})"
    )
    for name, n in zip(target.values[1:], target.counts[1:], strict=True):
        note = f"  <- {len(target.folded)} classes below {cfg.min_count}" if name == OTHER else ""
        click.echo(f"  {name:<28} {n:>10}{note}")
    click.echo(
        f"wrote {len(vocabs)} vocabularies to {directory} in {time.perf_counter() - start:.1f} s"
    )
    if cfg.align_to:
        alignment = write_alignment(cfg, target)
        click.echo(f"alignment with {cfg.align_to} (written to {cfg.out / 'alignment.json'}):")
        for key, n in alignment["counts"].items():
            shown = ", ".join(alignment[key][:12]) + (" ..." if n > 12 else "")
            click.echo(f"  {key:<26} {n:>4}  {shown}")
