"""`--channels-last` (trainer.step_options): NHWC model and images train as NCHW ones."""

from __future__ import annotations

import pytest
import torch
from test_compile_step import assert_same_training, batches, run_steps, supernet

from bionas.trainer.config import TrainConfig
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
