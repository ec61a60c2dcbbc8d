"""The whole model: any image size, θ bookkeeping, pruning, AMP, supernet == fixed net."""

from dataclasses import replace

import pytest
import torch

from bionas.trainer.cell import NONZERO_OPS
from bionas.trainer.fusion import FUSIONS
from bionas.trainer.metadata import MetadataEncoder
from bionas.trainer.model import BioAutoMLNAS, ModelConfig, build_model, fixed_from_supernet
from bionas.trainer.ops import OP_NAMES, ZERO

META = (("dna_bin", 50), ("class", 12))
TINY = ModelConfig(num_classes=5, meta_cardinalities=META, channels=4, cells=3, embed_dim=16)


def batch(size: int = 33, n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    meta = torch.stack([torch.randint(0, v, (n,), generator=g) for _, v in META], dim=1)
    return images, meta


@pytest.mark.parametrize("size", [224, 225, 199, 97])
def test_supernet_forward_backward_at_any_image_size(size):
    torch.manual_seed(0)
    model = build_model(TINY)
    logits = model(*batch(size))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    assert model.theta.grad is not None and model.theta.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.image_encoder.stem.parameters())


def test_alphas_sum_to_one_per_edge_and_are_named_by_cell_and_edge():
    model = build_model(TINY)
    alphas = model.alphas()
    assert list(alphas) == [f"cell{i}.{e}" for i in range(3) for e in ("e1", "e2a", "e2b")]
    for row in alphas.values():
        assert row.dtype == torch.float32 and not row.requires_grad and row.shape == (10,)
        assert abs(float(row.sum()) - 1.0) < 1e-6


def test_theta_is_one_small_fp32_registered_parameter_apart_from_the_weights():
    torch.manual_seed(0)
    model = build_model(replace(TINY, cells=5))
    theta = model.theta
    assert theta.shape == (5, 3, len(OP_NAMES)) and theta.dtype == torch.float32
    assert 5e-4 < float(theta.detach().std()) < 2e-3  # N(0, std 1e-3)
    assert "theta" in model.state_dict()
    assert model.arch_parameters() == [theta]
    weights = model.weight_parameters()
    assert all(p is not theta for p in weights)
    ids = {id(p) for p in weights} | {id(theta)}
    assert ids == {id(p) for p in model.parameters()}
    assert len(weights) + 1 == len(list(model.parameters()))


def set_theta(model: BioAutoMLNAS, chosen: dict[tuple[int, int], str], boost: float) -> None:
    """θ = 0 except `boost` on the chosen op of each (cell, edge row)."""
    with torch.no_grad():
        model.theta.zero_()
        for (cell, row), op in chosen.items():
            model.theta[cell, row, OP_NAMES.index(op)] = boost


def test_ops_below_the_threshold_are_not_executed_and_change_nothing():
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    # +16 on skip in cell 0's e1: the other ops get α ≈ 1e-7 < 1e-6 and are pruned.
    set_theta(model, {(0, 0): "skip"}, boost=16.0)
    assert model.pruned_op_count() == len(NONZERO_OPS) - 1
    calls = {n: 0 for n in NONZERO_OPS}
    for n, op in model.image_encoder.cells[0].e1.ops.items():
        op.register_forward_hook(lambda *_, n=n: calls.__setitem__(n, calls[n] + 1))
    images, meta = batch()
    pruned = model(images, meta)
    assert calls == {n: int(n == "skip") for n in NONZERO_OPS}

    # The same weights with threshold 0 compute every op, the negligible ones included.
    everything = build_model(replace(TINY, prune_threshold=0.0)).eval()
    everything.load_state_dict(model.state_dict())
    assert everything.pruned_op_count() == 0
    ran = []
    for op in everything.image_encoder.cells[0].e1.ops.values():
        op.register_forward_hook(lambda *_: ran.append(1))
    torch.testing.assert_close(pruned, everything(images, meta), atol=1e-5, rtol=0)
    assert len(ran) == len(NONZERO_OPS)


def test_mixed_ops_run_in_the_autocast_dtype_inside_the_model():
    model = build_model(TINY)
    seen = []
    model.image_encoder.cells[1].e2b.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(*batch())
    assert seen == [torch.bfloat16] and logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    assert model.theta.grad.dtype == torch.float32


def test_near_one_hot_supernet_equals_the_fixed_network_of_its_genotype():
    torch.manual_seed(0)
    model = build_model(TINY)
    model.train()
    model(*batch(seed=1))  # move BN running stats off their defaults
    g = torch.Generator().manual_seed(3)
    chosen = {
        (c, r): OP_NAMES[int(torch.randint(len(OP_NAMES), (1,), generator=g))]
        for c in range(3)
        for r in range(3)
    }
    chosen[(1, 1)] = ZERO  # at least one cut edge (x -> z2, z2 fed by z1), in a reduction cell
    set_theta(model, chosen, boost=30.0)
    genotype = model.genotype()
    assert [e.op for cell in genotype.cells for e in cell.edges] == list(chosen.values())
    fixed = fixed_from_supernet(model)
    assert fixed.arch_parameters() == [] and fixed.parameter_counts()["theta"] == 0
    model.eval(), fixed.eval()
    images, meta = batch(size=45)
    torch.testing.assert_close(fixed(images, meta), model(images, meta), atol=1e-5, rtol=0)


def test_model_genotype_keeps_the_op_whose_theta_is_largest_on_each_edge():
    torch.manual_seed(0)
    model = build_model(TINY)  # 3 cells: reductions at cells // 3 = 1 and 2 * cells // 3 = 2
    chosen = [  # (e1, e2a, e2b) per cell; no choice cuts z1 or z2 off from the cell's x
        ("dil_conv_5x5", ZERO, "se"),
        ("skip", "max_pool_3x3", ZERO),
        ("conv_1x1", "dw_sep_3x3", "avg_pool_3x3"),
    ]
    with torch.no_grad():  # a small lead on top of θ's N(0, 1e-3) start, not a one-hot
        for cell, ops in enumerate(chosen):
            for row, op in enumerate(ops):
                model.theta[cell, row, OP_NAMES.index(op)] += 0.05
    genotype = model.genotype()
    assert [[e.op for e in cell.edges] for cell in genotype.cells] == [list(c) for c in chosen]
    assert [[e.edge for e in cell.edges] for cell in genotype.cells] == [["e1", "e2a", "e2b"]] * 3
    assert [cell.reduction for cell in genotype.cells] == [False, True, True]
    for cell in genotype.cells:  # each edge records α = softmax of its θ row
        for row, edge in enumerate(cell.edges):
            expected = torch.softmax(model.theta[cell.index, row].detach().double(), dim=0)
            assert edge.alphas == pytest.approx(expected.tolist(), abs=1e-7)

    # the genotype follows θ as it is now, not as it was built
    with torch.no_grad():
        model.theta[..., OP_NAMES.index("conv_1x1")] += 0.1
    assert [e.op for cell in model.genotype().cells for e in cell.edges] == ["conv_1x1"] * 9


# a fusion that needs metadata refuses to be built without (tests/test_fusion.py)
IMAGE_ONLY = sorted(name for name, cls in FUSIONS.items() if not cls.needs_meta)


@pytest.mark.parametrize(
    ("fusion", "with_meta"),
    [(f, True) for f in sorted(FUSIONS)] + [(f, False) for f in IMAGE_ONLY],
)
def test_every_fusion_forward_and_backward(fusion, with_meta):
    torch.manual_seed(0)
    module = FUSIONS[fusion](16, 5, 0.2, with_meta=with_meta)
    img = torch.randn(3, 16, requires_grad=True)
    meta = torch.randn(3, 16, requires_grad=True) if with_meta else None
    logits = module(img, meta)
    assert logits.shape == (3, 5)
    logits.sum().backward()
    assert img.grad.abs().sum() > 0
    assert meta is None or meta.grad.abs().sum() > 0
    assert all(p.grad is not None for p in module.parameters())


@pytest.mark.parametrize("fusion", IMAGE_ONLY)
def test_model_without_metadata_fields_uses_the_image_only(fusion):
    model = build_model(replace(TINY, meta_cardinalities=(), fusion=fusion))
    assert model.metadata_encoder is None
    assert model.parameter_counts()["metadata_encoder"] == 0
    images, _ = batch()
    model(images, torch.zeros(2, 0, dtype=torch.long)).sum().backward()
    assert model(images).shape == (2, 5)


def test_metadata_encoder_with_no_fields_returns_zeros():
    encoder = MetadataEncoder((), embed_dim=8, out_dim=16)
    assert list(encoder.parameters()) == []
    out = encoder(torch.zeros(3, 0, dtype=torch.long))
    assert out.shape == (3, 16) and not out.any()


def test_metadata_encoder_with_two_fields_learns_an_unknown_embedding():
    encoder = MetadataEncoder(META, embed_dim=8, out_dim=16)
    assert [e.weight.shape for e in encoder.embeddings.values()] == [(50, 8), (12, 8)]
    meta = torch.tensor([[0, 3], [7, 0]])  # index 0 = unknown
    encoder(meta).sum().backward()
    for table in encoder.embeddings.values():
        assert table.weight.grad[0].abs().sum() > 0  # padding_idx not set
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        encoder(torch.zeros(2, 3, dtype=torch.long))


def test_parameter_counts_add_up():
    model = build_model(TINY)
    counts = model.parameter_counts()
    assert counts["theta"] == 3 * 3 * 10
    parts = counts["image_encoder"] + counts["metadata_encoder"] + counts["head"] + counts["theta"]
    assert counts["total"] == parts == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fusion": "bogus"}, "fusion"),
        ({"dilated": "bogus"}, "dilated"),
        ({"cells": 0}, "cells"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_invalid_model_config_is_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        replace(TINY, **change)


def test_model_with_metadata_fields_requires_metadata():
    with pytest.raises(ValueError, match="dna_bin"):
        build_model(TINY)(batch()[0])
