"""The ten primitive operations of the search space (paper Sec. III-A.1, eqs. 1-5).

`PRIMITIVES` maps a name to a factory `(C, stride, *, dilated, affine) -> nn.Module`; its
order is the order of the architecture logits θ on every edge. `affine=False` builds the
ops' BatchNorm without learnable scale and shift: the searching supernet's ops use it (as
DARTS does; the paper is silent), so an op's α cannot trade off against its BN's γ; the
fixed network of a genotype uses affine BN. Every op maps C channels to C
channels; at stride 2 every op returns spatial size ceil(H/2) x ceil(W/2), for odd and
even inputs alike, so the outputs of a mixed op can always be summed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DILATED_VARIANTS = ("full", "separable")
SE_REDUCTION = 4  # r in eq. (4)


def _conv_bn_relu(convs: list[nn.Module], C: int, affine: bool = True) -> nn.Sequential:
    return nn.Sequential(*convs, nn.BatchNorm2d(C, affine=affine), nn.ReLU(inplace=False))


def dw_separable(
    C: int, kernel: int, stride: int, dilation: int = 1, *, affine: bool = True
) -> nn.Sequential:
    """Depthwise kxk (stride s) -> pointwise 1x1 -> BN -> ReLU (eq. 1)."""
    padding = (kernel // 2) * dilation
    depthwise = nn.Conv2d(C, C, kernel, stride, padding, dilation=dilation, groups=C, bias=False)
    pointwise = nn.Conv2d(C, C, 1, bias=False)
    return _conv_bn_relu([depthwise, pointwise], C, affine)


def dilated_conv(
    C: int, kernel: int, stride: int, *, dilated: str = "full", affine: bool = True
) -> nn.Sequential:
    """Conv kxk with dilation 2 -> BN -> ReLU (eq. 2); `dilated="separable"` is the cheap
    depthwise-separable variant (a full 5x5 costs ~18x a separable one at C=16)."""
    if dilated == "separable":
        return dw_separable(C, kernel, stride, dilation=2, affine=affine)
    if dilated != "full":
        raise ValueError(f"dilated must be one of {DILATED_VARIANTS}, got {dilated!r}")
    conv = nn.Conv2d(C, C, kernel, stride, padding=(kernel // 2) * 2, dilation=2, bias=False)
    return _conv_bn_relu([conv], C, affine)


def conv_1x1(C: int, stride: int, *, affine: bool = True) -> nn.Sequential:
    """1x1 conv with stride s -> BN -> ReLU (eq. 3); at stride 2 the size is ceil(H/2)."""
    return _conv_bn_relu([nn.Conv2d(C, C, 1, stride, bias=False)], C, affine)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two strided 1x1 convs, one on x and one on x shifted by
    one pixel, concatenated on channels, then BN.

    DARTS shifts with `x[:, :, 1:, 1:]`, which loses a row on odd sizes (7x7 -> 4 vs 3
    and the concat fails); padding one zero row/column on the far side first keeps both
    halves at ceil(H/2) x ceil(W/2).
    """

    def __init__(self, C: int, *, affine: bool = True) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(C, C // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(C, C - C // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C, affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_a(x), self.conv_b(shifted)], dim=1))


class SqueezeExcitation(nn.Module):
    """g = σ(W2 δ(W1 GAP(x))), y = x ⊙ g (eq. 4).

    At stride 2 the input is first downsampled by a FactorizedReduce (the same learned
    downsampling as the skip op), so SE stays "skip with channel gating" at both strides.
    """

    def __init__(
        self, C: int, stride: int, reduction: int = SE_REDUCTION, *, affine: bool = True
    ) -> None:
        super().__init__()
        hidden = max(C // reduction, 1)
        self.reduce = FactorizedReduce(C, affine=affine) if stride == 2 else nn.Identity()
        self.fc1 = nn.Linear(C, hidden)  # W1
        self.fc2 = nn.Linear(hidden, C)  # W2

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduce(x)
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * g[:, :, None, None].to(x.dtype)


class Zero(nn.Module):
    """y = 0, of the downsampled shape at stride 2 (never computed inside a mixed op)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        s = self.stride
        return x.new_zeros(n, c, -(-h // s), -(-w // s))


def _check_stride(stride: int) -> int:
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    return stride


def skip(C: int, stride: int, *, affine: bool = True) -> nn.Module:
    """Identity at stride 1; factorized reduce at stride 2."""
    return nn.Identity() if stride == 1 else FactorizedReduce(C, affine=affine)


def avg_pool_3x3(stride: int) -> nn.Module:
    # count_include_pad=False: |N| in eq. (5) counts only real pixels at the borders.
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


Factory = Callable[..., nn.Module]

# Order matters: it is the order of θ's last axis. Keywords `dilated` and `affine` are
# accepted by all (ops without BatchNorm ignore `affine`).
PRIMITIVES: dict[str, Factory] = {
    "dw_sep_3x3": lambda C, s, *, dilated="full", affine=True: dw_separable(
        C, 3, _check_stride(s), affine=affine
    ),
    "dw_sep_5x5": lambda C, s, *, dilated="full", affine=True: dw_separable(
        C, 5, _check_stride(s), affine=affine
    ),
    "dil_conv_3x3": lambda C, s, *, dilated="full", affine=True: dilated_conv(
        C, 3, _check_stride(s), dilated=dilated, affine=affine
    ),
    "dil_conv_5x5": lambda C, s, *, dilated="full", affine=True: dilated_conv(
        C, 5, _check_stride(s), dilated=dilated, affine=affine
    ),
    "conv_1x1": lambda C, s, *, dilated="full", affine=True: conv_1x1(
        C, _check_stride(s), affine=affine
    ),
    "se": lambda C, s, *, dilated="full", affine=True: SqueezeExcitation(
        C, _check_stride(s), affine=affine
    ),
    "avg_pool_3x3": lambda C, s, *, dilated="full", affine=True: avg_pool_3x3(_check_stride(s)),
    "max_pool_3x3": lambda C, s, *, dilated="full", affine=True: nn.MaxPool2d(
        3, stride=_check_stride(s), padding=1
    ),
    "skip": lambda C, s, *, dilated="full", affine=True: skip(C, _check_stride(s), affine=affine),
    "zero": lambda C, s, *, dilated="full", affine=True: Zero(_check_stride(s)),
}

OP_NAMES: tuple[str, ...] = tuple(PRIMITIVES)
ZERO = "zero"
ZERO_INDEX = OP_NAMES.index(ZERO)

# The primitive sets of the paper's Table I: "Full (10 ops)" (E009), "Reduced (6 ops)"
# (E010) and "Conv-only (4 ops)" (E011); the paper does not list the reduced ones, so these
# are ours. They nest (conv-only ⊂ reduced ⊂ full), so each step of the ablation removes one
# kind of op, and every set keeps `zero`, the op through which the search cuts an edge (the
# paper's pruning, Sec. III-A.1). `reduced` keeps one op per role: zero (cut), skip
# (identity), max pool (parameter-free spatial summary), dw-separable 3x3 (cheap spatial
# filter), dilated 3x3 (wide receptive field) and 1x1 conv (channel mixing); it drops the
# 5x5 kernels (the costliest ops; their 3x3 siblings stay), SE and average pooling (a second
# pool). `conv-only` keeps the learned filters of `reduced` and zero: no parameter-free
# path (skip, pool), so every kept edge convolves. Each set lists its ops in `OP_NAMES`
# order; θ keeps one column per op of `OP_NAMES` and the model masks the others out.
OP_SETS: dict[str, tuple[str, ...]] = {
    "full": OP_NAMES,
    "reduced": ("dw_sep_3x3", "dil_conv_3x3", "conv_1x1", "max_pool_3x3", "skip", "zero"),
    "conv-only": ("dw_sep_3x3", "dil_conv_3x3", "conv_1x1", "zero"),
}

# The paper's symbols (Sec. III-A.1, Fig. 2), for rendering.
SYMBOLS: dict[str, str] = {
    "dw_sep_3x3": "D3",
    "dw_sep_5x5": "D5",
    "dil_conv_3x3": "L3",
    "dil_conv_5x5": "L5",
    "conv_1x1": "S",
    "se": "SE",
    "avg_pool_3x3": "Pa",
    "max_pool_3x3": "Pm",
    "skip": "SK",
    "zero": "Z",
}
