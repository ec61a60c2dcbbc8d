"""θ's optimiser: Adam with DARTS' betas (0.5, 0.999) unless told otherwise, checked by the
size of its second step against Adam's update written out by hand."""

import math

import pytest
import torch

from bionas.trainer.config import Amp, TrainConfig
from bionas.trainer.model import ModelConfig, build_model
from bionas.trainer.optimizers import build_optimizers

CPU = Amp(False, torch.float32, "cpu")


def adam_two_steps(theta0, g1, g2, lr, beta1, beta2=0.999, eps=1e-8):
    m = v = 0.0
    theta = theta0
    for t, g in enumerate((g1, g2), start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        theta -= lr * (m / (1 - beta1**t)) / (math.sqrt(v / (1 - beta2**t)) + eps)
    return theta


@pytest.mark.parametrize(("betas", "beta1"), [(None, 0.5), ((0.9, 0.999), 0.9)])
def test_the_second_theta_step_follows_adam_with_the_configured_beta1(betas, beta1):
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=3, channels=4, cells=1, embed_dim=8))
    options = {"theta_betas": betas} if betas else {}
    config = TrainConfig(dataset_dir="d", run_dir="r", lr_theta=0.1, weight_decay_theta=0.0,
                         **options)  # fmt: skip
    theta = build_optimizers(model, config, CPU).theta
    theta0 = float(model.theta.detach()[0, 0, 0])
    for g in (1.0, -3.0):  # the gradient flips sign: beta1 decides how far step 2 goes back
        model.theta.grad = torch.full_like(model.theta, g)
        theta.step()
    expected = adam_two_steps(theta0, 1.0, -3.0, 0.1, beta1)
    assert float(model.theta.detach()[0, 0, 0]) == pytest.approx(expected, abs=1e-6)
    other = adam_two_steps(theta0, 1.0, -3.0, 0.1, 0.9 if beta1 == 0.5 else 0.5)
    assert abs(expected - other) > 1e-3  # the two betas are told apart by this test
