"""`bionas doctor`: report versions, the PIL in use, the JPEG codec and GPUs."""

from __future__ import annotations

import json

import click


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(as_json: bool) -> None:
    """Report Python/torch/Polars/webdataset versions, the PIL in use, libjpeg-turbo and CUDA.

    Warns when the imported PIL is plain Pillow rather than pillow-simd (slower
    resizing), or when libjpeg-turbo is not used.

    \b
    Examples:
      bionas doctor
      bionas doctor --json
    """
    from bionas.doctor import report

    body = report()
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    for key, value in body.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for k, v in value.items():
                click.echo(f"  {k}: {v}")
        else:
            click.echo(f"{key}: {value}")
    pil = body["PIL"]
    if pil["flavour"] != "pillow-simd":
        click.echo(
            "warning: PIL is plain Pillow; install pillow-simd for faster ingest "
            "(see README: Set up)",
            err=True,
        )
    if not pil["libjpeg-turbo"]:
        click.echo("warning: PIL does not use libjpeg-turbo; JPEG decode will be slow", err=True)
