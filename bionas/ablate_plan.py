"""Ablation plans: a TOML list of experiments, each a set of `bionas train` arguments.

    [plan]
    description = "what the plan compares"

    [defaults]
    args = ["--epochs", "10"]            # train arguments every experiment starts with
    evaluate = ["--split", "test"]       # `bionas evaluate` arguments for every experiment

    [[experiment]]
    name = "E001"                        # the run folder RUNS_DIR/E001 (letters, digits, . _ -)
    description = "bilinear fusion"
    args = ["--fusion", "bilinear"]      # after the defaults: a repeated option wins

`args` may also be one string, split as a shell would (`"--fusion bilinear"`). `--out`
and `--resume` belong to `bionas ablate` and are refused in a plan, as is `--out` among the
evaluate arguments (the comparison reads evaluations where `bionas evaluate` puts them).

Built-in plans ship inside the package (bionas/plans/*.toml): `--plan paper-table1` or
`--plan tiny` finds them by name; any other value is a path to a TOML file.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from bionas.errors import BionasError

PLANS_PACKAGE, PLANS_FOLDER = "bionas", "plans"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ABLATE_OWNS = ("--out", "--resume")  # ablate sets these itself
EVALUATE_OWNS = ("--out",)


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    args: tuple[str, ...]  # its own train arguments, without the plan's defaults


@dataclass(frozen=True)
class Plan:
    name: str
    description: str
    source: str  # where it was read from
    default_args: tuple[str, ...]
    evaluate_args: tuple[str, ...]
    experiments: tuple[Experiment, ...]

    def train_args(self, experiment: Experiment) -> tuple[str, ...]:
        """The defaults, then the experiment's own arguments (a later option wins)."""
        return self.default_args + experiment.args

    @property
    def split(self) -> str:
        """The split the evaluate arguments name (`bionas evaluate`'s default: test)."""
        return option_value(self.evaluate_args, "--split") or "test"

    def select(self, names: tuple[str, ...]) -> Plan:
        """Only the named experiments, in the plan's order; an unknown name is an error."""
        if not names:
            return self
        known = [e.name for e in self.experiments]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BionasError(
                f"--only {', '.join(unknown)}: not in plan {self.name} ({self.source}); "
                f"its experiments: {', '.join(known)}"
            )
        kept = tuple(e for e in self.experiments if e.name in names)
        return replace(self, experiments=kept)


def builtin_plans() -> list[str]:
    """Names of the plans shipped in the package, sorted."""
    folder = resources.files(PLANS_PACKAGE) / PLANS_FOLDER
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_plan(spec: str | Path) -> Plan:
    """A built-in plan by name (`paper-table1`), or a plan file by path."""
    path = Path(spec)
    if not path.exists() and str(spec) in builtin_plans():
        resource = resources.files(PLANS_PACKAGE) / PLANS_FOLDER / f"{spec}.toml"
        return parse_plan(resource.read_text(encoding="utf-8"), str(spec), f"built-in {spec}")
    if not path.is_file():
        raise BionasError(
            f"--plan {spec}: no such file, and not a built-in plan ({', '.join(builtin_plans())})"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BionasError(f"cannot read plan {path}: {err}") from None
    return parse_plan(text, path.stem, str(path))


def parse_plan(text: str, name: str, source: str) -> Plan:
    """A Plan from TOML text; every mistake is a BionasError naming the source and key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise BionasError(f"plan {source} is not valid TOML: {err}") from None
    _only_keys(data, {"plan", "defaults", "experiment"}, source, "top level")
    head = _table(data, "plan", source)
    defaults = _table(data, "defaults", source)
    _only_keys(head, {"description", "name"}, source, "[plan]")
    _only_keys(defaults, {"args", "evaluate"}, source, "[defaults]")
    default_args = _args(defaults.get("args", []), source, "[defaults] args", ABLATE_OWNS)
    evaluate_args = _args(
        defaults.get("evaluate", []), source, "[defaults] evaluate", EVALUATE_OWNS
    )
    entries = data.get("experiment", [])
    if not isinstance(entries, list) or not entries:
        raise BionasError(f"plan {source} has no [[experiment]] entries")
    experiments = tuple(_experiment(entry, i, source) for i, entry in enumerate(entries))
    seen: set[str] = set()
    for experiment in experiments:
        if experiment.name in seen:
            raise BionasError(f"plan {source}: experiment name {experiment.name!r} is used twice")
        seen.add(experiment.name)
    return Plan(
        name=str(head.get("name", name)),
        description=str(head.get("description", "")),
        source=source,
        default_args=default_args,
        evaluate_args=evaluate_args,
        experiments=experiments,
    )


def _experiment(entry: Any, index: int, source: str) -> Experiment:
    where = f"[[experiment]] #{index + 1}"
    if not isinstance(entry, dict):
        raise BionasError(f"plan {source}: {where} is not a table")
    _only_keys(entry, {"name", "description", "args"}, source, where)
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise BionasError(
            f"plan {source}: {where} needs a name of letters, digits, '.', '_' or '-' "
            f"(it names the run folder), got {name!r}"
        )
    args = _args(entry.get("args", []), source, f"experiment {name} args", ABLATE_OWNS)
    return Experiment(name=name, description=str(entry.get("description", "")), args=args)


def _args(value: Any, source: str, where: str, refused: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(value, str):
        args = tuple(shlex.split(value))
    elif isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        args = tuple(str(v) for v in value)
    else:
        raise BionasError(f"plan {source}: {where} must be a list of strings, got {value!r}")
    for arg in args:
        if arg.split("=", 1)[0] in refused:
            raise BionasError(
                f"plan {source}: {where} sets {arg}, which `bionas ablate` sets itself "
                "(runs go to RUNS_DIR/<name>; an interrupted run resumes by itself)"
            )
    return args


def _table(data: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise BionasError(f"plan {source}: [{key}] must be a table")
    return value


def _only_keys(table: dict[str, Any], allowed: set[str], source: str, where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise BionasError(
            f"plan {source}: unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}"
        )


def option_value(args: tuple[str, ...], option: str) -> str | None:
    """The last value given to `option` in an argument list (`--x v` or `--x=v`)."""
    found = None
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(option + "="):
            found = arg.split("=", 1)[1]
    return found
