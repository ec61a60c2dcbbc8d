"""`bionas compare RUN_DIR...`: a Table I/II-style comparison of evaluated runs."""

from __future__ import annotations

from pathlib import Path

import click

DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command(context_settings={"max_content_width": 100})
@click.argument("run_dirs", nargs=-1, required=True, type=DIR)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write comparison.md, comparison.csv and comparison.png here [default: print only].",
)
@click.option(
    "--evaluate",
    is_flag=True,
    help="First evaluate (on --split) each run whose model has no evaluation yet.",
)
@click.option("--split", default="test", show_default=True, help="The split --evaluate uses.")
@click.option("--latency-runs", default=20, show_default=True, type=click.IntRange(min=1),
              help="Timed forwards at batch 1 when --evaluate evaluates.")  # fmt: skip
def command(
    run_dirs: tuple[Path, ...], out_dir: Path | None, evaluate: bool, split: str, latency_runs: int
) -> None:
    """Compare runs as the paper's Tables I and II: one row per evaluation.

    RUN_DIR is a run of `bionas train` or a folder of runs (e.g. the RUNS_DIR of
    `bionas ablate`). Nothing is recomputed: metrics and costs come from the
    metrics.json files `bionas evaluate` wrote under RUN_DIR/eval/ (every split and
    dataset found; another dataset's rows are marked `(cross)`), the configuration from
    config.json, images seen and step time from steps.jsonl.

    \b
    Columns: run, network, search, ops, fusion, backbone, evaluated on, split, n,
    accuracy, precision/recall/F1 (macro and weighted; metrics in % here, fractions in
    the CSV), unseen-BIN accuracy and n, params, MB, GFLOPs and GMACs (FLOPs = 2 x MACs),
    latency GPU/CPU (ms, batch 1), train h (step time of every stage that produced the
    model: search + retraining for a final model), wall h (when `bionas ablate` ran it),
    images seen, note.

    \b
    A search run with RUN_DIR/final (`--retrain-epochs`): the final model's rows come
    first; the search's own evaluations, if any, are extra rows named "RUN (search)". A
    run not evaluated yet is listed with a note (or evaluated first with --evaluate).

    \b
    Examples:
      bionas compare runs/E001 runs/E009 runs/E012
      bionas compare runs/ --out runs/              # every run in runs/
      bionas compare runs/ --evaluate --split test --out report/
    """
    from bionas.compare import CompareConfig, compare_runs
    from bionas.compare_output import markdown_table, write_comparison

    cfg = CompareConfig(
        run_dirs=run_dirs, evaluate=evaluate, split=split,
        latency_runs=latency_runs,
    )  # fmt: skip

    def announce(model_dir: Path) -> None:
        click.echo(f"evaluating {model_dir} on {split} …", err=True)

    rows = compare_runs(cfg, on_evaluate=announce)
    click.echo(markdown_table(rows), nl=False)
    if out_dir is not None:
        written = write_comparison(rows, out_dir)
        files = [str(p) for p in written.values() if p is not None]
        click.echo(f"wrote {', '.join(files)}")
        if written["png"] is None:
            click.echo("no plot: no row has both an accuracy and FLOPs yet")
