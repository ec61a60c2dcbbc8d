"""Adaptive batch size: the search over a probe, and the probe that restores the model."""

from __future__ import annotations

import pytest
import torch

from bionas.errors import BionasError
from bionas.trainer.batch_size import (
    CPU_DEFAULT_BATCH,
    choose_batch_size,
    memory_fraction,
    restoring_probe,
    search_batch_size,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class Probe:
    """fits(bs) iff bs <= limit; records what was tried."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tried: list[int] = []

    def __call__(self, batch_size: int) -> bool:
        self.tried.append(batch_size)
        return batch_size <= self.limit


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(200, 200), (100, 96), (129, 128), (511, 504), (40, 40), (32, 32), (10_000, 512)],
)
def test_search_returns_the_largest_multiple_of_8_that_fits(limit, expected):
    probe = Probe(limit)
    assert search_batch_size(probe) == expected
    assert len(probe.tried) <= 10
    assert all(32 <= b <= 512 for b in probe.tried)


def test_all_fit_gives_512_after_doubling_only():
    probe = Probe(10_000)
    assert search_batch_size(probe) == 512
    assert probe.tried == [32, 64, 128, 256, 512]


def test_nothing_fits_is_a_clear_error():
    with pytest.raises(BionasError, match="batch size 32 does not fit.*--image-size"):
        search_batch_size(Probe(16))


def test_the_search_is_capped_by_the_data():
    probe = Probe(10_000)
    assert choose_batch_size(None, torch.device("cuda"), probe, samples_per_rank=300) == 300
    assert max(probe.tried) == 300


def test_cpu_auto_uses_the_documented_default_and_a_fixed_size_is_kept():
    assert choose_batch_size(None, torch.device("cpu"), None, 10_000) == CPU_DEFAULT_BATCH == 32
    assert choose_batch_size(48, torch.device("cuda"), Probe(0), 10_000) == 48


def test_memory_fraction_emulates_a_12_gb_card():
    assert memory_fraction(12, 80 * 2**30) == pytest.approx(0.15)
    assert memory_fraction(200, 80 * 2**30) == 1.0


def tiny_model():
    from bionas.trainer.model import ModelConfig, build_model

    return build_model(ModelConfig(num_classes=3, meta_cardinalities=(("dna_bin", 5),),
                                   channels=4, cells=3, embed_dim=16, meta_embed_dim=4))  # fmt: skip


def test_probe_runs_a_real_w_and_theta_step_and_restores_the_model():
    from bionas.trainer.config import Amp, TrainConfig
    from bionas.trainer.optimizers import build_optimizers
    from bionas.trainer.step import train_step

    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(dataset_dir=".", run_dir=".")
    amp = Amp(False, torch.float32, "cpu")
    steps = []

    def run_step(batch_size: int) -> None:
        opts = build_optimizers(model, config, amp)
        images = torch.randn(batch_size, 3, 32, 32)
        meta = torch.ones(batch_size, 1, dtype=torch.long)
        labels = torch.zeros(batch_size, dtype=torch.long)
        for kind in ("w", "theta"):
            steps.append(train_step(model, images, meta, labels, kind, opts, amp))

    assert restoring_probe(model, run_step)(4) is True
    assert len(steps) == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_probe_maps_out_of_memory_to_false_and_restores_the_model():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def run_step(batch_size: int) -> None:
        with torch.no_grad():
            model.theta.add_(1.0)  # a half-done step
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    fits = restoring_probe(model, run_step)
    assert fits(64) is False
    assert torch.equal(model.theta, before["theta"])
    assert search_batch_size(lambda b: b <= 64 or fits(b)) == 64
