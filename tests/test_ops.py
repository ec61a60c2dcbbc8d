"""The ten primitives: shapes at both strides on odd and even sizes, and their equations."""

import pytest
import torch
import torch.nn.functional as F

from bionas.trainer.ops import (
    OP_NAMES,
    PRIMITIVES,
    SYMBOLS,
    ZERO,
    FactorizedReduce,
    SqueezeExcitation,
    Zero,
)

C = 4


def ceil_half(n: int) -> int:
    return -(-n // 2)


def test_registry_holds_the_papers_ten_primitives_in_a_fixed_order():
    assert OP_NAMES == (
        "dw_sep_3x3",
        "dw_sep_5x5",
        "dil_conv_3x3",
        "dil_conv_5x5",
        "conv_1x1",
        "se",
        "avg_pool_3x3",
        "max_pool_3x3",
        "skip",
        "zero",
    )
    assert set(SYMBOLS) == set(OP_NAMES)


# Every registered op with the default dilated variant, plus the separable dilated convs.
VARIANTS = [(n, "full") for n in OP_NAMES] + [
    (n, "separable") for n in OP_NAMES if n.startswith("dil_conv")
]


@pytest.mark.parametrize("size", [(7, 7), (8, 8), (15, 15), (16, 16), (7, 16)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize(("name", "dilated"), VARIANTS)
def test_every_primitive_keeps_channels_and_gives_ceil_size_forward_and_backward(
    name, dilated, stride, size
):
    torch.manual_seed(0)
    op = PRIMITIVES[name](C, stride, dilated=dilated)
    x = torch.randn(2, C, *size, requires_grad=True)
    y = op(x)
    expected = size if stride == 1 else (ceil_half(size[0]), ceil_half(size[1]))
    assert y.shape == (2, C, *expected)
    if name == ZERO:
        assert not y.any()
        return
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in op.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"


@pytest.mark.parametrize("size", [7, 15, 16])
def test_factorized_reduce_concatenates_strided_and_shifted_halves_on_odd_sizes(size):
    torch.manual_seed(0)
    fr = FactorizedReduce(C).eval()  # eval BN with fresh stats: y = x / sqrt(1 + eps)
    x = torch.randn(2, C, size, size)
    y = fr(x)
    scale = (1 + fr.bn.eps) ** -0.5
    straight = F.conv2d(x[:, :, ::2, ::2], fr.conv_a.weight)
    # Shift by one pixel; on odd sizes the last strided position falls on the zero padding.
    shifted_input = F.pad(x[:, :, 1::2, 1::2], (0, size % 2, 0, size % 2))
    shifted = F.conv2d(shifted_input, fr.conv_b.weight)
    torch.testing.assert_close(y, torch.cat([straight, shifted], dim=1) * scale)
    assert y.shape[-1] == ceil_half(size)


def test_factorized_reduce_splits_odd_channel_counts():
    assert FactorizedReduce(5)(torch.randn(1, 5, 7, 7)).shape == (1, 5, 4, 4)


@pytest.mark.parametrize("stride", [1, 2])
def test_zero_op_returns_zeros_of_the_downsampled_shape(stride):
    x = torch.randn(2, C, 9, 10)
    y = Zero(stride)(x)
    assert y.shape == (2, C, 9 if stride == 1 else 5, 10 if stride == 1 else 5)
    assert not y.any() and y.dtype == x.dtype


def test_se_gates_each_channel_of_x_as_in_eq_4():
    torch.manual_seed(0)
    se = SqueezeExcitation(8, stride=1)
    x = torch.randn(2, 8, 5, 5)
    g = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean(dim=(2, 3))))))
    torch.testing.assert_close(se(x), x * g[:, :, None, None])
    assert se.fc1.out_features == 2  # C / r with r = 4


def test_se_at_stride_2_gates_the_factorized_reduction():
    torch.manual_seed(0)
    se = SqueezeExcitation(8, stride=2).eval()
    x = torch.randn(2, 8, 7, 7)
    reduced = se.reduce(x)
    g = torch.sigmoid(se.fc2(torch.relu(se.fc1(reduced.mean(dim=(2, 3))))))
    torch.testing.assert_close(se(x), reduced * g[:, :, None, None])


def test_average_pool_counts_only_real_pixels_at_the_border():
    x = torch.full((1, C, 6, 6), 3.0)
    torch.testing.assert_close(PRIMITIVES["avg_pool_3x3"](C, 1)(x), x)


def test_skip_is_identity_at_stride_1():
    x = torch.randn(2, C, 6, 6)
    assert torch.equal(PRIMITIVES["skip"](C, 1)(x), x)


def test_full_dilated_conv_is_a_full_kxk_conv_with_dilation_2():
    full = PRIMITIVES["dil_conv_5x5"](16, 1, dilated="full")
    separable = PRIMITIVES["dil_conv_5x5"](16, 1, dilated="separable")
    conv = full[0]
    assert conv.weight.shape == (16, 16, 5, 5) and conv.dilation == (2, 2)
    assert sum(p.numel() for p in separable.parameters()) < sum(
        p.numel() for p in full.parameters()
    )


def test_unknown_dilated_variant_and_stride_are_rejected():
    with pytest.raises(ValueError, match="dilated"):
        PRIMITIVES["dil_conv_3x3"](C, 1, dilated="bogus")
    with pytest.raises(ValueError, match="stride"):
        PRIMITIVES["conv_1x1"](C, 3)
