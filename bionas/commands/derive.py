"""`bionas derive RUN_DIR`: the searched architecture (argmax op per edge) as a genotype."""

from __future__ import annotations

from pathlib import Path

import click

GENOTYPE_JSON = "genotype.json"
GENOTYPE_TXT = "genotype.txt"


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
    from bionas.trainer.genotype import render
    from bionas.trainer.run import load_trained

    run = load_trained(run_dir, map_location="cpu")
    genotype = run.model.genotype()
    genotype.save(run_dir / GENOTYPE_JSON)
    text = render(genotype)
    (run_dir / GENOTYPE_TXT).write_text(text, encoding="utf-8")
    if getattr(run.model, "theta", None) is None:
        click.echo("This run trained a fixed network; its genotype is unchanged by derive.")
    click.echo(text, nl=False)
    cut = [f"cell {c.index} {e.edge}" for c in genotype.cells for e in c.edges if e.cut]
    if cut:
        click.echo(f"{len(cut)} edge(s) cut because the zero op won: {', '.join(cut)}")
    click.echo(f"wrote {run_dir / GENOTYPE_JSON} and {run_dir / GENOTYPE_TXT}")
