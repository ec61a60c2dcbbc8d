"""`--compile` (trainer.step_options): the compiled forward trains as the eager one.

Inductor's C++ build takes minutes on a small CI machine, so one test compiles with
inductor (the backend `bionas train --compile on` uses) and the others with `aot_eager`,
which runs the same dynamo capture and AOT autograd graphs without generating code."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import make_tiny_dataset  # tests/datasets.py
from tiny_supernet import batches, supernet  # tests/tiny_supernet.py

from bionas.trainer import step_options
from bionas.trainer.config import Amp, TrainConfig
from bionas.trainer.logs import read_jsonl
from bionas.trainer.loop import train
from bionas.trainer.optimizers import build_optimizers
from bionas.trainer.step import train_step
from bionas.trainer.step_options import StepOptions, apply_step_options

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FP32 = Amp(False, torch.float32, "cpu")
CONFIG = TrainConfig(dataset_dir=".", run_dir=".")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def run_steps(options: StepOptions, steps, backend: str = "aot_eager"):
    """Losses of alternating w and θ steps, and the model after them."""
    model = supernet()
    opts = build_optimizers(model, CONFIG, FP32)
    apply_step_options(model, options, backend=backend)
    losses = [
        train_step(model, *batch, "w" if i % 2 == 0 else "theta", opts, FP32).loss
        for i, batch in enumerate(steps)
    ]
    return losses, model


def assert_same_training(a, b, atol=1e-5):
    (losses_a, model_a), (losses_b, model_b) = a, b
    assert losses_a == pytest.approx(losses_b, abs=atol)
    for (name, x), (_, y) in zip(model_a.state_dict().items(), model_b.state_dict().items(),
                                 strict=True):  # fmt: skip
        assert torch.allclose(x.float(), y.float(), atol=atol, rtol=1e-4), name


def compiled_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_compiled_w_and_theta_steps_give_the_eager_losses_and_parameters():
    steps = batches(6)
    before = compiled_graphs()
    compiled = run_steps(StepOptions(compile=True), steps)
    assert compiled_graphs() - before >= 2  # a w graph and a θ graph at least
    assert_same_training(compiled, run_steps(StepOptions(), steps))


@pytest.mark.slow  # ~1-4 min on 2 busy cores: inductor generates and builds C++
def test_inductor_compiled_w_step_gives_the_eager_loss_and_parameters():
    steps = batches(1)  # one graph pair (forward, backward) to generate
    compiled = run_steps(StepOptions(compile=True), steps, backend="inductor")
    assert_same_training(compiled, run_steps(StepOptions(), steps), atol=1e-4)


def test_compiled_forward_is_one_graph_once_the_prune_mask_is_copied():
    model = supernet()
    images, meta, _ = batches(1)[0]
    model(images, meta)  # the first forward copies the prune mask to the host
    explained = torch._dynamo.explain(model)(images, meta)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def test_compiled_model_keeps_the_plain_state_dict_keys():
    model = supernet()
    keys = list(model.state_dict())
    apply_step_options(model, StepOptions(compile=True), backend="aot_eager")
    assert list(model.state_dict()) == keys


def test_train_with_compile_on_checkpoints_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(step_options, "COMPILE_BACKEND", "aot_eager")
    dataset = make_tiny_dataset(tmp_path / "ds", n=32, shards_per_split=2)
    config = TrainConfig(dataset_dir=dataset, run_dir=tmp_path / "run", epochs=2, batch_size=8,
                         image_size=16, cells=1, channels=4, embed_dim=16, meta_embed_dim=4,
                         workers=0, shuffle_buffer=16, quiet=True, compile="on",
                         max_steps=2)  # fmt: skip
    assert train(config) == []
    stored = json.loads((config.run_dir / "config.json").read_text())
    assert stored["step_options"]["compile"] is True
    checkpoint = torch.load(config.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert not [k for k in checkpoint["model"] if "_orig_mod" in k]

    resumed = TrainConfig.from_dict({**config.__dict__, "max_steps": None, "resume": True})
    history = train(resumed)
    assert [h["epoch"] for h in history] == [1, 2]
    steps = read_jsonl(config.run_dir / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 9))  # 32 samples / 8, two epochs


def test_compile_on_is_refused_for_a_search_that_changes_path_every_step():
    with pytest.raises(ValueError, match="--compile on traces one network"):
        TrainConfig(dataset_dir=".", run_dir=".", search="random", compile="on")
