"""The prune mask: ops whose α is below the threshold are not run, and the mask reaches the
host only after θ changed, never on every forward (evaluation, predict, w steps)."""

import pytest
import torch

from bionas.trainer.model import ModelConfig, build_model
from bionas.trainer.ops import OP_NAMES

TINY = ModelConfig(num_classes=3, channels=4, cells=2, embed_dim=8)


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 24, 24, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def count_tolist(monkeypatch):
    """Counts Tensor.tolist calls: the mask's device -> host copy."""
    calls = []
    original = torch.Tensor.tolist

    def counting(self):
        calls.append(tuple(self.shape))
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    return calls


def test_forwards_with_unchanged_theta_copy_the_mask_to_the_host_once(count_tolist):
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    with torch.no_grad():
        for _ in range(4):
            model(images())
    assert count_tolist == [tuple(model.theta.shape)]


def test_a_theta_optimiser_step_refreshes_the_mask_and_a_pruned_op_is_not_run(count_tolist):
    torch.manual_seed(0)
    model = build_model(TINY)
    calls = []
    op = model.image_encoder.cells[0].e1.ops["dw_sep_5x5"]
    op.register_forward_hook(lambda *_: calls.append(1))
    model(images())
    assert calls == [1]
    # an optimiser step on θ that drives dw_sep_5x5's α on cell0.e1 below the threshold
    optimizer = torch.optim.SGD([model.theta], lr=1.0)
    model.theta.grad = torch.zeros_like(model.theta)
    model.theta.grad[0, 0, OP_NAMES.index("dw_sep_5x5")] = 50.0
    optimizer.step()
    model(images())
    model(images())
    assert calls == [1]  # pruned: not run in either forward
    assert len(count_tolist) == 2  # one copy before the step, one after it
    assert model.pruned_op_count() == 1


def test_loading_a_state_dict_refreshes_the_mask():
    torch.manual_seed(0)
    model = build_model(TINY)
    model(images())
    state = model.state_dict()
    state["theta"] = state["theta"].clone()
    state["theta"][1, 2, OP_NAMES.index("se")] = -60.0
    model.load_state_dict(state)
    assert model.prune_mask()[1][2][OP_NAMES.index("se")] is False
    assert sum(not a for cell in model.prune_mask() for edge in cell for a in edge) == 1


def test_a_theta_step_refreshes_the_mask_before_the_next_forward(count_tolist):
    from bionas.trainer.config import Amp, TrainConfig
    from bionas.trainer.session import build_optimizers
    from bionas.trainer.step import train_step

    torch.manual_seed(0)
    model = build_model(TINY)
    config = TrainConfig(dataset_dir="d", run_dir="r", lr_theta=0.5)
    opts = build_optimizers(model, config, Amp(False, torch.float32, "cpu"))
    labels = torch.tensor([0, 1])
    meta = torch.zeros(2, 0, dtype=torch.long)
    train_step(model, images(), meta, labels, "theta", opts, Amp(False, torch.float32, "cpu"))
    copies = len(count_tolist)
    assert copies == 2  # the forward's (θ as built), then the refresh after the step
    model(images())  # the next forward finds the mask current
    assert len(count_tolist) == copies


def test_a_theta_update_that_leaves_the_version_counter_still_refreshes_the_mask():
    """Fused optimisers and `.data` writes do not move θ's version counter."""
    from bionas.trainer.config import Amp
    from bionas.trainer.session import Optimizers
    from bionas.trainer.step import train_step

    class DataWriter(torch.optim.SGD):  # stands in for a fused optimiser
        def step(self, closure=None):
            for p in self.param_groups[0]["params"]:
                p.data[0, 0, OP_NAMES.index("se")] = -80.0

    torch.manual_seed(0)
    model = build_model(TINY)
    cpu = Amp(False, torch.float32, "cpu")
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    w = torch.optim.SGD(model.weight_parameters(), lr=0.0)
    opts = Optimizers(w, DataWriter([model.theta], lr=0.1), scaler, scaler)
    meta = torch.zeros(2, 0, dtype=torch.long)
    train_step(model, images(), meta, torch.tensor([0, 1]), "theta", opts, cpu)
    assert model.prune_mask()[0][0][OP_NAMES.index("se")] is False
