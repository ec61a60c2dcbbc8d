"""`bionas derive RUN_DIR`: the searched architecture (argmax op per edge) as a genotype."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def command(run_dir: Path) -> None:
    """Derive the architecture of RUN_DIR: argmax α per edge of every cell.

    Writes RUN_DIR/genotype.json (the op kept on each edge with the α of every candidate;
    `bionas train --genotype` trains it as a fixed network) and RUN_DIR/genotype.txt
    (the rendering printed here). An edge where the zero op wins is cut.

    \b
    Examples:
      bionas derive run/
      bionas train ds/ --out run-fixed/ --genotype run/genotype.json
    """
    from bionas.trainer.derive import derive_run

    derived = derive_run(run_dir)
    if not derived.searched:
        click.echo("This run trained a fixed network; its genotype is unchanged by derive.")
    click.echo(derived.text, nl=False)
    if derived.cut_edges:
        cut = derived.cut_edges
        click.echo(f"{len(cut)} edge(s) cut because the zero op won: {', '.join(cut)}")
    click.echo(f"wrote {derived.json_path} and {derived.text_path}")
