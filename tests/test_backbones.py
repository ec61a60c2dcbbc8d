"""`bionas train --backbone NAME` (issue 13 part 3, the paper's Table II): a torchvision model
as the image encoder, trained by the same loop, evaluated derived-free, exported.

Every test runs with downloads made impossible (`no_downloads`): a backbone is built from
scratch, or from a local `--weights` file, never from the network.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
import torch
import torchvision
from click.testing import CliRunner
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.cli import main
from bionas.trainer.backbones import FAMILIES, BackboneEncoder, backbone_names, family_of
from bionas.trainer.config import TrainConfig
from bionas.trainer.fusion import FUSIONS
from bionas.trainer.logs import read_jsonl
from bionas.trainer.model import ModelConfig, build_model
from bionas.trainer.run import load_trained, model_config_from_dict, model_config_to_dict
from bionas.trainer.session import start_session

pytestmark = pytest.mark.usefixtures("torch_single_thread_module", "no_downloads")
# batch 2 at 32 px: vit_b_16 (86 M parameters) and convnext_tiny (28 M) stay at full width
TINY = ["--device", "cpu", "--image-size", "32", "--batch-size", "2", "--workers", "0",
        "--shuffle-buffer", "4", "--quiet"]  # fmt: skip
TABLE_II_SMOKE = ("resnet18", "efficientnet_b0", "convnext_tiny", "vit_b_16")
PREFIX = "image_encoder.backbone."


def bionas(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("ds") / "ds", n=16, shards_per_split=2)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """name -> a backbone run of 2 steps (trained once per module)."""
    runs = {}

    def train(name):
        if name not in runs:
            run = tmp_path_factory.mktemp(name) / "run"
            result = bionas("train", dataset, "--out", run, "--backbone", name,
                            "--max-steps", "2", *TINY)  # fmt: skip
            assert result.exit_code == 0, result.output
            runs[name] = run, result
        return runs[name]

    return train


def backbone_state(run) -> dict[str, torch.Tensor]:
    saved = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    return {k.removeprefix(PREFIX): v for k, v in saved.items() if k.startswith(PREFIX)}


@pytest.mark.parametrize("name", TABLE_II_SMOKE)
def test_a_backbone_trains_two_weight_steps_and_evaluates_derived_free(trained, name):
    run, result = trained(name)
    assert f"next: bionas evaluate {run}" in result.output and "derive" not in result.output
    assert [s["kind"] for s in read_jsonl(run / "steps.jsonl")] == ["w", "w"]
    config = json.loads((run / "config.json").read_text())
    assert config["train_config"]["backbone"] == name
    assert config["model_config"]["backbone"] == name and config["model_config"]["genotype"] is None
    model = load_trained(run).model
    assert model.theta is None and model.arch_parameters() == []
    assert isinstance(model.image_encoder, BackboneEncoder)

    evaluated = bionas(
        "evaluate", run, "--split", "val", "--latency-runs", "1", "--batch-size", "4"
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((run / "eval/val/metrics.json").read_text())
    assert report["network"]["name"] == "fixed" and report["network"]["backbone"] == name
    assert f"backbone {name}" in report["network"]["network"]
    assert "supernet" not in report and "derived" not in report
    efficiency = report["efficiency"]
    assert efficiency["model"]["flops"] > 0 and efficiency["latency_ms"]["cpu"]["median_ms"] > 0
    assert efficiency["model"]["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert f"backbone {name}" in efficiency["model"]["scope"]


def test_a_weights_file_starts_the_new_run_from_those_weights(trained, dataset, tmp_path):
    source, _ = trained("resnet18")
    weights = tmp_path / "resnet18.pt"
    state = backbone_state(source)
    # a full torchvision state dict: the original 1000-class classifier is dropped
    state |= {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(state, weights)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def first_features(run_dir, **options):
        # contiguous, as the run that made `expected`: NHWC sums in another order
        config = TrainConfig(dataset, run_dir, backbone="resnet18", device="cpu", image_size=32,
                             batch_size=2, workers=0, channels_last="off", **options)  # fmt: skip
        _, model, *_ = start_session(config)
        with torch.no_grad():
            return model.eval().image_encoder.backbone(images)

    with torch.no_grad():
        expected = load_trained(source).model.image_encoder.backbone(images)
    assert torch.equal(first_features(tmp_path / "loaded", weights=weights), expected)
    assert not torch.allclose(first_features(tmp_path / "scratch"), expected)

    run = tmp_path / "cli"  # through the CLI: a near-zero lr leaves the loaded weights in place
    result = bionas("train", dataset, "--out", run, "--backbone", "resnet18", "--weights", weights,
                    "--lr-w", "1e-9", "--max-steps", "1", *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["train_config"]["weights"] == str(weights)
    after, loaded = backbone_state(run), backbone_state(source)
    conv1 = "conv1.weight"
    assert torch.allclose(after[conv1], loaded[conv1], atol=1e-6)


def test_a_weights_file_of_another_model_is_refused_naming_its_keys(dataset, tmp_path):
    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    result = bionas("train", dataset, "--out", tmp_path / "run", "--backbone", "resnet34",
                    "--weights", weights, "--max-steps", "1", *TINY)  # fmt: skip
    assert result.exit_code == 1
    assert f"--weights {weights} does not fit backbone resnet34" in result.output
    assert "missing key(s) (e.g. layer1.2.conv1.weight" in result.output
    assert not (tmp_path / "run" / "model.pt").exists()

    torch.save([1, 2, 3], weights)
    result = bionas("train", dataset, "--out", tmp_path / "run2", "--backbone", "resnet18",
                    "--weights", weights, "--max-steps", "1", *TINY)  # fmt: skip
    assert result.exit_code == 1 and "is not a state dict" in result.output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--backbone", "resnet18", "--genotype", "manual"], "give one or the other"),
        (["--backbone", "resnet18", "--retrain-epochs", "1"], "a --backbone resnet18 run has none"),
        (["--backbone", "resnet19"], "unknown backbone 'resnet19': did you mean resnet18"),
        (["--weights", "{weights}"], "give --backbone too"),
        (["--backbone", "resnet18", "--ops", "conv-only"], "has no cells"),
    ],
)
def test_options_a_backbone_cannot_take_are_refused(dataset, tmp_path, options, message):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    options = [o.format(weights=weights) for o in options]
    result = bionas("train", dataset, "--out", tmp_path / "run", *options, *TINY)
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_an_image_size_the_backbone_cannot_take_is_one_line(dataset, tmp_path):
    options = [o for o in TINY if o not in ("--image-size", "32")]
    result = bionas("train", dataset, "--out", tmp_path / "run", "--backbone", "vit_b_16",
                    "--image-size", "8", *options)  # fmt: skip
    assert result.exit_code == 1 and "cannot take --image-size 8" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run" / "model.pt").exists()


def test_derive_refuses_a_backbone_run(trained):
    run, _ = trained("resnet18")
    result = bionas("derive", run)
    assert result.exit_code == 1
    assert "trained the backbone resnet18: there is no searched architecture" in result.output
    assert not (run / "genotype.json").exists()


def test_a_backbone_run_resumes_and_keeps_its_backbone(trained, dataset, tmp_path):
    run = tmp_path / "run"
    bionas("train", dataset, "--out", run, "--backbone", "resnet18", "--max-steps", "2", *TINY)
    resumed = bionas("train", dataset, "--out", run, "--resume", "--max-steps", "3")
    assert resumed.exit_code == 0, resumed.output
    assert [s["step"] for s in read_jsonl(run / "steps.jsonl")] == [1, 2, 3]
    other = bionas("train", dataset, "--out", run, "--resume", "--backbone", "resnet34")
    assert other.exit_code == 1 and "backbone='resnet34' (was 'resnet18')" in other.output


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_resnet18_exports_with_parity_and_names_its_backbone(trained, tmp_path, fmt):
    run, _ = trained("resnet18")
    result = bionas("export", run, "--format", fmt, "--out", tmp_path / fmt)
    assert result.exit_code == 0, result.output
    body = json.loads((tmp_path / fmt / "model.json").read_text())
    assert body["genotype"] == {"backbone": "resnet18"}
    assert body["parity"]["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("fusion", list(FUSIONS))
@pytest.mark.parametrize("meta", [(("dna_bin", 5), ("class", 3)), ()], ids=["meta", "image-only"])
def test_a_backbone_runs_with_every_fusion_or_is_refused_clearly(fusion, meta):
    """The fusion registry applies to backbones; one that hooks into cells refuses."""
    cfg = dict(num_classes=3, meta_cardinalities=meta, embed_dim=16, fusion=fusion)
    try:
        model = build_model(ModelConfig(backbone="shufflenet_v2_x0_5", **cfg))
    except ValueError as err:
        assert "backbone" in str(err) or "metadata" in str(err), err
        return
    images, indices = torch.randn(2, 3, 32, 32), torch.ones(2, len(meta), dtype=torch.long)
    logits = model(images, indices if meta else None)
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert model.image_encoder.backbone.conv1[0].weight.grad is not None


def test_a_run_written_before_backbones_loads_as_the_nas_encoder():
    cfg = ModelConfig(num_classes=3, channels=4, cells=3)
    stored = model_config_to_dict(cfg)
    for name in ("backbone", "image_size"):
        stored.pop(name)
    loaded = model_config_from_dict(stored)
    assert loaded.backbone is None and loaded.image_size is None
    assert build_model(loaded).theta is not None


def test_every_torchvision_family_has_a_known_classifier():
    """Each torchvision classifier name falls in a `FAMILIES` entry (where its head is)."""
    unlisted = [name for name in backbone_names() if family_of(name) is None]
    assert unlisted == [], f"add a FAMILIES entry for {unlisted}"
    assert {"resnet", "vgg", "densenet", "efficientnet", "convnext", "vit", "swin"} <= set(FAMILIES)


def test_downloads_are_refused_in_this_module():
    with pytest.raises(AssertionError, match="download was attempted"):
        torchvision.models.get_model("resnet18", weights="DEFAULT")
