"""The prune mask: an op whose α is below the threshold adds nothing and gets no gradient
from the θ step that pruned it on (α is zeroed on the device, no host sync), and stops
being launched once the host copies the mask, which it does only where it waits for the
device anyway: the loop's window reads, the first forward, a load, entering eval mode."""

import copy
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.trainer import loop, step_guard
from bionas.trainer.config import Amp, TrainConfig
from bionas.trainer.model import ModelConfig, build_model
from bionas.trainer.ops import OP_NAMES
from bionas.trainer.optimizers import Optimizers
from bionas.trainer.run import load_trained
from bionas.trainer.step import train_step

TINY = ModelConfig(num_classes=3, channels=4, cells=2, embed_dim=8, dropout=0.0)
CPU = Amp(False, torch.float32, "cpu")
SEP5 = OP_NAMES.index("dw_sep_5x5")


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 24, 24, generator=torch.Generator().manual_seed(0))


def no_meta(n: int = 2) -> torch.Tensor:
    return torch.zeros(n, 0, dtype=torch.long)


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


class ThetaWriter(torch.optim.SGD):
    """A θ "optimiser" that sets chosen logits through `.data`, as a fused optimiser
    would update them: θ's version counter does not move."""

    def __init__(self, params, logits: dict[tuple[int, int, int], float]):
        super().__init__(params, lr=0.0)
        self.logits = logits

    def step(self, closure=None):
        for p in self.param_groups[0]["params"]:
            for index, value in self.logits.items():
                p.data[index] = value


def theta_step(model, logits: dict[tuple[int, int, int], float]) -> None:
    """One real `train_step` of kind θ whose update sets `logits`."""
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    w = torch.optim.SGD(model.weight_parameters(), lr=0.0)
    opts = Optimizers(w, ThetaWriter([model.theta], logits), scaler, scaler)
    train_step(model, images(), no_meta(), torch.tensor([0, 1]), "theta", opts, CPU)


def count_calls(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_forwards_with_unchanged_theta_copy_the_mask_to_the_host_once(count_tolist):
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    with torch.no_grad():
        for _ in range(4):
            model(images())
    assert count_tolist == [tuple(model.theta.shape)]


def test_an_op_a_theta_step_prunes_adds_exactly_nothing_at_once_and_stops_running_at_the_read(
    count_tolist,
):
    torch.manual_seed(0)
    model = build_model(TINY)
    edge = model.image_encoder.cells[0].e1
    calls = count_calls(edge.ops["dw_sep_5x5"])
    model(images(), no_meta())
    assert calls == [1] and len(count_tolist) == 1
    theta_step(model, {(0, 0, SEP5): -80.0})  # α(dw_sep_5x5) on cell0.e1 ~ 1e-35
    assert len(calls) == 2  # the θ step's own forward, before its update
    assert model.pruned_op_count() == 1
    model.requires_grad_(True)  # the θ step froze w
    removed = copy.deepcopy(model)  # the reference: the same network without the op
    del removed.image_encoder.cells[0].e1.ops["dw_sep_5x5"]

    logits = model(images(), no_meta())  # before any read: launched, weighted 0
    assert len(calls) == 3 and len(count_tolist) == 1  # the θ step copied nothing
    assert torch.equal(logits, removed(images(), no_meta()))
    logits.sum().backward()
    grads = [p.grad for p in edge.ops["dw_sep_5x5"].parameters()]
    assert grads and all(g is not None and not g.any() for g in grads)

    assert model.sync_prune_mask()[0][0][SEP5] is False  # the read's copy
    assert len(count_tolist) == 2
    assert torch.equal(model(images(), no_meta()), logits)
    assert len(calls) == 3  # no longer launched


def test_an_op_whose_alpha_climbs_back_runs_from_the_next_read_and_in_eval_at_once():
    """The one approximation (trainer/model.py): until the read, the revived op is
    skipped; its α had to start below the threshold, so the lost term is ~1e-6."""
    torch.manual_seed(0)
    model = build_model(TINY)
    calls = count_calls(model.image_encoder.cells[0].e1.ops["dw_sep_5x5"])
    with torch.no_grad():
        model.theta[0, 0, SEP5] = -80.0
    model(images(), no_meta())
    assert calls == []
    theta_step(model, {(0, 0, SEP5): 0.0})  # back among the live ops
    model(images(), no_meta())
    assert calls == []  # skipped until the next read
    model.eval()
    model(images(), no_meta())
    assert calls == [1]  # evaluation launches exactly the ops α keeps
    model.train()
    model(images(), no_meta())
    assert calls == [1, 1]


def test_flops_counted_right_after_a_theta_step_leave_out_the_op_it_pruned():
    from bionas.trainer.efficiency import count_flops

    torch.manual_seed(0)
    model = build_model(TINY)
    model(images(), no_meta())
    theta_step(model, {(0, 0, SEP5): -80.0})
    removed = copy.deepcopy(model)
    del removed.image_encoder.cells[0].e1.ops["dw_sep_5x5"]
    counted = count_flops(model, images(1), no_meta(1)).flops  # eval mode: an exact copy
    assert counted == count_flops(removed, images(1), no_meta(1)).flops
    assert model.training  # count_flops puts the mode back


def test_loading_a_state_dict_refreshes_the_launched_ops_at_the_next_forward():
    torch.manual_seed(0)
    model = build_model(TINY)
    calls = count_calls(model.image_encoder.cells[1].e2b.ops["se"])
    model(images(), no_meta())
    state = model.state_dict()
    state["theta"] = state["theta"].clone()
    state["theta"][1, 2, OP_NAMES.index("se")] = -60.0
    model.load_state_dict(state)
    model(images(), no_meta())  # in train mode: a load is not a θ step, no lag
    assert calls == [1]
    launched = torch.tensor(model.sync_prune_mask())
    assert torch.equal(launched, model.prune_mask()) and int((~launched).sum()) == 1


def test_a_path_forward_copies_no_mask_from_the_device(count_tolist):
    torch.manual_seed(0)
    model = build_model(TINY)
    path = [("skip", "conv_1x1", "zero")] * TINY.cells
    model(images(), no_meta(), path=path)
    assert count_tolist == [tuple(model.theta.shape)]  # the path's own one-hot, on the CPU


def test_theta_steps_do_not_make_a_compiled_forward_recompile():
    """torch.compile guards on the launch list: only a read that changes it recompiles."""
    from torch._dynamo.testing import CompileCounter

    torch.manual_seed(0)
    model = build_model(TINY)
    model.sync_prune_mask()  # the first copy, outside the compiled code
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    compiled(images(), no_meta())
    frames = counter.frame_count
    optimizer = torch.optim.SGD([model.theta], lr=0.1)  # moves θ's version counter
    for _ in range(3):
        model.theta.grad = torch.randn_like(model.theta)
        optimizer.step()
        model.mark_prune_mask_stale()
        compiled(images(), no_meta())
    assert counter.frame_count == frames
    model.sync_prune_mask()  # θ moved, but no op crossed the threshold: the same list
    compiled(images(), no_meta())
    assert counter.frame_count == frames


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_theta_steps_and_the_forwards_after_them_never_wait_for_the_device():
    torch.manual_seed(0)
    model = build_model(TINY).cuda()
    x, meta = images().cuda(), no_meta().cuda()
    optimizer = torch.optim.SGD([model.theta], lr=1.0)
    model.sync_prune_mask()  # the one copy, before the steps
    torch.cuda.set_sync_debug_mode("error")  # any device -> host wait raises
    try:
        for _ in range(3):
            model(x, meta).sum().backward()
            model.theta.grad[0, 0, SEP5] = 50.0  # prunes dw_sep_5x5 on cell0.e1
            optimizer.step()
            model.mark_prune_mask_stale()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert model.pruned_op_count() == 1


# --- the training loop --------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("ds"), n=96, shards_per_split=3)


class MaskCopies:
    """The mask copies made in trainer/model.py, by the loop's step in progress."""

    def __init__(self, monkeypatch):
        self.step = 0
        self.by_step: Counter = Counter()
        original, real_step = torch.Tensor.tolist, step_guard.train_step

        def tolist(tensor):
            if Path(sys._getframe(1).f_code.co_filename).name == "model.py":
                self.by_step[self.step] += 1
            return original(tensor)

        def counted_step(*args, **kwargs):  # copies after step k began belong to step k
            self.step += 1
            return real_step(*args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "tolist", tolist)
        monkeypatch.setattr(step_guard, "train_step", counted_step)


@pytest.mark.usefixtures("torch_single_thread")
@pytest.mark.parametrize(
    ("warmup_epochs", "copies"),
    [
        (0, {1: 1, 5: 1, 10: 1, 12: 1}),  # the first forward, then the reads at 5, 10, 12
        (1, {1: 1}),  # w steps only: θ never moves, no read copies
    ],
)
def test_a_run_copies_the_mask_only_at_the_first_forward_and_the_reads(
    dataset, tmp_path, monkeypatch, warmup_epochs, copies
):
    """12 steps (96 samples, batch 8), --log-every 5: reads after steps 5, 10 and 12 (the
    epoch's end, followed by validation, which finds the copy current)."""
    config = TrainConfig(dataset_dir=dataset, run_dir=tmp_path / "run", epochs=1,
                         batch_size=8, image_size=32, cells=3, channels=4, embed_dim=16,
                         meta_embed_dim=4, workers=0, shuffle_buffer=16, quiet=True,
                         log_every=5, warmup_epochs=warmup_epochs)  # fmt: skip
    counted = MaskCopies(monkeypatch)
    (record,) = loop.train(config)
    assert dict(counted.by_step) == copies
    assert record["val_samples"] > 0

    counted.by_step.clear()  # predict's model: loaded, eval mode, one copy for all batches
    model = load_trained(config.run_dir).model
    meta = torch.zeros(2, len(model.cfg.meta_cardinalities), dtype=torch.long)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 3, 32, 32), meta)
    assert sum(counted.by_step.values()) == 1


def test_a_theta_update_that_leaves_the_version_counter_is_still_copied_at_the_read():
    torch.manual_seed(0)
    model = build_model(TINY)
    model(images(), no_meta())
    version = model.theta._version
    theta_step(model, {(0, 0, OP_NAMES.index("se")): -80.0})
    assert model.theta._version == version
    assert model.sync_prune_mask()[0][0][OP_NAMES.index("se")] is False


def test_a_fixed_network_has_nothing_to_copy(count_tolist):
    fixed = build_model(replace(TINY, genotype=build_model(TINY).genotype()))
    fixed(images(), no_meta())
    assert fixed.sync_prune_mask() == [] and count_tolist == []
