"""`bionas export RUN_DIR --format torchscript|onnx --out DIR`: a deployable model."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(["torchscript", "onnx"]),
    help="torchscript: for PyTorch (torch.jit.load); onnx: for onnxruntime, without torch.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Export folder: new, empty, or an earlier export (replaced).",
)
@click.option(
    "--opset",
    type=click.IntRange(min=18),
    default=None,
    help="ONNX opset [default: the exporter's, 20 with torch 2.14].",
)
@click.option(
    "--overwrite", is_flag=True, help="Write into a non-empty folder that is not an export."
)
def command(run_dir: Path, fmt: str, out_dir: Path, opset: int | None, overwrite: bool) -> None:
    """Export the final model of RUN_DIR for deployment, with a model.json.

    The network (fp32, eval mode, any batch size) takes `images` float32 [B, 3, S, S],
    normalised as model.json's preprocessing says, and `meta` int64 [B, F] (the metadata
    fields' vocabulary indices, 0 = unknown; absent when the run uses no metadata), and
    returns `logits` [B, C]; probabilities are softmax(logits / temperature). model.json
    holds the classes, the metadata fields and their vocabulary files (copied beside it),
    the preprocessing, the calibration, the dataset manifest's sha256, the genotype and
    the headline metrics of `bionas evaluate`.

    A fixed-genotype run exports itself; a search run exports its final model
    (RUN_DIR/final, from `bionas train --retrain-epochs N`). Before the export is kept,
    the written file is run on a random batch beside the eager model: their logits must
    agree within 1e-4, else nothing is kept.

    \b
    Examples:
      bionas export run/ --format onnx --out run-onnx/
      bionas export run/final/ --format torchscript --out run-ts/
      bionas predict run-onnx/ specimen.jpg      # an export predicts like its run
    """
    from bionas.trainer.export import ExportConfig, export_run, final_model_dir

    cfg = ExportConfig(
        run_dir=run_dir, out_dir=out_dir, format=fmt, opset=opset, overwrite=overwrite
    )
    model_dir, from_final = final_model_dir(run_dir)
    if from_final:
        click.echo(f"note: {run_dir} is a search run: exporting its final model {model_dir}", err=True)  # fmt: skip
    result = export_run(cfg)
    body, parity = result.body, result.body["parity"]
    size_mb = result.model_path.stat().st_size / 2**20
    how = body["exporter"] + (f", opset {body['opset']}" if "opset" in body else "")
    click.echo(f"exported {result.model_dir} ({how}) to {result.model_path} ({size_mb:.2f} MB)")
    click.echo(
        f"parity with the eager model on a random batch of {parity['batch']} ({parity['runtime']}): "
        f"max |logit difference| {parity['max_abs_diff']:.2e} (tolerance {parity['tolerance']:g})"
    )
    inputs = ", ".join(f"{i['name']} {i['dtype']} {i['shape']}" for i in body["inputs"])
    click.echo(f"inputs: {inputs}; output: logits {body['outputs'][0]['shape']}")
    click.echo(f"next: bionas predict {cfg.out_dir} specimen.jpg")
