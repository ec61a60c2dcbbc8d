"""Mixed ops and cells: eqs. (7)-(9) by hand, pruning, AMP dtype, fixed cells."""

import pytest
import torch

from bionas.trainer.cell import NONZERO_OPS, FixedCell, MixedOp, SearchCell
from bionas.trainer.genotype import CellGenotype, EdgeChoice
from bionas.trainer.ops import OP_NAMES, ZERO

C = 4
ALL_ACTIVE = [True] * len(OP_NAMES)


def random_alphas(rows: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(rows, len(OP_NAMES), generator=g), dim=-1)


def by_hand(edge: MixedOp, x: torch.Tensor, alpha_row: torch.Tensor) -> torch.Tensor:
    """Σ_k α_k o_k(x), calling each op module ourselves (the zero op adds nothing)."""
    return sum(alpha_row[OP_NAMES.index(n)] * edge.ops[n](x) for n in NONZERO_OPS)


def test_mixed_op_holds_every_op_but_zero():
    assert list(MixedOp(C, 1).ops) == [n for n in OP_NAMES if n != ZERO]


@pytest.mark.parametrize("reduction", [False, True])
def test_search_cell_computes_equations_7_to_9(reduction):
    torch.manual_seed(0)
    cell = SearchCell(C, reduction).eval()
    x = torch.randn(2, C, 7, 7)
    alphas = random_alphas(3)
    z1 = by_hand(cell.e1, x, alphas[0])  # eq. (7)
    z2 = by_hand(cell.e2a, x, alphas[1]) + by_hand(cell.e2b, z1, alphas[2])  # eq. (8)
    expected = cell.out(torch.cat([z1, z2], dim=1))  # eq. (9) + 1x1 conv
    out = cell(x, alphas, [ALL_ACTIVE] * 3)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    side = 4 if reduction else 7
    assert out.shape == (2, 2 * C if reduction else C, side, side)


def test_pruned_ops_are_not_executed_and_the_rest_still_sum():
    torch.manual_seed(0)
    edge = MixedOp(C, 2).eval()
    calls = {n: 0 for n in NONZERO_OPS}
    for n in NONZERO_OPS:
        edge.ops[n].register_forward_hook(lambda *_, n=n: calls.__setitem__(n, calls[n] + 1))
    x = torch.randn(2, C, 9, 9)
    alpha = random_alphas(1)[0]
    active = [n not in ("dil_conv_5x5", "se", "skip") for n in OP_NAMES]
    out = edge(x, alpha, active)
    assert calls == {n: int(n not in ("dil_conv_5x5", "se", "skip")) for n in NONZERO_OPS}
    kept = sum(alpha[k] * edge.ops[n](x) for k, n in enumerate(OP_NAMES) if active[k] and n != ZERO)
    torch.testing.assert_close(out, kept, atol=1e-6, rtol=0)


@pytest.mark.parametrize("stride", [1, 2])
def test_an_edge_with_every_op_pruned_outputs_zeros_of_the_right_shape(stride):
    edge = MixedOp(C, stride)
    calls = []
    for op in edge.ops.values():
        op.register_forward_hook(lambda *_: calls.append(1))
    out = edge(torch.randn(2, C, 7, 7), random_alphas(1)[0], [False] * len(OP_NAMES))
    assert out.shape == (2, C, 7 if stride == 1 else 4, 7 if stride == 1 else 4)
    assert not out.any() and not calls


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_mixed_op_output_keeps_the_autocast_dtype(input_dtype):
    edge = MixedOp(C, 1)
    x = torch.randn(2, C, 8, 8, dtype=input_dtype)
    alpha = random_alphas(1)[0]  # fp32, as the model computes it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = edge(x, alpha, ALL_ACTIVE)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()


def test_mixed_op_gradient_reaches_alpha():
    edge = MixedOp(C, 1)
    alpha = random_alphas(1)[0].requires_grad_()
    edge(torch.randn(2, C, 6, 6), alpha, ALL_ACTIVE).square().sum().backward()
    nonzero = [OP_NAMES.index(n) for n in NONZERO_OPS]
    assert (alpha.grad[nonzero] != 0).all()
    assert alpha.grad[OP_NAMES.index(ZERO)] == 0


def cell_genotype(ops: tuple[str, str, str], reduction: bool) -> CellGenotype:
    one_hot = lambda op: tuple(float(n == op) for n in OP_NAMES)  # noqa: E731
    edges = tuple(
        EdgeChoice(e, op, one_hot(op)) for e, op in zip(("e1", "e2a", "e2b"), ops, strict=True)
    )
    return CellGenotype(index=0, reduction=reduction, edges=edges)


@pytest.mark.parametrize("reduction", [False, True])
def test_fixed_cell_with_a_cut_edge_adds_nothing_from_it(reduction):
    torch.manual_seed(0)
    cell = FixedCell(C, cell_genotype((ZERO, "dw_sep_3x3", "skip"), reduction)).eval()
    assert len(cell.e1.ops) == 0  # a cut edge holds no op and no weights
    x = torch.randn(2, C, 7, 7)
    z2 = cell.e2a.ops["dw_sep_3x3"](x)  # z1 = 0 and skip(0) = 0 (identity or linear FR)
    expected = cell.out(torch.cat([torch.zeros_like(z2), z2], dim=1))
    torch.testing.assert_close(cell(x), expected, atol=1e-6, rtol=0)


def test_fixed_cell_uses_the_supernets_module_names():
    fixed = FixedCell(C, cell_genotype(("se", "max_pool_3x3", "conv_1x1"), True))
    assert set(fixed.state_dict()) <= set(SearchCell(C, True, affine=True).state_dict())
    assert any(k.startswith("e1.ops.se.") for k in fixed.state_dict())
    # searching without BN affine (the default): the fixed cell's extra keys are exactly the
    # γ/β of the BatchNorms inside its ops (e1's SE reduce, e2b's 1x1 conv)
    extra = set(fixed.state_dict()) - set(SearchCell(C, True).state_dict())
    assert extra == {
        "e1.ops.se.reduce.bn.weight", "e1.ops.se.reduce.bn.bias",
        "e2b.ops.conv_1x1.1.weight", "e2b.ops.conv_1x1.1.bias",
    }  # fmt: skip


def test_searching_cell_ops_have_batchnorm_without_affine_and_the_output_conv_keeps_it():
    cell = SearchCell(C, False)
    op_bns = [m for m in cell.e1.ops.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert op_bns and all(m.weight is None and m.bias is None for m in op_bns)
    assert cell.out[1].weight is not None  # 1x1 output conv's BN: not weighted by α
    fixed = FixedCell(C, cell_genotype(("dw_sep_3x3", "skip", "conv_1x1"), False))
    assert fixed.e1.ops["dw_sep_3x3"][2].weight is not None
