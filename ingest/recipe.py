"""What a dataset is made from (its recipe), how a rerun's differs, and the command to resume.

A rerun with the dataset's recipe resumes it (finished shards are kept); a rerun with
another recipe would replace the dataset, so `bionas ingest` refuses it unless
`--overwrite`. The recipe is read back from a finished dataset's manifest, or from the
marker of an unfinished run (`manifest.incomplete.json`).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from bionas import __version__
from bionas.errors import BionasError
from bionas.ingest.config import IngestConfig
from bionas.ingest.profiles import DatasetProfile
from bionas.manifests.manifest import manifest_path, read_incomplete

# the manifest's top-level keys that belong to the recipe, besides options and inputs
RECIPE_KEYS = ("bionas_version", "profile", "categorical_fields", "numeric_fields")
_ALWAYS_SHOWN = ("images", "out")  # required options of the resume command
_NEVER_SHOWN = ("metadata", "overwrite")  # the argument; and a resume needs no --overwrite


def run_recipe(cfg: IngestConfig, profile: DatasetProfile, inputs: Mapping) -> dict[str, Any]:
    """This run's recipe, in the manifest's terms (`inputs`: `record.input_entries`)."""
    body = {
        "bionas_version": __version__,
        "profile": profile.name,
        "categorical_fields": list(profile.categorical),
        "numeric_fields": list(profile.numeric),
        "options": cfg.recorded_options(),
        "inputs": inputs,
    }
    return recorded_recipe(body)


def recorded_recipe(body: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe inside a manifest body (or a marker's `recipe`), as plain JSON values.

    Inputs count by content (sha256), not by path: a moved CSV is the same input.
    """
    recipe = {key: body.get(key) for key in RECIPE_KEYS}
    recipe["options"] = dict(body.get("options") or {})
    recipe["inputs"] = {
        name: entry["sha256"]
        for name, entry in (body.get("inputs") or {}).items()
        if isinstance(entry, Mapping) and "sha256" in entry
    }
    return json.loads(json.dumps(recipe))


def recipe_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line per difference, `what: old -> new`; empty when the recipes agree."""
    lines = []
    for key in RECIPE_KEYS:
        if old.get(key) != new.get(key):
            lines.append(f"{key}: {_show(old.get(key))} -> {_show(new.get(key))}")
    old_options, new_options = old.get("options", {}), new.get("options", {})
    for name in sorted(set(old_options) | set(new_options)):
        if old_options.get(name) != new_options.get(name):
            before, after = _show(old_options.get(name)), _show(new_options.get(name))
            lines.append(f"--{name.replace('_', '-')}: {before} -> {after}")
    old_inputs, new_inputs = old.get("inputs", {}), new.get("inputs", {})
    for name in sorted(set(old_inputs) | set(new_inputs)):
        before, after = old_inputs.get(name), new_inputs.get(name)
        if before != after:
            lines.append(f"{name} table: sha256 {_short(before)} -> {_short(after)}")
    return lines


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def _short(digest: str | None) -> str:
    return f"{digest[:12]}..." if digest else "none"


def resume_command(cfg: IngestConfig) -> str:
    """The `bionas ingest` command line that reruns `cfg` (options left at default omitted)."""
    args = ["bionas", "ingest", str(cfg.metadata)]
    for field in fields(IngestConfig):
        value = getattr(cfg, field.name)
        if field.name in _NEVER_SHOWN or value is None:
            continue
        if field.name not in _ALWAYS_SHOWN and value == field.default:
            continue
        flag = f"--{field.name.replace('_', '-')}"
        if isinstance(value, bool):
            args.append(flag)
        elif isinstance(value, tuple):
            args += [flag, ",".join(str(v) for v in value)]
        else:
            args += [flag, str(value)]
    return shlex.join(args)


def previous_recipe(out: Path) -> tuple[dict[str, Any] | None, bool]:
    """(the recipe `out` was made with, whether that dataset is finished); None if new."""
    path = manifest_path(out)
    if path.exists():
        try:
            body = json.loads(path.read_text())
        except ValueError as exc:
            raise BionasError(
                f"{path} is not a readable bionas manifest ({exc}): pass --overwrite to "
                "replace the dataset, or choose another --out"
            ) from None
        return recorded_recipe(body), True
    marker = read_incomplete(out)
    recipe = marker.get("recipe") if marker else None
    return (recipe if isinstance(recipe, dict) else None), False  # stored as run_recipe made it


def refuse_other_recipe(out: Path, recipe: Mapping[str, Any]) -> None:
    """A clear error, listing the differences, when `out` was made with another recipe."""
    previous, finished = previous_recipe(out)
    differences = recipe_differences(previous, recipe) if previous is not None else []
    if not differences:
        return
    what, verb = ("a finished dataset", "keep") if finished else ("an unfinished ingest", "resume")
    listing = "\n".join(f"  {line}" for line in differences)
    raise BionasError(
        f"{out} holds {what} made with other options; this run differs in:\n{listing}\n"
        f"Rerun with its options to {verb} it, pass --overwrite to replace it, "
        "or choose another --out."
    )
