"""`bionas export`: TorchScript and ONNX exports that predict like their run (issue 15).

Tiny runs are trained through the CLI once per module: a search with its final model, the
manual cell, and a run without metadata; each is exported in both formats and read back
by independent readers (json, hashlib, onnx, onnxruntime, a subprocess without torch).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from datasets import make_tiny_dataset, tiny_jpeg  # tests/datasets.py

from bionas.cli import main
from bionas.trainer.predictor import load_predictor
from bionas.trainer.transforms import preprocess_image

pytestmark = pytest.mark.usefixtures("torch_single_thread_module")
README = Path(__file__).parent.parent / "README.md"
TINY = ["--device", "cpu", "--image-size", "32", "--cells", "3", "--channels", "4",
        "--batch-size", "8", "--workers", "0", "--shuffle-buffer", "16", "--quiet"]  # fmt: skip
EXPORTS = [(run, fmt) for run in ("search", "manual", "nometa") for fmt in ("onnx", "torchscript")]


def bionas(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, torch_single_thread_module):
    root = tmp_path_factory.mktemp("export")
    dataset = make_tiny_dataset(root / "ds", n=48, shards_per_split=3)
    trained = {
        "search": ["--epochs", "1", "--retrain-epochs", "1", "--lr-theta", "0.05"],
        "manual": ["--genotype", "manual", "--max-steps", "2"],
        "nometa": ["--genotype", "pool_skip", "--meta-fields", "none", "--max-steps", "2"],
    }
    for name, options in trained.items():
        result = bionas("train", dataset, "--out", root / name, *options, *TINY)
        assert result.exit_code == 0, result.output
    evaluated = bionas("evaluate", root / "search/final", "--split", "val", "--latency-runs", "1")
    assert evaluated.exit_code == 0, evaluated.output
    return {"root": root, "dataset": dataset, **{name: root / name for name in trained}}


@pytest.fixture(scope="module")
def exports(runs):
    """(run, format) -> (export folder, the CLI's result)."""
    made = {}
    for run, fmt in EXPORTS:
        out = runs["root"] / f"{run}-{fmt}"
        opset = ["--opset", "18"] if (run, fmt) == ("manual", "onnx") else []
        result = bionas("export", runs[run], "--format", fmt, "--out", out, *opset)
        assert result.exit_code == 0, result.output
        made[(run, fmt)] = out, result
    return made


def model_dir(runs, run: str) -> Path:
    return runs[run] / "final" if run == "search" else runs[run]


def random_inputs(predictor, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = predictor.image_size
    images = torch.randn(batch, 3, size, size, generator=generator)
    columns = [torch.randint(0, len(predictor.vocabs[f]), (batch,), generator=generator)
               for f in predictor.meta_fields]  # fmt: skip
    meta = torch.stack(columns, 1) if columns else torch.zeros(batch, 0, dtype=torch.long)
    return images, meta


@pytest.mark.parametrize(("run", "fmt"), EXPORTS)
def test_an_export_gives_its_runs_probabilities_at_batch_1_and_5(exports, runs, run, fmt):
    exported = load_predictor(exports[(run, fmt)][0])
    eager = load_predictor(model_dir(runs, run))
    assert exported.network == fmt and eager.network == "fixed"
    assert exported.class_names == eager.class_names
    assert exported.meta_fields == eager.meta_fields
    assert exported.vocabs == eager.vocabs
    assert exported.preprocessing == eager.preprocessing
    for batch in (1, 5):
        images, meta = random_inputs(eager, batch, seed=batch)
        ours, theirs = exported.probabilities(images, meta), eager.probabilities(images, meta)
        assert ours.shape == (batch, len(eager.class_names))
        assert (ours - theirs).abs().max() <= 1e-4


def test_model_json_describes_the_export(exports, runs):
    import onnx
    import onnxruntime

    out, result = exports[("search", "onnx")]
    body = json.loads((out / "model.json").read_text())
    final = runs["search"] / "final"
    config = json.loads((final / "config.json").read_text())
    assert body["schema"] == "bionas.export/1" and body["format"] == "onnx"
    assert body["file"] == "model.onnx" and body["torch_version"] == torch.__version__
    assert body["sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    assert body["class_names"] == config["class_names"] and body["target"] == "order"
    assert [f["name"] for f in body["meta_fields"]] == config["meta_fields"] == ["dna_bin", "class"]
    for field in body["meta_fields"]:
        vocab = json.loads((out / field["vocab"]).read_text())
        assert vocab["sha256"] == field["sha256"] == config["vocab_sha256"][field["name"]]
        assert len(vocab["values"]) == field["size"] and vocab["values"][0] == "<unk>"
    manifest = runs["dataset"] / "manifest.json"
    assert body["dataset_manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert body["genotype"] == json.loads((runs["search"] / "genotype.json").read_text())
    assert body["preprocessing"]["image_size"] == 32 and len(body["preprocessing"]["std"]) == 3
    assert body["temperature"] == 1.0 and body["low_confidence_threshold"] is None
    report = json.loads((final / "eval/val/metrics.json").read_text())
    assert body["metrics"]["val"]["accuracy"] == report["metrics"]["all"]["accuracy"]
    assert body["metrics"]["val"]["network"] == "fixed"
    assert body["parity"]["max_abs_diff"] <= body["parity"]["tolerance"] == 1e-4
    assert f"{body['parity']['max_abs_diff']:.2e}" in result.output
    assert [i["name"] for i in body["inputs"]] == ["images", "meta"]
    model = onnx.load(out / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    session = onnxruntime.InferenceSession(out / "model.onnx", providers=["CPUExecutionProvider"])
    seen = {i.name: (i.shape, i.type) for i in session.get_inputs()}
    assert seen == {"images": (["batch", 3, 32, 32], "tensor(float)"),
                    "meta": (["batch", 2], "tensor(int64)")}  # fmt: skip
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("logits", ["batch", 4])]


# Every primitive, both strides, odd feature-map sizes (36 px -> 9 -> 5 -> 3), a zero edge,
# the gated fusion, the symmetric stem and a metadata field named like a Python keyword.
ALL_OPS = [
    {"e1": "dw_sep_3x3", "e2a": "dil_conv_5x5", "e2b": "se"},
    {"e1": "dw_sep_5x5", "e2a": "skip", "e2b": "zero"},
    {"e1": "se", "e2a": "conv_1x1", "e2b": "dil_conv_3x3"},
    {"e1": "max_pool_3x3", "e2a": "zero", "e2b": "avg_pool_3x3"},
]


def every_primitive_network():
    from bionas.trainer.genotype import Genotype
    from bionas.trainer.model import ModelConfig, build_model
    from bionas.trainer.ops import OP_NAMES

    cells = [{"index": i, "reduction": i in (1, 2), "edges": {e: {"op": op} for e, op in ops.items()}}
             for i, ops in enumerate(ALL_OPS)]  # fmt: skip
    genotype = Genotype.from_json(json.dumps({"format": "bionas.genotype/1", "cells": cells}))
    assert {e.op for c in genotype.cells for e in c.edges} == set(OP_NAMES)
    cfg = ModelConfig(num_classes=5, meta_cardinalities=(("class", 3), ("dna_bin", 7)),
                      channels=4, cells=4, embed_dim=16, meta_embed_dim=4, fusion="gated",
                      stem="transpose_symmetric", genotype=genotype)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    for module in model.modules():  # BatchNorm away from identity, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    return model.eval()


def network_inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 36, 36, generator=generator)
    meta = torch.stack([torch.randint(0, n, (batch,), generator=generator) for n in (3, 7)], 1)
    return images, meta


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_every_primitive_exports_with_parity_at_any_batch_size(fmt, tmp_path):
    from bionas.trainer.export_formats import (
        exportable,
        model_runner,
        onnx_bytes,
        torchscript_bytes,
    )

    model = every_primitive_network()
    net, example = exportable(model), network_inputs(2, seed=0)
    data = torchscript_bytes(net, example) if fmt == "torchscript" else onnx_bytes(net, example, None)[0]  # fmt: skip
    (tmp_path / "model").write_bytes(data)
    run_exported = model_runner(fmt, tmp_path / "model", with_meta=True)
    for batch in (1, 5):
        images, meta = network_inputs(batch, seed=batch)
        with torch.inference_mode():
            eager, exported = model(images, meta), run_exported(images, meta)
        assert exported.shape == (batch, 5)
        assert (exported - eager).abs().max() <= 1e-4


def test_a_search_run_exports_its_final_model_and_says_so(exports, runs):
    _, result = exports[("search", "torchscript")]
    assert f"exporting its final model {runs['search'] / 'final'}" in result.stderr
    _, result = exports[("manual", "torchscript")]
    assert "final model" not in result.stderr


def test_onnx_opset_is_the_one_asked_for(exports):
    import onnx

    out, _ = exports[("manual", "onnx")]
    opsets = {o.domain: o.version for o in onnx.load(out / "model.onnx").opset_import}
    assert opsets[""] == 18 == json.loads((out / "model.json").read_text())["opset"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_run_without_metadata_exports_an_images_only_model(exports, fmt):
    out, _ = exports[("nometa", fmt)]
    body = json.loads((out / "model.json").read_text())
    assert body["meta_fields"] == [] and [i["name"] for i in body["inputs"]] == ["images"]
    assert body["files"] == [body["file"]]
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(out / body["file"], providers=["CPUExecutionProvider"])  # fmt: skip
        assert [i.name for i in session.get_inputs()] == ["images"]
    else:
        module = torch.jit.load(out / body["file"])
        assert module(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


def test_a_search_run_without_a_final_model_is_refused_with_how_to_get_one(runs, tmp_path):
    search_only = tmp_path / "search"
    shutil.copytree(runs["search"], search_only, ignore=shutil.ignore_patterns("final"))
    result = bionas("export", search_only, "--format", "onnx", "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert "is a search run" in result.output and "not a deployable model" in result.output
    assert "--retrain-epochs N" in result.output and "--genotype" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_a_failing_parity_check_keeps_no_export(runs, tmp_path, monkeypatch):
    import bionas.trainer.export as export

    real = export.exportable
    # exported in train mode, BatchNorm normalises with the batch's own statistics
    monkeypatch.setattr(export, "exportable", lambda model: real(model).train())
    out = tmp_path / "out"
    result = bionas("export", runs["manual"], "--format", "torchscript", "--out", out)
    assert result.exit_code == 1
    assert "gives other logits than the eager model" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_a_folder_that_is_not_an_export_is_refused_unless_overwrite(runs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["export", runs["manual"], "--format", "torchscript", "--out", out]
    refused = bionas(*args)
    assert (
        refused.exit_code == 1 and "not empty" in refused.output and "--overwrite" in refused.output
    )
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert bionas(*args, "--overwrite").exit_code == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.pt").exists()


def test_an_earlier_export_is_replaced_with_its_files(exports, runs, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(exports[("search", "onnx")][0], out)
    result = bionas("export", runs["nometa"], "--format", "torchscript", "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.pt"]


@pytest.mark.parametrize("beside", [None, "notes.txt"])
def test_a_failed_re_export_leaves_the_earlier_export_working(
    exports, runs, tmp_path, monkeypatch, beside
):
    import bionas.trainer.export as export

    out = tmp_path / "out"
    shutil.copytree(exports[("manual", "torchscript")][0], out)
    if beside:  # a folder exported into with --overwrite keeps the user's own files
        (out / beside).write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # no export can pass
    result = bionas("export", runs["nometa"], "--format", "onnx", "--out", out)
    assert result.exit_code == 1 and "gives other logits" in result.output, result.output
    assert "earlier export in --out is left as it was" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    predictor = load_predictor(out)
    assert predictor.network == "torchscript" and predictor.meta_fields
    images, meta = random_inputs(predictor, 2, seed=1)
    assert predictor.probabilities(images, meta).shape == (2, len(predictor.class_names))
    monkeypatch.undo()  # and a re-export that passes replaces it, the user's files kept
    assert bionas("export", runs["nometa"], "--format", "onnx", "--out", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(["model.json", "model.onnx",
                                                            *([beside] if beside else [])])  # fmt: skip
    assert load_predictor(out).network == "onnx"


def test_the_calibration_travels_with_the_export(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["manual"], run)
    calibration = {"schema": "bionas.calibration/1", "temperature": 2.5,
                   "low_confidence_threshold": 0.4}  # fmt: skip
    (run / "calibration.json").write_text(json.dumps(calibration))
    out = tmp_path / "out"
    assert bionas("export", run, "--format", "torchscript", "--out", out).exit_code == 0
    body = json.loads((out / "model.json").read_text())
    assert (body["temperature"], body["low_confidence_threshold"]) == (2.5, 0.4)
    assert json.loads((out / "calibration.json").read_text()) == calibration
    exported, eager = load_predictor(out), load_predictor(run)
    assert exported.temperature == eager.temperature == 2.5
    assert exported.calibration.low_confidence == 0.4
    images, meta = random_inputs(eager, 3, seed=0)
    assert (exported.probabilities(images, meta) - eager.probabilities(images, meta)).abs().max() <= 1e-4  # fmt: skip


# The README example runs here as a field station would run it: in a fresh Python where
# torch and bionas cannot be imported at all; it reports what it did import.
NO_TORCH = """
import runpy, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "bionas"):
            raise ModuleNotFoundError(f"{name} is refused here")
sys.meta_path.insert(0, Refuse())
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    imported = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "bionas"))
    print("imported:", ",".join(imported), file=sys.stderr)
"""


def readme_onnx_example() -> str:
    section = README.read_text().split("### `bionas export`", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the export section has one Python example"
    # short enough to copy (as ruff formats it: the suite formats README's code blocks)
    assert len([line for line in blocks[0].splitlines() if line.strip()]) <= 25
    return blocks[0]


@pytest.mark.parametrize(("run", "meta"), [("search", "dna_bin=BOLD:A10"), ("nometa", None)])
def test_the_readme_example_predicts_with_only_onnxruntime_numpy_and_pil(exports, tmp_path, run, meta):  # fmt: skip
    script, guard, photo = tmp_path / "predict_onnx.py", tmp_path / "guard.py", tmp_path / "a.jpg"
    script.write_text(readme_onnx_example())
    guard.write_text(NO_TORCH)
    photo.write_bytes(tiny_jpeg(1, 48, random.Random(3)))
    out = exports[(run, "onnx")][0]
    args = [sys.executable, guard, script, out, photo, *([meta] if meta else [])]
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "imported: \n" in done.stderr  # neither torch nor bionas
    name, probability = done.stdout.split()
    predictor = load_predictor(out)
    images = preprocess_image(photo.read_bytes(), predictor.image_size)[None]
    values = dict([meta.split("=", 1)]) if meta else {}
    probs = predictor.probabilities(images, torch.tensor([predictor.meta_row(values)]))[0]
    assert name == predictor.class_names[int(probs.argmax())]
    assert float(probability) == pytest.approx(float(probs.max()), abs=1e-4)


def test_bionas_predict_gives_an_export_the_top1_of_its_run(exports, runs, tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(tiny_jpeg(2, 48, random.Random(5)))

    def top1(folder: Path) -> str:
        result = bionas("predict", folder, photo, "--meta", "dna_bin=BOLD:A21", "--top-k", "1")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["predictions"][0]["top_k"][0]["class"]

    expected = top1(runs["search"] / "final")
    assert top1(exports[("search", "onnx")][0]) == expected
    assert top1(exports[("search", "torchscript")][0]) == expected


def test_an_export_missing_its_model_file_is_refused_in_one_line(exports, tmp_path):
    out, _ = exports[("manual", "torchscript")]
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "model.pt").unlink()
    photo = tmp_path / "a.jpg"
    photo.write_bytes(tiny_jpeg(1, 48, random.Random(3)))
    result = bionas("predict", broken, photo)
    assert result.exit_code != 0 and "incomplete export" in result.output
    assert "Traceback" not in result.output
