"""FLOPs, MACs, parameters, size and latency (bionas.trainer.efficiency)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bionas.trainer.efficiency import (
    count_flops,
    efficiency_report,
    median_latency_ms,
    parameter_count,
    state_dict_bytes,
)
from bionas.trainer.model import ModelConfig, build_model
from bionas.trainer.ops import OP_NAMES

pytestmark = pytest.mark.usefixtures("torch_single_thread")  # tests/conftest.py


@pytest.mark.parametrize("stride, h_out", [(1, 16), (2, 8)])
def test_conv_flops_are_twice_the_hand_counted_multiply_adds(stride, h_out):
    c_in, c_out, k = 3, 8, 3
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=1)
    counted = count_flops(conv, torch.zeros(1, c_in, 16, 16))
    macs = c_out * c_in * k * k * h_out * h_out
    assert counted.macs == macs
    assert counted.flops == 2 * macs


def test_linear_and_a_stack_add_up():
    linear = nn.Linear(64, 10)
    assert count_flops(linear, torch.zeros(1, 64)).macs == 64 * 10
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 7))
    counted = count_flops(net, torch.zeros(1, 3, 5, 5))
    assert counted.macs == 4 * 3 * 5 * 5 + 100 * 7
    assert counted.flops == 2 * counted.macs
    assert sum(counted.by_operator.values()) == counted.flops


def test_parameter_count_and_fp32_size():
    conv = nn.Conv2d(3, 8, 3)
    assert parameter_count(conv) == {"total": 8 * 3 * 9 + 8}
    assert state_dict_bytes(conv) == (8 * 3 * 9 + 8) * 4
    bn = nn.BatchNorm2d(4)  # weight, bias, running mean/var (fp32) + num_batches_tracked (int64)
    assert state_dict_bytes(bn) == 4 * 4 * 4 + 8
    assert state_dict_bytes(conv.half()) == (8 * 3 * 9 + 8) * 4  # counted as fp32


def test_latency_is_positive_and_leaves_the_module_mode_alone():
    net = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5)).train()
    ms = median_latency_ms(net, (torch.zeros(1, 8),), runs=3, warmup=1)
    assert ms > 0
    assert net.training


def bn_state_bytes(model: nn.Module) -> int:
    """BatchNorm2d buffers, by hand: running mean and var (fp32, C each) + num_batches_tracked
    (int64), whether or not the layer has an affine weight and bias."""
    return sum(2 * m.num_features * 4 + 8 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_report_of_a_supernet_has_the_derived_network_beside_it():
    cfg = ModelConfig(num_classes=3, meta_cardinalities=(("dna_bin", 5),), channels=4, cells=3)
    model = build_model(cfg).eval()
    with torch.no_grad():  # θ picks conv_1x1 on every edge, so the derived net is known
        model.theta.zero_()
        model.theta[..., OP_NAMES.index("conv_1x1")] = 10.0
    report = efficiency_report(model, 32, genotype=model.genotype(), latency_runs=2, cuda=False)
    supernet, derived = report["model"], report["derived"]

    # by hand from the layer shapes (embed 256, metadata embedding 32; SPEC §6)
    theta = 3 * 3 * 10  # cells x edges x ops
    metadata = 5 * 32 + (32 * 256 + 256) + (256 * 256 + 256)  # embedding, 2-layer MLP
    head = (512 * 256 + 256) + (256 * 3 + 3)  # concat[img, meta] -> 256 -> classes

    def fixed_cell(c: int, c_out: int) -> int:  # 3 edges of conv 1x1 + BN, output conv + BN
        return 3 * (c * c + 2 * c) + 2 * c * c_out + 2 * c_out

    stem = 3 * 9 * 4 + 2 * 4 + 4 * 9 * 4 + 2 * 4  # two 3x3 convs (no bias) + BN, 4 channels
    # reductions at cells 1 and 2 (cells // 3, 2 * cells // 3): widths 4 -> 4 -> 8 -> 16
    cells = fixed_cell(4, 4) + fixed_cell(4, 8) + fixed_cell(8, 16)
    image = stem + cells + 16 * 256 + 256  # + the projection to the 256-d embedding
    assert derived["parameters"] == {
        "image_encoder": image,
        "metadata_encoder": metadata,
        "head": head,
        "theta": 0,
        "total": image + metadata + head,
    }
    assert image + metadata + head == 211_911
    # + 14 BatchNorms' running mean and var (fp32) and step count (int64): 2 in the stem
    # (4 + 4 channels), 4 per cell (3 x 4 + 4, 3 x 4 + 8, 3 x 8 + 16 channels)
    assert derived["size_bytes"] == 4 * 211_911 + 4 * 2 * (8 + 16 + 20 + 40) + 8 * 14

    total = sum(p.numel() for p in model.parameters())
    assert supernet["parameters"] == {
        "image_encoder": total - metadata - head - theta,
        "metadata_encoder": metadata,
        "head": head,
        "theta": theta,
        "total": total,
    }
    assert supernet["size_bytes"] == 4 * total + bn_state_bytes(model)
    assert supernet["size_mb"] == supernet["size_bytes"] / 1e6
    assert supernet["flops"] == 2 * supernet["macs"] > 0
    # one op per edge instead of nine computed candidates
    assert 0 < derived["flops"] < supernet["flops"]
    assert report["latency_ms"]["cpu"]["median_ms"] > 0
    assert report["latency_ms"]["cuda"] is None
    assert "FLOPs = 2 x MACs" in report["conventions"]["flops"]


def test_attention_through_the_fused_inference_kernel_is_counted():
    """nn.MultiheadAttention in eval + no_grad takes a fused kernel the FLOP counter does not
    see (a torchvision ViT lost ~36 % of its FLOPs; this layer counted 0)."""
    import torch
    from torch import nn

    from bionas.trainer.efficiency import count_flops

    layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)
    counted = count_flops(layer, torch.randn(2, 10, 64))
    # 20 tokens through the in-projection (3 x 64x64), out-projection and the 64-128-64 MLP
    assert counted.macs >= 2 * 10 * (3 * 64 * 64 + 64 * 64 + 2 * 64 * 128)
    assert torch.backends.mha.get_fastpath_enabled()  # put back as it was
