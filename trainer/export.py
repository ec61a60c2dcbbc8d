"""`bionas export`: the final model as TorchScript or ONNX, described by model.json.

    OUT/model.json            what the model needs around it (schema `bionas.export/1`):
                              classes, metadata fields with their vocabulary files,
                              preprocessing, temperature, the dataset manifest's sha256,
                              the genotype, headline metrics, inputs/outputs, parity
    OUT/model.pt | model.onnx the network: fp32, eval mode, a dynamic batch axis
    OUT/vocab_<field>.json    the metadata fields' vocabularies (`manifests.vocab` files:
                              plain JSON, `values[i]` is index i, index 0 is unknown)
    OUT/calibration.json      the run's, when `bionas calibrate` fitted one

Inputs: `images` float32 [B, 3, S, S] (normalised as model.json's preprocessing says)
and `meta` int64 [B, F], column f the index of field f. A run without metadata fields
has no `meta` input at all, in both formats (a zero-width [B, 0] input would be one the
graph never reads, and one more thing to get right in every runtime): model.json's
`inputs` lists what the model takes, and a caller feeds exactly those. Output: `logits` float32 [B, C]; probabilities are
softmax(logits / temperature).

Which model: a run that trained a fixed genotype is itself; a search run's supernet is
not deployable, so its RUN_DIR/final (`bionas train --retrain-epochs N`) is exported.
The export is checked before it is kept: the written file, run by its own runtime on a
random batch, must give the eager model's logits within `PARITY_TOLERANCE`. It is built
and checked in a sibling folder and only then swapped in, so a re-export that fails (or
is killed) leaves the earlier export in OUT working.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bionas import __version__
from bionas.errors import BionasError
from bionas.manifests.manifest import manifest_path
from bionas.manifests.vocab import load_vocab, vocab_filename
from bionas.shards.atomic import fsync_dir, temp_path, write_atomic
from bionas.trainer.export_formats import (
    IMAGES,
    LOGITS,
    META,
    MODEL_FILES,
    exportable,
    model_runner,
    onnx_bytes,
    ort_version,
    torchscript_bytes,
)
from bionas.trainer.final import final_run_dir
from bionas.trainer.model import architecture_json
from bionas.trainer.predictor import (
    CALIBRATION_NAME,
    EXPORT_JSON,
    FIXED,
    ONNX,
    TORCHSCRIPT,
    Calibration,
    Predictor,
    Preprocessing,
    calibration_of_run,
    load_calibration,
    run_preprocessing,
)
from bionas.trainer.run import CONFIG_NAME, MODEL_NAME, VOCAB_DIR, TrainedRun, load_trained

log = logging.getLogger(__name__)

EXPORT_SCHEMA = "bionas.export/1"
PARITY_TOLERANCE = 1e-4  # max |exported - eager| logit on CPU, fp32
PARITY_BATCH = 3  # not the traced batch size: parity also checks the dynamic batch axis
TRACE_BATCH = 2  # torch.export specialises sizes 0 and 1
PARITY_SEED = 0


@dataclass(frozen=True)
class ExportConfig:
    run_dir: Path
    out_dir: Path
    format: str  # TORCHSCRIPT or ONNX
    opset: int | None = None  # ONNX only; None: the exporter's default
    overwrite: bool = False  # write into a non-empty folder that is not an export

    def __post_init__(self) -> None:
        if self.format not in MODEL_FILES:
            raise BionasError(f"--format {self.format}: choose from {', '.join(MODEL_FILES)}")
        if self.opset is not None and self.format != ONNX:
            raise BionasError("--opset applies to --format onnx only")


@dataclass(frozen=True)
class ExportResult:
    model_dir: Path  # the run folder whose model was exported
    from_final: bool  # a search run's RUN_DIR/final
    model_path: Path
    body: dict[str, Any]  # model.json as written


def final_model_dir(run_dir: Path) -> tuple[Path, bool]:
    """The folder of the model to deploy: a fixed run itself, or a search run's final
    model (True). A search run without one is refused with what to do."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_NAME
    if not config_path.exists():
        raise BionasError(f"{run_dir} is not a bionas run: {CONFIG_NAME} is missing")
    model_config = json.loads(config_path.read_text())["model_config"]
    if model_config.get("genotype") is not None or model_config.get("backbone") is not None:
        return run_dir, False
    final = final_run_dir(run_dir)
    if (final / CONFIG_NAME).exists() and (final / MODEL_NAME).exists():
        return final, True
    raise BionasError(
        f"{run_dir} is a search run: its supernet (every op weighted by α) is not a "
        f"deployable model, and {final} holds no trained final model. Train it first: "
        f"`bionas train DATASET --out {run_dir} --resume --retrain-epochs N` (derives the "
        f"genotype and trains it from scratch in {final}), or `bionas derive {run_dir}` and "
        f"`bionas train DATASET --out FIXED --genotype {run_dir}/genotype.json`; then export "
        "that run."
    )


def export_run(cfg: ExportConfig) -> ExportResult:
    """Export the final model of `cfg.run_dir` into `cfg.out_dir` and check its parity.

    The export is built and checked in a sibling folder, then swapped in: a failed check,
    an error or a crash leaves an earlier export in `cfg.out_dir` as it was."""
    model_dir, from_final = final_model_dir(cfg.run_dir)
    run = load_trained(model_dir, map_location="cpu")
    out = Path(cfg.out_dir)
    earlier = _prepare_out_dir(out, cfg.overwrite)
    net = exportable(run.model)
    example = example_inputs(run, TRACE_BATCH, seed=PARITY_SEED + 1)
    if cfg.format == TORCHSCRIPT:
        data, exporter = torchscript_bytes(net, example), {"exporter": "torch.jit.trace"}
    else:
        data, exporter = onnx_bytes(net, example, cfg.opset)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_path(out)  # beside OUT: the same filesystem, so the swap is renames
    staging.mkdir()
    try:
        written: list[str] = []
        _write_files(staging, model_dir, run, MODEL_FILES[cfg.format], data, written)
        body = describe(run, model_dir, cfg.format, written, data, exporter)
        body["parity"] = check_parity(run, staging / MODEL_FILES[cfg.format], cfg.format)
        text = json.dumps(body, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
        write_atomic(staging / EXPORT_JSON, text.encode())
        _swap_in(staging, out, earlier, [EXPORT_JSON, *written])
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a swap
    return ExportResult(model_dir, from_final, out / MODEL_FILES[cfg.format], body)


def _swap_in(staging: Path, out: Path, earlier: list[str], files: list[str]) -> None:
    """Put the checked export in `staging` where `out` is, replacing an earlier export.

    A folder holding only an earlier export (or nothing) is swapped whole: renamed aside,
    the new one renamed in, the old removed. A folder that also holds other files (one
    written with --overwrite) keeps them: the earlier export's model.json goes first (a
    half-replaced folder is not an export), then its other files, then the new files come
    in, model.json last."""
    if not out.exists() and not out.is_symlink():
        os.rename(staging, out)
    elif not out.is_symlink() and set(os.listdir(out)) <= set(earlier):
        aside = temp_path(out)
        os.rename(out, aside)
        os.rename(staging, out)
        fsync_dir(out.parent)
        shutil.rmtree(aside)
    else:
        for name in earlier:
            (out / name).unlink(missing_ok=True)
        for name in [*files[1:], files[0]]:
            os.replace(staging / name, out / name)
        fsync_dir(out)
    fsync_dir(out.parent)


def _prepare_out_dir(out: Path, overwrite: bool) -> list[str]:
    """Refuse a non-empty folder that is not an earlier export (unless `overwrite`);
    returns the files of an earlier export, to be replaced (model.json first)."""
    if out.exists() and not out.is_dir():
        raise BionasError(f"--out {out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return []
    previous = out / EXPORT_JSON
    if previous.exists():
        try:
            body = json.loads(previous.read_text())
        except ValueError:
            body = {}
        if isinstance(body, dict) and body.get("schema") == EXPORT_SCHEMA:
            # plain names only: a hand-edited model.json must not delete outside OUT
            files = [n for n in body.get("files", []) if isinstance(n, str) and _plain_name(n)]
            return [EXPORT_JSON, *files]
    if overwrite:
        return []
    raise BionasError(
        f"--out {out} is not empty and holds no earlier export: choose an empty or new "
        "folder, or pass --overwrite to write the export's files into it"
    )


def _plain_name(name: str) -> bool:
    return name not in ("", ".", "..") and Path(name).name == name and "\\" not in name


def example_inputs(run: TrainedRun, batch: int, seed: int) -> tuple[Tensor, ...]:
    """A random batch: normal images, and valid indices of every metadata field."""
    generator = torch.Generator().manual_seed(seed)
    size = run.image_size
    images = torch.randn(batch, 3, size, size, generator=generator)
    if not run.meta_fields:
        return (images,)
    columns = [
        torch.randint(0, len(run.vocabs[f]), (batch,), generator=generator) for f in run.meta_fields
    ]
    return images, torch.stack(columns, dim=1)


def _write_files(
    out: Path, model_dir: Path, run: TrainedRun, model_file: str, data: bytes, written: list[str]
) -> None:
    """The model, the metadata vocabularies and the calibration; each name goes into
    `written` as soon as its file is there."""
    write_atomic(out / model_file, data)
    written.append(model_file)
    for field in run.meta_fields:
        name = vocab_filename(field)
        write_atomic(out / name, (model_dir / VOCAB_DIR / name).read_bytes())
        written.append(name)
    if (model_dir / CALIBRATION_NAME).exists() and calibration_of_run(model_dir, FIXED).body:
        write_atomic(out / CALIBRATION_NAME, (model_dir / CALIBRATION_NAME).read_bytes())
        written.append(CALIBRATION_NAME)


def describe(
    run: TrainedRun,
    model_dir: Path,
    fmt: str,
    files: list[str],
    data: bytes,
    exporter: dict[str, Any],
) -> dict[str, Any]:
    """model.json without its parity (see the module docstring)."""
    size, classes = run.image_size, len(run.class_names)
    calibration = calibration_of_run(model_dir, FIXED)
    inputs = [{"name": IMAGES, "dtype": "float32", "shape": ["batch", 3, size, size]}]
    if run.meta_fields:
        inputs.append({"name": META, "dtype": "int64", "shape": ["batch", len(run.meta_fields)],
                       "columns": list(run.meta_fields)})  # fmt: skip
    return {
        "schema": EXPORT_SCHEMA,
        "format": fmt,
        "file": files[0],
        "sha256": hashlib.sha256(data).hexdigest(),
        "files": files,
        "bionas_version": __version__,
        "torch_version": torch.__version__,
        **exporter,
        "source_run": str(Path(model_dir).resolve()),
        "target": run.target,
        "class_names": list(run.class_names),
        "meta_fields": [
            {
                "name": f,
                "vocab": vocab_filename(f),
                "size": len(run.vocabs[f]),
                "sha256": run.vocabs[f].sha256,
            }
            for f in run.meta_fields
        ],  # fmt: skip
        "unknown_index": 0,
        "preprocessing": run_preprocessing(
            run.dataset_dir, size, run.dataset_options, strict=True
        ).to_json(),
        "temperature": calibration.temperature,
        "low_confidence_threshold": calibration.low_confidence,
        "probabilities": "softmax(logits / temperature)",
        **_dataset_manifest(run.dataset_dir),
        "genotype": architecture_json(run.model),
        "metrics": headline_metrics(model_dir),
        "inputs": inputs,
        "outputs": [{"name": LOGITS, "dtype": "float32", "shape": ["batch", classes]}],
    }


def _dataset_manifest(dataset_dir: Path) -> dict[str, Any]:
    path = manifest_path(dataset_dir)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        note = f"the run's dataset manifest {path} cannot be read ({err.strerror or err})"
        return {"dataset_manifest_sha256": None, "dataset_manifest_note": note}
    return {"dataset_manifest_sha256": digest, "dataset_manifest": str(path)}


HEADLINE_KEYS = ("n_samples", "accuracy", "top5_accuracy", "f1_macro", "f1_weighted")


def headline_metrics(model_dir: Path) -> dict[str, dict[str, Any]]:
    """Split -> the headline numbers of `bionas evaluate`'s MODEL_DIR/eval/<split>/metrics.json."""
    found = {}
    for path in sorted(Path(model_dir).glob("eval/*/metrics.json")):
        try:
            report = json.loads(path.read_text())
            every = report["metrics"]["all"]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s is not a readable `bionas evaluate` report; left out", path)
            continue
        found[path.parent.name] = {
            "file": str(path.relative_to(model_dir)),
            "split": report.get("split"),
            "network": report.get("network", {}).get("name"),
            "cross_dataset": report.get("cross_dataset"),
            **{key: every.get(key) for key in HEADLINE_KEYS},
        }
    return found


def check_parity(run: TrainedRun, model_path: Path, fmt: str) -> dict[str, Any]:
    """Run the written file in its runtime on a random batch beside the eager model."""
    inputs = example_inputs(run, PARITY_BATCH, seed=PARITY_SEED)
    images, meta = inputs[0], inputs[1] if len(inputs) > 1 else None
    run_exported = model_runner(fmt, model_path, meta is not None)
    with torch.inference_mode():
        eager = run.model.eval()(images, meta).float()
        exported = run_exported(images, meta).float()
    diff = float((exported - eager).abs().max())
    if not diff <= PARITY_TOLERANCE:  # NaN fails too
        raise BionasError(
            f"the exported {fmt} model gives other logits than the eager model of "
            f"{run.run_dir}: max |difference| {diff:.3g} > {PARITY_TOLERANCE} on a random "
            "batch; it was not kept (an earlier export in --out is left as it was). This is "
            "a bug in bionas's export: please report it with the run's genotype."
        )
    runtime = f"onnxruntime {ort_version()}" if fmt == ONNX else f"torch.jit {torch.__version__}"
    return {"max_abs_diff": diff, "tolerance": PARITY_TOLERANCE, "batch": PARITY_BATCH,
            "seed": PARITY_SEED, "device": "cpu", "runtime": runtime}  # fmt: skip


def load_export(path: Path, device: str | torch.device = "cpu") -> Predictor:
    """An export folder (model.json) as a `Predictor`; ONNX runs on onnxruntime's CPU."""
    folder = Path(path)
    body = _read_model_json(folder)
    fmt = body["format"]
    if fmt == ONNX and torch.device(device).type != "cpu":
        log.warning("an ONNX export runs on onnxruntime's CPU provider, not on %s", device)
        device = "cpu"
    model_path = folder / body["file"]
    try:
        data = model_path.read_bytes()
    except OSError as err:
        raise BionasError(
            f"{folder} is an incomplete export: {model_path.name} cannot be read "
            f"({err.strerror or err}); export the run again"
        ) from None
    if hashlib.sha256(data).hexdigest() != body["sha256"]:
        raise BionasError(f"{model_path} does not match the sha256 in {folder / EXPORT_JSON}")
    vocabs = {}
    for field in body["meta_fields"]:
        vocab_path = folder / field["vocab"]
        try:
            vocab = load_vocab(vocab_path)
        except (OSError, ValueError) as err:
            raise BionasError(f"cannot read the vocabulary of {field['name']!r}: {err}") from err
        if vocab.sha256 != field["sha256"]:
            raise BionasError(f"{vocab_path} is not the vocabulary the model was trained with")
        vocabs[field["name"]] = vocab
    calibration = load_calibration(folder)
    if not (folder / CALIBRATION_NAME).exists():
        threshold = body.get("low_confidence_threshold")
        calibration = Calibration(float(body.get("temperature", 1.0)), threshold)
    keys = ("genotype", "metrics", "dataset_manifest_sha256", "parity", "source_run")
    return Predictor(
        source=folder,
        network=fmt,
        target=body["target"],
        class_names=list(body["class_names"]),
        meta_fields=list(vocabs),
        vocabs=vocabs,
        preprocessing=Preprocessing.from_json(body["preprocessing"]),
        calibration=calibration,
        logits_fn=model_runner(fmt, model_path, bool(vocabs), device),
        device=torch.device(device),
        about={key: body.get(key) for key in keys},
    )


def _read_model_json(folder: Path) -> dict[str, Any]:
    path = folder / EXPORT_JSON
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BionasError(f"cannot read {path}: {err}") from err
    if not isinstance(body, dict) or body.get("schema") != EXPORT_SCHEMA:
        raise BionasError(f"{path} is not a bionas export (schema {EXPORT_SCHEMA!r})")
    if body.get("format") not in MODEL_FILES:
        raise BionasError(f"{path}: unknown format {body.get('format')!r}")
    return body
