"""A regular (non-editable) install works: the wheel holds every module and the CLI runs.

The development install is editable, which maps `bionas.*` to the source folders and
would hide a subpackage missing from pyproject.toml's package list: that happened to
`bionas.commands`, so `pip install .` gave a `bionas` that could not start.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def source_modules() -> set[str]:
    """Every module under the package folders that pyproject.toml maps, as wheel paths."""
    config = package_config()
    modules = set()
    for package, folder in config["package-dir"].items():
        prefix = Path(*package.split("."))
        for path in (ROOT / folder).rglob("*.py"):
            modules.add((prefix / path.relative_to(ROOT / folder)).as_posix())
    return modules


def package_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def require_build_backend() -> None:
    """Skip, saying why, when the setuptools that pyproject.toml asks for is not installed."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    (needed,) = [int(m[1]) for r in requires if (m := re.fullmatch(r"setuptools>=(\d+)", r))]
    try:
        have = int(metadata.version("setuptools").split(".")[0])
    except metadata.PackageNotFoundError:
        have = None
    if have is None or have < needed:
        pytest.skip(
            f"building the wheel offline needs setuptools>={needed} in this environment "
            f"(found {have or 'none'}): pip install 'setuptools>={needed}'"
        )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (an in-tree build/ could hide a change)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in package_config()["package-dir"].values():
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    require_build_backend()
    # offline: this environment's setuptools builds it (no isolated build env from an index)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-index", "-q", "-w", str(out), str(source)]  # fmt: skip
    done = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = out.glob("bionas-*.whl")
    return path


def test_the_wheel_holds_every_source_module(wheel):
    with zipfile.ZipFile(wheel) as archive:
        packed = {name for name in archive.namelist() if name.endswith(".py")}
    expected = source_modules()
    assert "bionas/commands/train.py" in expected
    assert expected - packed == set(), "modules missing from the wheel (pyproject packages?)"


def installed_run(wheel: Path, target: Path, args: list[str], cwd: Path) -> str:
    """Run the wheel's bionas with this venv's dependencies but not its editable bionas."""
    if not target.exists():
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])
    )
    done = subprocess.run(
        [sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_installed_cli_starts_anywhere(wheel, tmp_path):
    target = tmp_path / "site"
    where = "import bionas.ingest.plan, bionas.trainer.loop, bionas.commands.train; print(bionas.__file__)"
    for cwd in (tmp_path, ROOT):  # the repository root puts its own bionas/ first on the path
        out = installed_run(wheel, target, ["-m", "bionas", "inspect", "--help"], cwd)
        assert "--verify" in out
        imported_from = installed_run(wheel, target, ["-c", where], cwd)
        if cwd == tmp_path:
            assert str(target) in imported_from
