"""`bionas inspect`: what a dataset holds, and (--verify) whether it is intact."""

from __future__ import annotations

from pathlib import Path

import click

from bionas.errors import BionasError

BAR_WIDTH = 40


@click.command("inspect")
@click.argument("dataset_dir", type=click.Path(path_type=Path))
@click.option(
    "--verify",
    is_flag=True,
    help="Re-hash every shard, re-count its samples, and list files the manifest does not.",
)
@click.option(
    "--split",
    "hist_split",
    default=None,
    help="Split for the class histogram (default: train or the first).",
)
def command(dataset_dir: Path, verify: bool, hist_split: str | None) -> None:
    """Show a dataset's splits, samples, vocabulary sizes and class histogram.

    With --verify, re-hash every shard, re-count its samples, check the
    vocabulary files, and list what manifest.json does not (extra shards or
    split folders under shards/, leftover .tmp files); exits with status 1 on
    any mismatch or extra file.

    \b
    Examples:
      bionas inspect ds/
      bionas inspect ds/ --verify
    """
    from tqdm import tqdm

    from bionas.manifests.manifest import load_manifest
    from bionas.manifests.verify import verify_dataset

    try:
        manifest = load_manifest(dataset_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise BionasError(str(exc)) from exc
    body = manifest.body
    click.echo(
        f"dataset {dataset_dir}  (target: {manifest.target}, profile: {body.get('profile')})"
    )
    for split in manifest.splits:
        entry = body["splits"][split]
        click.echo(
            f"  {split:<14} {entry['samples']:>10} samples  {len(entry['shards']):>5} shards"
            f"  {entry['bytes'] / 1e6:>10.1f} MB"
        )
    click.echo("vocabularies: " + ", ".join(f"{f}={v['size']}" for f, v in body["vocabs"].items()))
    rejects = body.get("rejects", {})
    click.echo(
        f"rejects: {rejects.get('total', 0)} "
        + " ".join(f"{r}={n}" for r, n in rejects.get("by_reason", {}).items())
    )
    split = hist_split or ("train" if "train" in manifest.splits else manifest.splits[0])
    counts = manifest.class_counts(split)
    if counts:
        click.echo(f"classes of {manifest.target} in {split}:")
        top = max(counts.values())
        for name, n in counts.items():
            bar = "#" * max(1, round(BAR_WIDTH * n / top))
            click.echo(f"  {name:<24} {n:>9}  {bar}")
    if verify:
        total = sum(len(entry["shards"]) for entry in body["splits"].values())
        with tqdm(total=total, unit="shard", desc="verify") as bar:
            problems = verify_dataset(manifest, on_shard=lambda _: bar.update())
        if problems:
            for problem in problems:
                click.echo(f"{problem.kind.upper()} {problem}", err=True)
            raise SystemExit(1)
        click.echo(
            f"verified {total} shards: all sha256 and sample counts match, no unlisted files"
        )
