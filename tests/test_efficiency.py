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


def test_report_of_a_supernet_has_the_derived_network_beside_it():
    cfg = ModelConfig(num_classes=3, meta_cardinalities=(("dna_bin", 5),), channels=4, cells=3)
    model = build_model(cfg).eval()
    report = efficiency_report(model, 32, genotype=model.genotype(), latency_runs=2, cuda=False)
    supernet, derived = report["model"], report["derived"]
    assert supernet["parameters"] == model.parameter_counts()
    assert supernet["flops"] == 2 * supernet["macs"] > 0
    # one op per edge instead of nine computed candidates
    assert 0 < derived["flops"] < supernet["flops"]
    assert derived["parameters"]["theta"] == 0
    assert supernet["size_bytes"] == state_dict_bytes(model)
    assert report["latency_ms"]["cpu"]["median_ms"] > 0
    assert report["latency_ms"]["cuda"] is None
    assert "FLOPs = 2 x MACs" in report["conventions"]["flops"]
