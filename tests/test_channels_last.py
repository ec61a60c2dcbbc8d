"""`--channels-last` (trainer.step_options): NHWC model and images train as NCHW ones."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from datasets import make_tiny_dataset  # tests/datasets.py
from test_compile_step import assert_same_training, run_steps
from tiny_supernet import batches, supernet  # tests/tiny_supernet.py

from bionas.trainer import loop
from bionas.trainer.config import TrainConfig
from bionas.trainer.logs import read_jsonl
from bionas.trainer.loop import train
from bionas.trainer.optimizers import LazyRowsAdamW
from bionas.trainer.session import start_session
from bionas.trainer.step_options import StepOptions, apply_step_options, resolve_step_options

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_channels_last_steps_give_the_contiguous_losses_and_parameters():
    steps = batches(6)
    assert_same_training(
        run_steps(StepOptions(channels_last=True), steps), run_steps(StepOptions(), steps)
    )


def test_channels_last_puts_conv_weights_and_the_images_in_nhwc():
    model = supernet()
    apply_step_options(model, StepOptions(channels_last=True))
    stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    stem.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    images, meta, _ = batches(1)[0]
    model(images, meta)  # contiguous NCHW in, as the loader gives them
    assert stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert not seen[0].is_contiguous()


@pytest.mark.parametrize(
    ("compile_", "channels_last", "expected"),
    [("auto", "auto", (False, True)), ("on", "off", (True, False)), ("off", "on", (False, True))],
)
def test_auto_is_channels_last_without_compile_on_cpu(compile_, channels_last, expected):
    config = TrainConfig(
        dataset_dir=".", run_dir=".", compile=compile_, channels_last=channels_last
    )
    options = resolve_step_options(config, supernet(), torch.device("cpu"))
    assert (options.compile, options.channels_last) == expected
    assert options.fused_optimizers


def test_unknown_step_option_mode_is_refused():
    with pytest.raises(ValueError, match="--channels-last must be one of"):
        TrainConfig(dataset_dir=".", run_dir=".", channels_last="yes")


def state_layout_mismatches(model, opts) -> list[str]:
    """The optimiser state tensors (w's dense and lazy parts, θ's) of their parameter's
    shape whose strides differ from it."""
    names = {p: name for name, p in model.named_parameters()}
    parts = [opts.w.dense, opts.w.sparse] if isinstance(opts.w, LazyRowsAdamW) else [opts.w]
    return [
        f"{names[p]}.{key}"
        for optimizer in [*parts, opts.theta]
        for p, state in optimizer.state.items()
        for key, value in state.items()
        if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride()
    ]


@pytest.mark.parametrize(("before", "after"), [("off", "on"), ("on", "off")])
def test_a_resume_with_the_other_layout_lays_the_optimiser_state_out_like_the_parameters(
    tmp_path, monkeypatch, before, after
):
    """CUDA's fused Adam refuses states whose strides differ from their parameter's, and
    load_state_dict keeps the checkpoint's: a resume across channels_last (or across
    devices, whose `auto` differs) would fail at its first step."""
    dataset = make_tiny_dataset(tmp_path / "ds", n=32, image_size=16, shards_per_split=1)
    config = TrainConfig(dataset_dir=dataset, run_dir=tmp_path / "run", epochs=1, batch_size=8,
                         image_size=16, cells=1, channels=4, embed_dim=8, meta_embed_dim=4,
                         workers=0, shuffle_buffer=8, quiet=True, sparse_embeddings="on",
                         channels_last=before, max_steps=2)  # fmt: skip
    train(config)
    started = {}

    def keeping(*args, **kwargs):
        session = start_session(*args, **kwargs)
        started["session"] = session
        started["mismatches"] = state_layout_mismatches(session[1], session[3])  # as restored
        return session

    monkeypatch.setattr(loop, "start_session", keeping)
    train(replace(config, resume=True, channels_last=after, max_steps=4))

    _, model, _, opts, _ = started["session"]
    stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.weight.is_contiguous(memory_format=torch.channels_last) == (after == "on")
    assert isinstance(opts.w, LazyRowsAdamW) and opts.w.sparse.state  # both parts checked
    assert started["mismatches"] == [] and state_layout_mismatches(model, opts) == []
    steps = read_jsonl(config.run_dir / "steps.jsonl")
    assert [s["step"] for s in steps][-2:] == [3, 4]  # trained on after the resume
