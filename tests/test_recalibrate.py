"""BatchNorm recalibration: running statistics re-estimated on given batches, nothing else."""

import torch
from torch import nn

from bionas.trainer.recalibrate import recalibrate_batchnorm


class BnOnly(nn.Module):
    """images -> BN(images); takes (images, meta) like the model."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3, momentum=0.1)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.bn(images) * self.scale


def test_running_statistics_become_the_average_over_every_batch_and_weights_stay():
    torch.manual_seed(0)
    model = BnOnly()
    model.bn.running_mean.fill_(5.0)  # stale statistics, as inherited from a supernet
    batches = [torch.randn(4, 3, 5, 5) * (i + 1) + i for i in range(3)]
    seen = recalibrate_batchnorm(model, ((b, torch.zeros(4, 0)) for b in batches), "cpu")
    assert seen == 12
    # cumulative average with equal batch sizes: the mean of the per-batch statistics
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    variances = torch.stack([b.var(dim=(0, 2, 3), unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(model.bn.running_mean, means)
    torch.testing.assert_close(model.bn.running_var, variances)
    assert model.bn.momentum == 0.1 and not model.training
    assert model.scale.item() == 1.0 and model.scale.grad is None


def test_no_batch_or_a_failing_reader_leaves_the_inherited_statistics():
    torch.manual_seed(0)
    model = BnOnly()
    model.bn.running_mean.fill_(5.0)
    model.bn.running_var.fill_(2.0)
    assert recalibrate_batchnorm(model, iter([]), "cpu") == 0

    def failing():
        yield torch.randn(4, 3, 5, 5), torch.zeros(4, 0)
        raise OSError("shard vanished")

    try:
        recalibrate_batchnorm(model, failing(), "cpu")
    except OSError:
        pass
    else:
        raise AssertionError("the reader's error must reach the caller")
    assert model.bn.running_mean.tolist() == [5.0] * 3
    assert model.bn.running_var.tolist() == [2.0] * 3
    assert model.bn.momentum == 0.1 and not model.training
