"""The `bionas` command line: a click group whose commands load lazily (fast --help)."""

from __future__ import annotations

import importlib
import logging

import click

from bionas import __version__

# name -> module under bionas.commands that defines a click command called `command`
COMMANDS = {
    "synth": "synth",
    "ingest": "ingest",
    "inspect": "inspect",
    "vocab": "vocab",
    "train": "train",
    "derive": "derive",
    "evaluate": "evaluate",
    "compare": "compare",
    "ablate": "ablate",
    "calibrate": "calibrate",
    "predict": "predict",
    "export": "export",
    "demo": "demo",
    "doctor": "doctor",
}


class LazyGroup(click.Group):
    """Imports a command's module only when the command is used or listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._load(name) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        module_name = COMMANDS.get(name)
        if module_name is None:
            return None
        try:
            module = importlib.import_module(f"bionas.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bionas.commands.{module_name}":
                return None  # command not built yet
            raise
        return module.command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bionas")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """bionas: BIOSCAN-5M -> verified WebDataset shards -> BioAutoML-NAS training.

    \b
    Typical run:
      bionas synth data/                      # or use the real BIOSCAN-5M release
      bionas ingest data/metadata.csv --images data/images/original_full \\
             --bbox data/bbox.tsv --out ds/
      bionas train ds/ --out run/
      bionas derive run/ && bionas evaluate run/
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
