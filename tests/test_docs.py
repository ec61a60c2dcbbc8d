"""The CLI documents itself: every command has --help with examples and a README section."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bionas.cli import COMMANDS, main

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_top_level_help_lists_every_command_with_a_description():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        line = next(
            (ln for ln in result.output.splitlines() if ln.strip().startswith(name + " ")), ""
        )
        assert len(line.split()) > 1, f"{name} has no one-line description in bionas --help"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help_with_examples(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output or "Example:" in result.output, name


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_a_readme_section(name):
    assert f"### `bionas {name}`" in README, f"README lacks a section for bionas {name}"
