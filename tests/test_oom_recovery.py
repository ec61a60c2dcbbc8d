"""Running out of memory mid-training (an injected torch.OutOfMemoryError on CPU): the run
halves its batch and goes on from the last good step without losing a sample; `--resume
--batch-size N`; and the adaptive batch size probe's margin and forked RNG."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.cli import main
from bionas.errors import BionasError
from bionas.trainer import loop, step_guard
from bionas.trainer.batch_size import memory_budget, restoring_probe, search_batch_size
from bionas.trainer.checkpoint import TrainState
from bionas.trainer.config import Amp, TrainConfig
from bionas.trainer.data import StreamPosition, train_spec
from bionas.trainer.distributed import Dist
from bionas.trainer.logs import read_jsonl
from bionas.trainer.model import BioAutoMLNAS, ModelConfig, build_model
from bionas.trainer.optimizers import build_optimizers
from bionas.trainer.rebatch import fresh_scaler, rescale_progress
from bionas.trainer.session import start_session
from bionas.trainer.step import StepOutOfMemory, train_step

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TRAIN = 256  # train samples: 4 batches of 64, 8 of 32
TRAIN_KEYS = {f"TR{i:05d}" for i in range(TRAIN)}  # tests/datasets.py's processids


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("oom") / "ds"
    return make_tiny_dataset(root, n=TRAIN, n_val=8, image_size=16, shards_per_split=2)


def config_for(dataset, tmp_path, **changes) -> TrainConfig:
    base = TrainConfig(dataset_dir=dataset, run_dir=tmp_path / "run", epochs=1, batch_size=64,
                       image_size=16, cells=2, channels=4, embed_dim=8, meta_embed_dim=4,
                       workers=0, shuffle_buffer=16, quiet=True)  # fmt: skip
    return replace(base, **changes)


class Recorder:
    """Keeps the processids of every batch a train step was started on, and makes the
    training forward of step `fail_at` (1-based, counted over this test's runs) raise
    torch.OutOfMemoryError as CUDA would."""

    def __init__(self, monkeypatch, fail_at: int | None = None) -> None:
        self.batches: list[tuple[str, ...]] = []
        self.failed: list[int] = []  # indices into `batches`
        forward, to_device = BioAutoMLNAS.forward, step_guard.to_device

        def recording_to_device(batch, device):
            if batch.keys[0] in TRAIN_KEYS:  # not validation's
                self.batches.append(batch.keys)
            return to_device(batch, device)

        def failing_forward(model, images, meta, *args, **kwargs):
            if model.training and len(self.batches) == fail_at and not self.failed:
                self.failed.append(len(self.batches) - 1)
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return forward(model, images, meta, *args, **kwargs)

        monkeypatch.setattr(step_guard, "to_device", recording_to_device)
        monkeypatch.setattr(BioAutoMLNAS, "forward", failing_forward)

    def trained(self) -> Counter:
        """How often each sample was trained on (the failed step's batch not counted)."""
        keys = Counter()
        for i, batch in enumerate(self.batches):
            if i not in self.failed:
                keys.update(batch)
        return keys


def checkpoint_of(config: TrainConfig) -> dict:
    return torch.load(config.run_dir / "checkpoints" / "last.pt", weights_only=True)


@pytest.mark.parametrize(
    ("fail_at", "kinds"),
    [
        (3, ["w", "theta", "w", "theta", "w", "theta"]),  # a w step fails: its 64 -> 2 x 32
        (4, ["w", "theta", "w", "w", "theta"]),  # a θ step: batch index 3 -> 6, a w step
    ],
)
def test_an_out_of_memory_step_halves_the_batch_and_trains_every_sample_once(
    dataset, tmp_path, monkeypatch, caplog, fail_at, kinds
):
    config = config_for(dataset, tmp_path)
    recorder = Recorder(monkeypatch, fail_at=fail_at)
    with caplog.at_level(logging.WARNING):
        (epoch,) = loop.train(config)

    assert recorder.failed == [fail_at - 1]
    assert recorder.trained() == Counter(TRAIN_KEYS)  # each train sample exactly once
    steps = read_jsonl(config.run_dir / "steps.jsonl")
    assert [s["samples"] for s in steps] == [64] * (fail_at - 1) + [32] * (len(kinds) - fail_at + 1)
    assert sum(s["samples"] for s in steps) == TRAIN
    assert [s["kind"] for s in steps] == kinds
    assert [s["step"] for s in steps] == list(range(1, len(kinds) + 1))
    assert epoch["steps"] == len(kinds)

    (event,) = read_jsonl(config.run_dir / "events.jsonl")
    assert event == {"event": "batch_size", "reason": "out_of_memory", "epoch": 1,
                     "step": fail_at - 1, "from": 64, "to": 32}  # fmt: skip
    run_config = json.loads((config.run_dir / "config.json").read_text())
    assert run_config["batch_size"] == 32 and run_config["train_config"]["batch_size"] == 32
    checkpoint = checkpoint_of(config)
    assert checkpoint["batch_size"] == 32 and checkpoint["state"]["events"] == [event]
    assert checkpoint["config"]["batch_size"] == 32  # what `--resume` reads its options from
    assert "batch size 64 -> 32" in caplog.text


def test_a_heldout_theta_step_that_runs_out_of_memory_reads_its_samples_again(
    dataset, tmp_path, monkeypatch
):
    config = config_for(dataset, tmp_path, arch_data="heldout", heldout_fraction=0.5)
    recorder = Recorder(monkeypatch, fail_at=2)  # the first θ step, on held-out shard samples
    loop.train(config)
    steps = read_jsonl(config.run_dir / "steps.jsonl")
    assert [s["kind"] for s in steps] == ["w", "theta"] * 3  # the pending θ step stays next
    assert [s["samples"] for s in steps] == [64] + [32] * 5
    assert recorder.failed == [1]
    batches = recorder.batches  # w, θ (failed), then θ, w, θ, w, θ at 32
    w_keys = [k for batch in [batches[0], *batches[3::2]] for k in batch]
    assert len(w_keys) == len(set(w_keys)) == TRAIN // 2  # the w shard, each sample once
    assert batches[2] + batches[4] == batches[1]  # θ's stream re-read the failed batch


def test_the_halved_size_is_what_a_resume_continues_with(dataset, tmp_path, monkeypatch):
    config = config_for(dataset, tmp_path, epochs=2)
    Recorder(monkeypatch, fail_at=2)
    history = loop.train(replace(config, max_steps=4))  # stopped mid-epoch, after the OOM
    assert history == [] and checkpoint_of(config)["batch_size"] == 32
    history = loop.train(replace(config, resume=True, batch_size=None))
    assert [h["epoch"] for h in history] == [1, 2]
    steps = read_jsonl(config.run_dir / "steps.jsonl")
    assert sum(s["samples"] for s in steps if s["epoch"] == 1) == TRAIN
    assert {s["samples"] for s in steps if s["epoch"] == 2} == {32}
    assert len(read_jsonl(config.run_dir / "events.jsonl")) == 1  # the OOM, kept by the trim


def test_out_of_memory_at_the_smallest_batch_stops_with_what_to_do(dataset, tmp_path, monkeypatch):
    config = config_for(dataset, tmp_path, batch_size=32)
    Recorder(monkeypatch, fail_at=2)
    with pytest.raises(BionasError, match=r"batch size 32 .*--image-size.*--channels.*--cells"):
        loop.train(config)


def test_out_of_memory_inside_the_optimiser_step_stops_and_names_a_resume(
    dataset, tmp_path, monkeypatch
):
    def update_ran_out(*args, **kwargs):  # what train_step lets through from its update
        raise torch.OutOfMemoryError("CUDA out of memory (in the optimiser step)")

    monkeypatch.setattr(step_guard, "train_step", update_ran_out)
    with pytest.raises(BionasError, match=r"half applied.*--resume --batch-size 32"):
        loop.train(config_for(dataset, tmp_path))


def test_out_of_memory_on_several_ranks_stops_and_names_a_resume(dataset, tmp_path, monkeypatch):
    Recorder(monkeypatch, fail_at=1)
    session, model, forward, opts, _ = start_session(config_for(dataset, tmp_path))
    spec = train_spec(session.config, session.train_shards, session.batch_size, 0, 1)
    batch = next(iter(loop._loader(session, spec)))
    rank_1 = replace(session, dist=Dist(rank=1, world_size=2))  # no collective is reached
    with pytest.raises(BionasError, match=r"rank 1 .*--resume --batch-size 32"):
        step_guard.try_step(rank_1, model, forward, opts, batch, "w")


# --- the step itself ---------------------------------------------------------------


def supernet():
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=3, meta_cardinalities=(("dna_bin", 6),), channels=4, cells=2,
                      embed_dim=8, meta_embed_dim=4)  # fmt: skip
    return build_model(cfg)


def tiny_batch(size=8):
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(size, 3, 16, 16, generator=generator),
            torch.randint(0, 6, (size, 1), generator=generator),
            torch.randint(0, 3, (size,), generator=generator))  # fmt: skip


def test_a_theta_step_that_runs_out_of_memory_changes_nothing_and_can_be_retried():
    fp32 = Amp(False, torch.float32, "cpu")
    model = supernet()
    opts = build_optimizers(model, TrainConfig(dataset_dir=".", run_dir="."), fp32)
    train_step(model, *tiny_batch(), "w", opts, fp32)
    train_step(model, *tiny_batch(), "theta", opts, fp32)  # both optimisers have state
    before = {k: v.clone() for k, v in model.state_dict().items()}
    theta_state = {k: v.clone() for k, v in opts.theta.state[model.theta].items()}

    def out_of_memory(module, inputs, output):  # late in the forward: BatchNorms ran before
        raise torch.OutOfMemoryError("CUDA out of memory")

    hook = model.fusion.register_forward_hook(out_of_memory)
    with pytest.raises(StepOutOfMemory) as failed:
        train_step(model, *tiny_batch(), "theta", opts, fp32)
    assert (failed.value.kind, failed.value.samples) == ("theta", 8)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    for key, value in opts.theta.state[model.theta].items():
        assert torch.equal(value, theta_state[key]), key
    assert all(p.grad is None for p in model.parameters())
    hook.remove()
    train_step(model, *tiny_batch(), "theta", opts, fp32)
    assert not torch.equal(model.theta, before["theta"])


def test_an_out_of_memory_error_in_the_optimiser_step_is_not_called_retryable(monkeypatch):
    fp32 = Amp(False, torch.float32, "cpu")
    model = supernet()
    opts = build_optimizers(model, TrainConfig(dataset_dir=".", run_dir="."), fp32)

    def step(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(opts.w, "step", step)
    with pytest.raises(torch.OutOfMemoryError) as failed:
        train_step(model, *tiny_batch(), "w", opts, fp32)
    assert not isinstance(failed.value, StepOutOfMemory)


def test_a_fresh_scaler_keeps_the_scale_and_unscales_again():
    model = supernet()
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale(model(*tiny_batch()[:2]).sum()).backward()
    scaler.unscale_(optimizer)
    with pytest.raises(RuntimeError, match="unscale_"):
        scaler.unscale_(optimizer)  # what a retried step would meet
    fresh = fresh_scaler(scaler, "cpu")
    optimizer.zero_grad(set_to_none=True)
    fresh.scale(model(*tiny_batch()[:2]).sum()).backward()  # the step taken again
    fresh.unscale_(optimizer)
    assert fresh.get_scale() == scaler.get_scale() == 2.0**10


# --- the epoch's progress at a new size ------------------------------------------------


def progress(batch, main, arch=None):
    return TrainState(batch=batch, main=StreamPosition(batches=main),
                      arch=None if arch is None else StreamPosition(batches=arch))  # fmt: skip


def test_progress_is_re_expressed_in_batches_of_the_new_size():
    state = progress(3, 3)
    rescale_progress(state, 64, 32, paired=False)
    assert (state.batch, state.main.batches) == (6, 6)
    state = progress(3, 2, arch=5)  # held out: w, θ, w done; a θ step pending
    rescale_progress(state, 64, 32, paired=True)
    assert (state.batch, state.main.batches, state.arch.batches) == (7, 4, 10)
    state = progress(3, 3)
    rescale_progress(state, 48, 32, paired=False)  # 144 samples read: 5 batches, not 4
    assert (state.batch, state.main.batches) == (5, 5)


# --- --resume --batch-size N -------------------------------------------------------------


def test_resume_with_another_batch_size_goes_on_from_the_same_samples(
    dataset, tmp_path, monkeypatch
):
    config = config_for(dataset, tmp_path, epochs=2, lr_theta=None)  # auto: from θ steps
    recorder = Recorder(monkeypatch)
    assert loop.train(replace(config, max_steps=3)) == []  # 3 x 64 = 192 samples read
    history = loop.train(replace(config, resume=True, max_steps=None, batch_size=32))
    assert len(history) == 2

    first_epoch = Counter(k for batch in recorder.batches[:5] for k in batch)  # 3 + 2 steps
    assert first_epoch == Counter(TRAIN_KEYS)
    steps = read_jsonl(config.run_dir / "steps.jsonl")
    assert [s["samples"] for s in steps if s["epoch"] == 1] == [64, 64, 64, 32, 32]
    assert [s["kind"] for s in steps if s["epoch"] == 1] == ["w", "theta", "w", "w", "theta"]
    assert [s["samples"] for s in steps if s["epoch"] == 2] == [32] * (TRAIN // 32)
    assert len({s["lr"] for s in steps if s["kind"] == "theta"}) == 1  # auto kept its rate
    (event,) = read_jsonl(config.run_dir / "events.jsonl")
    assert (event["reason"], event["step"], event["from"], event["to"]) == ("resume", 3, 64, 32)
    assert json.loads((config.run_dir / "config.json").read_text())["batch_size"] == 32
    assert checkpoint_of(config)["batch_size"] == 32


def test_resume_without_a_batch_size_keeps_the_checkpoints(dataset, tmp_path):
    config = config_for(dataset, tmp_path, batch_size=None)  # auto: 32 on CPU
    loop.train(replace(config, max_steps=2))
    loop.train(replace(config, resume=True, max_steps=None, batch_size=None))
    assert {s["samples"] for s in read_jsonl(config.run_dir / "steps.jsonl")} == {32}
    assert read_jsonl(config.run_dir / "events.jsonl") == []


def test_resume_with_a_new_batch_size_through_the_cli(dataset, tmp_path):
    run = tmp_path / "run"
    tiny = ["--device", "cpu", "--image-size", "16", "--cells", "2", "--channels", "4",
            "--workers", "0", "--shuffle-buffer", "16", "--quiet", "--epochs", "1"]  # fmt: skip

    def bionas(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    first = bionas("train", dataset, "--out", run, *tiny, "--batch-size", "64", "--max-steps", 2)
    assert first.exit_code == 0, first.output
    resumed = bionas("train", dataset, "--out", run, "--resume", "--batch-size", "32")
    assert resumed.exit_code == 0, resumed.output
    steps = read_jsonl(run / "steps.jsonl")
    assert [s["samples"] for s in steps] == [64, 64, 32, 32, 32, 32]
    (event,) = read_jsonl(run / "events.jsonl")
    assert (event["reason"], event["from"], event["to"]) == ("resume", 64, 32)
    assert json.loads((run / "config.json").read_text())["train_config"]["batch_size"] == 32


# --- the adaptive batch size probe -------------------------------------------------------


def fake_probe(model, margin):
    """The search over a probe whose measured peak is 1 MiB a sample, of a 100 MiB budget."""
    peaks: dict[int, int] = {}
    sizes: list[int] = []

    def measure(run):
        run()
        return sizes[-1] * 2**20

    fits = restoring_probe(model, sizes.append, budget=100 * 2**20, margin=margin,
                           measure=measure, peaks=peaks)  # fmt: skip
    return search_batch_size(fits), peaks


def test_the_margin_keeps_a_tenth_of_the_memory_budget_free():
    model = supernet()
    no_margin, _ = fake_probe(model, 0.0)
    chosen, peaks = fake_probe(model, 0.10)
    assert (no_margin, chosen) == (96, 88)  # multiples of 8 within 100 and within 90 MiB
    assert peaks[88] == 88 * 2**20 and peaks[96] == 96 * 2**20


def test_the_smallest_batch_is_taken_when_its_step_runs_though_inside_the_margin(caplog):
    budget, sizes = 100 * 2**20, []

    def measure(run):  # every size peaks at 95 MiB: runs, but inside the 10 MiB margin
        run()
        return 95 * 2**20

    fits = restoring_probe(supernet(), sizes.append, budget=budget, measure=measure)
    with caplog.at_level(logging.WARNING):
        assert search_batch_size(fits) == 32  # recovery goes no lower: 32 is the run's
    assert sizes == [32, 64, 48, 40]  # above 32 the margin still holds
    assert "batch size 32 peaks at 0.09 GiB, within the 10 % margin" in caplog.text


def test_probing_draws_nothing_from_the_runs_random_streams():
    model = supernet()
    drawn = []

    def run_step(batch_size):
        drawn.append(torch.randn(batch_size).sum())
        model(*tiny_batch(4)[:2])  # dropout draws too

    before = torch.random.get_rng_state()
    assert search_batch_size(restoring_probe(model, run_step), high=128) == 128
    assert len(drawn) == 3  # 32, 64, 128
    assert torch.equal(torch.random.get_rng_state(), before)


def test_the_budget_is_the_device_or_the_cap():
    assert memory_budget(None, 80 * 2**30) == 80 * 2**30
    assert memory_budget(12, 80 * 2**30) == 12 * 2**30
    assert memory_budget(200, 80 * 2**30) == 80 * 2**30


def test_running_out_of_memory_for_the_batchs_copy_to_the_device_halves_the_batch_too(
    dataset, tmp_path, monkeypatch
):
    config = config_for(dataset, tmp_path)
    recorder = Recorder(monkeypatch)
    recording = step_guard.to_device
    failed = []

    def failing_copy(batch, device):
        if batch.keys[0] in TRAIN_KEYS and len(recorder.batches) == 2 and not failed:
            failed.append(batch.keys)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB")
        return recording(batch, device)

    monkeypatch.setattr(step_guard, "to_device", failing_copy)
    (epoch,) = loop.train(config)

    assert failed and recorder.trained() == Counter(TRAIN_KEYS)  # the failed copy's batch too
    steps = read_jsonl(config.run_dir / "steps.jsonl")
    assert [s["samples"] for s in steps] == [64, 64, 32, 32, 32, 32]
    (event,) = read_jsonl(config.run_dir / "events.jsonl")
    assert (event["reason"], event["from"], event["to"]) == ("out_of_memory", 64, 32)


def test_validation_that_runs_out_of_memory_validates_again_in_smaller_batches(
    dataset, tmp_path, monkeypatch, caplog
):
    forward, failures = BioAutoMLNAS.forward, []

    def failing_eval_forward(model, images, *args, **kwargs):
        if not model.training and images.shape[0] > 4:  # validation fits only 4 at a time
            failures.append(images.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(model, images, *args, **kwargs)

    monkeypatch.setattr(BioAutoMLNAS, "forward", failing_eval_forward)
    config = config_for(dataset, tmp_path)
    with caplog.at_level(logging.WARNING):
        (epoch,) = loop.train(config)

    assert failures == [8, 8, 8, 8]  # the 8 val samples in one batch at 64, 32, 16 and 8
    assert epoch["val_samples"] == 8 and epoch["val_loss"] is not None
    assert checkpoint_of(config)["state"]["step"] == epoch["step"]  # the epoch is kept
    assert "validation ran out of memory at batch size 64" in caplog.text


def test_decoding_a_batch_on_the_device_that_runs_out_of_memory_halves_the_batch(
    dataset, tmp_path, monkeypatch
):
    from bionas.trainer import batch_decode

    fit, calls = batch_decode.fit, []

    def failing_fit(image, size):  # `--decode gpu` resizes each image on the device
        calls.append(1)
        if len(calls) == 64 * 2 + 1:  # in the third batch
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return fit(image, size)

    monkeypatch.setattr(batch_decode, "fit", failing_fit)
    config = config_for(dataset, tmp_path, decode="gpu")
    (epoch,) = loop.train(config)

    steps = read_jsonl(config.run_dir / "steps.jsonl")
    assert [s["samples"] for s in steps] == [64, 64, 32, 32, 32, 32]
    (event,) = read_jsonl(config.run_dir / "events.jsonl")
    assert (event["reason"], event["step"], event["from"], event["to"]) == (
        "out_of_memory", 2, 64, 32,
    )  # fmt: skip


def test_validation_that_runs_out_even_one_by_one_keeps_the_epoch_for_a_resume(
    dataset, tmp_path, monkeypatch
):
    forward = BioAutoMLNAS.forward

    def eval_always_out_of_memory(model, *args, **kwargs):
        if not model.training:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(model, *args, **kwargs)

    monkeypatch.setattr(BioAutoMLNAS, "forward", eval_always_out_of_memory)
    config = config_for(dataset, tmp_path)
    with pytest.raises(BionasError, match=r"even at batch size 1 .*--resume"):
        loop.train(config)
    saved = checkpoint_of(config)["state"]
    assert (saved["step"], saved["epoch"]) == (4, 0)  # the epoch's 4 steps, not yet closed

    monkeypatch.setattr(BioAutoMLNAS, "forward", forward)
    (epoch,) = loop.train(replace(config, resume=True))  # validates the epoch, trains no more
    assert (epoch["step"], epoch["val_samples"]) == (4, 8)
    assert len(read_jsonl(config.run_dir / "steps.jsonl")) == 4
