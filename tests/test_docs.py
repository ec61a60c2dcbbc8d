"""The CLI documents itself: every command has --help with examples and a README section."""

from __future__ import annotations

import re
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


def test_every_test_reliability_md_cites_exists():
    """RELIABILITY.md's table names the test behind each fault: each must be a real test."""
    root = Path(__file__).parent.parent
    text = (root / "RELIABILITY.md").read_text()
    cited, module = [], None
    for match in re.finditer(r"`(?:(tests/\w+\.py))?::(\w+)`|`(tests/\w+\.py)`", text):
        module = match.group(1) or match.group(3) or module
        if match.group(2):
            cited.append((module, match.group(2)))
    assert len(cited) > 30
    for path, name in cited:
        source = (root / path).read_text()
        assert f"def {name}(" in source, f"RELIABILITY.md cites {path}::{name}, which is gone"
