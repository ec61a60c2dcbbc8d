"""Every fusion of `bionas.trainer.fusion.FUSIONS` (`bionas train --fusion NAME`): it
classifies, learns from both modalities, uses what it claims to use, refuses what it
cannot do, trains and evaluates through the CLI, and exports with parity."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.cli import main
from bionas.commands import train as train_command
from bionas.trainer.config import TrainConfig
from bionas.trainer.encoder import reduction_flags
from bionas.trainer.fusion import FUSIONS
from bionas.trainer.genotype import BUILTIN_CELLS, uniform_genotype
from bionas.trainer.model import ModelConfig, build_model
from bionas.trainer.run import load_trained

META = (("dna_bin", 7), ("class", 3))
TINY = ModelConfig(num_classes=5, meta_cardinalities=META, channels=4, cells=3, embed_dim=16,
                   meta_embed_dim=4)  # fmt: skip
NAMES = sorted(FUSIONS)
NEED_META = sorted(name for name, cls in FUSIONS.items() if cls.needs_meta)
TOKENS = sorted(name for name, cls in FUSIONS.items() if cls.uses_tokens)


def fixed(fusion: str, cells: int = TINY.cells, **change) -> ModelConfig:
    """TINY as a fixed network of the built-in `manual` cell (no θ; what is exported)."""
    genotype = uniform_genotype(BUILTIN_CELLS["manual"], reduction_flags(cells))
    return replace(TINY, fusion=fusion, cells=cells, genotype=genotype, **change)


def inputs(batch: int = 2, seed: int = 0, size: int = 36) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    meta = torch.stack([torch.randint(0, n, (batch,), generator=g) for _, n in META], dim=1)
    return images, meta


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter away from its init (FiLM and heads start at exact zeros or ones)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("fusion", NAMES)
def test_every_fusion_classifies_and_trains_the_image_and_metadata_encoders(fusion):
    torch.manual_seed(0)
    model = build_model(replace(TINY, fusion=fusion))
    logits = model(*inputs(3))
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    assert model.theta.grad.abs().sum() > 0
    assert model.image_encoder.stem[0].weight.grad.abs().sum() > 0
    assert model.image_encoder.proj.weight.grad.abs().sum() > 0
    for table in model.metadata_encoder.embeddings.values():
        assert table.weight.grad.abs().sum() > 0
    unused = [n for n, p in model.fusion.named_parameters() if p.grad is None or not p.grad.any()]
    assert unused == []


@pytest.mark.parametrize("fusion", NAMES)
def test_changing_one_samples_metadata_changes_its_logits_and_no_others(fusion):
    model = randomise(build_model(fixed(fusion))).eval()
    images, meta = inputs(3)
    changed = meta.clone()
    changed[0, 0] = (meta[0, 0] + 1) % META[0][1]  # another dna_bin for sample 0 only
    with torch.no_grad():
        before, after = model(images, meta), model(images, changed)
    assert (after[0] - before[0]).abs().max() > 1e-4
    torch.testing.assert_close(after[1:], before[1:], rtol=0, atol=1e-6)  # no batch mixing


@pytest.mark.parametrize("fusion", TOKENS)
def test_token_fusions_read_single_image_positions_and_single_metadata_fields(fusion):
    module = randomise(FUSIONS[fusion](16, 5, 0.0)).eval()
    g = torch.Generator().manual_seed(0)
    img_tokens, meta_tokens = torch.randn(2, 9, 16, generator=g), torch.randn(2, 2, 16, generator=g)
    img, meta = img_tokens.mean(1), torch.randn(2, 16, generator=g)
    step = torch.randn(16, generator=g)  # not a constant: LayerNorm would remove that
    moved = img_tokens.clone()
    moved[:, 0] += step
    moved[:, 1] -= step  # the same mean: a pooled-only fusion could not tell
    other_field = meta_tokens.clone()
    other_field[:, 1] += step
    with torch.no_grad():
        base = module(img, meta, img_tokens, meta_tokens)
        assert (module(img, meta, moved, meta_tokens) - base).abs().max() > 1e-4
        assert (module(img, meta, img_tokens, other_field) - base).abs().max() > 1e-4


def test_metadata_tokens_are_the_fields_terms_of_the_encoders_first_layer():
    encoder = build_model(TINY).metadata_encoder
    meta = inputs(4)[1]
    vector, tokens = encoder.forward_with_tokens(meta)
    assert tokens.shape == (4, 2, 16)
    torch.testing.assert_close(vector, encoder(meta))
    first = encoder.mlp[0]
    torch.testing.assert_close(encoder.mlp[1:](tokens.sum(1) + first.bias), vector)


def test_image_tokens_average_to_the_image_embedding():
    encoder = build_model(fixed("transformer")).image_encoder.eval()
    with torch.no_grad():
        features = encoder.forward_features(inputs(2)[0])
        tokens = encoder.tokens(features)
        assert tokens.shape == (2, features.shape[2] * features.shape[3], 16)
        torch.testing.assert_close(tokens.mean(1), encoder(inputs(2)[0]))


def test_progressive_fusion_steers_every_cell_by_the_metadata():
    model = build_model(fixed("progressive"))
    assert [layer.out_features for layer in model.fusion.film] == [
        2 * c for c in model.image_encoder.stage_channels
    ]
    assert all(not layer.weight.any() for layer in model.fusion.film)  # starts as concat
    model = randomise(model).eval()
    images, meta = inputs(2)
    seen = []
    for row in (meta, meta.flip(0)):
        with torch.no_grad():
            meta_vec, _ = model._encode_metadata(row)
            seen.append(model._encode_image(images, (), meta_vec)[0])
    assert (seen[0] - seen[1]).abs().max() > 1e-4  # the image embedding itself moved


def test_ensemble_mixes_an_image_head_and_a_metadata_head_by_a_learned_weight():
    module = FUSIONS["ensemble"](16, 5, 0.0).eval()
    img, meta = torch.randn(2, 16), torch.randn(2, 16)
    with torch.no_grad():
        module.image_weight_logit.fill_(1.0)
        w = torch.sigmoid(torch.tensor(1.0))
        expected = w * module.image_head(img) + (1 - w) * module.meta_head(meta)
        torch.testing.assert_close(module(img, meta), expected)


def test_concat_and_gated_keep_the_state_dict_keys_of_existing_runs():
    head = {f"fusion.head.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")}
    for fusion, extra in (("concat", set()), ("gated", {"fusion.gate.weight", "fusion.gate.bias"})):
        keys = {k for k in build_model(replace(TINY, fusion=fusion)).state_dict() if "fusion" in k}
        assert keys == head | extra


@pytest.mark.parametrize("fusion", NEED_META)
def test_a_fusion_that_needs_metadata_refuses_an_image_only_model(fusion):
    with pytest.raises(ValueError, match="no metadata fields") as refused:
        replace(TINY, fusion=fusion, meta_cardinalities=())
    assert "(concat, gated, transformer)" in str(refused.value)
    with pytest.raises(ValueError, match="--meta-fields none"):
        TrainConfig(dataset_dir="ds", run_dir="run", fusion=fusion, meta_fields=())


def test_image_only_transformer_attends_over_the_image_tokens():
    model = randomise(build_model(fixed("transformer", meta_cardinalities=()))).eval()
    assert model.fusion.token_type.shape == (1, 16)
    assert model(inputs(2)[0]).shape == (2, 5)


def test_a_backbone_refuses_progressive_and_gives_token_fusions_its_embedding():
    with pytest.raises(ValueError, match="a backbone has no cells"):
        replace(TINY, fusion="progressive", backbone="resnet18")
    model = build_model(replace(TINY, fusion="cross_attention", backbone="resnet18")).eval()
    assert model(*inputs(2, size=32)).shape == (2, 5)


def test_train_offers_every_registered_fusion():
    (option,) = [p for p in train_command.command.params if p.name == "fusion"]
    assert list(option.type.choices) == list(FUSIONS)
    for name in FUSIONS:
        assert name in option.help


# --- through the CLI and the exporters ----------------------------------------------

CLI_TINY = ["--device", "cpu", "--image-size", "32", "--cells", "3", "--channels", "4",
            "--batch-size", "8", "--workers", "0", "--shuffle-buffer", "16", "--quiet"]  # fmt: skip


def bionas(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("fusion") / "ds", n=32, shards_per_split=2)


@pytest.mark.usefixtures("torch_single_thread")
@pytest.mark.parametrize("fusion", NAMES)
def test_every_fusion_trains_two_steps_and_evaluates_through_the_cli(fusion, dataset, tmp_path):
    run = tmp_path / fusion
    result = bionas("train", dataset, "--out", run, "--max-steps", "2", "--fusion", fusion,
                    *CLI_TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_trained(run).model_config.fusion == fusion
    result = bionas("evaluate", run, "--split", "val", "--latency-runs", "1", "--bn-batches",
                    "1", "--batch-size", "16")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((run / "eval/val/metrics.json").read_text())
    assert 0.0 <= report["metrics"]["all"]["accuracy"] <= 1.0


@pytest.mark.usefixtures("torch_single_thread")
def test_a_resumed_run_keeps_its_fusion_and_refuses_another(dataset, tmp_path):
    run = tmp_path / "run"
    base = ("train", dataset, "--out", run)
    assert bionas(*base, "--max-steps", "1", "--fusion", "progressive", *CLI_TINY).exit_code == 0
    refused = bionas(*base, "--resume", "--fusion", "concat")
    assert refused.exit_code == 1 and "fusion='concat' (was 'progressive')" in refused.output
    assert bionas(*base, "--resume", "--max-steps", "2", "--quiet").exit_code == 0
    assert load_trained(run).model_config.fusion == "progressive"


def test_train_refuses_an_image_only_bilinear_run_in_one_line(dataset, tmp_path):
    result = bionas("train", dataset, "--out", tmp_path / "run", "--fusion", "bilinear",
                    "--meta-fields", "none", *CLI_TINY)  # fmt: skip
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "fusion bilinear combines the image with metadata" in result.output


class EveryFusion(torch.nn.Module):
    """The exportable network of every fusion (and the image-only transformer) side by side,
    so that one export checks them all (the ONNX exporter takes seconds per graph)."""

    def __init__(self, nets: list[torch.nn.Module], with_meta: list[bool]) -> None:
        super().__init__()
        self.nets, self.with_meta = torch.nn.ModuleList(nets), with_meta

    def forward(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [
                net(images, meta) if m else net(images)
                for net, m in zip(self.nets, self.with_meta, strict=True)
            ]
        )


@pytest.mark.usefixtures("torch_single_thread")
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_every_fusion_exports_with_parity_at_any_batch_size(fmt, tmp_path):
    from bionas.trainer.export_formats import (
        exportable,
        model_runner,
        onnx_bytes,
        torchscript_bytes,
    )

    # one cell keeps the graph small (the primitives' export is test_export's); the
    # progressive FiLM and the feature-map tokens are still inside the exported graph
    configs = [fixed(name, cells=1) for name in NAMES]
    configs.append(fixed("transformer", cells=1, meta_cardinalities=()))
    models = [randomise(build_model(cfg)).eval() for cfg in configs]
    with_meta = [bool(cfg.meta_cardinalities) for cfg in configs]
    net = EveryFusion([exportable(m) for m in models], with_meta).eval()
    example = inputs(2, seed=0)
    data = torchscript_bytes(net, example) if fmt == "torchscript" else onnx_bytes(net, example, None)[0]  # fmt: skip
    (tmp_path / "model").write_bytes(data)
    run_exported = model_runner(fmt, tmp_path / "model", with_meta=True)
    for batch in (1, 5):
        images, meta = inputs(batch, seed=batch)
        with torch.inference_mode():
            exported = run_exported(images, meta)
            for i, (model, m) in enumerate(zip(models, with_meta, strict=True)):
                eager = model(images, meta) if m else model(images)
                assert exported[i].shape == (batch, 5)
                assert (exported[i] - eager).abs().max() <= 1e-4, configs[i].fusion
