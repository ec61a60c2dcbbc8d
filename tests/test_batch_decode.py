"""`--decode gpu` on CPU: the workers ship JPEG bytes and the training process decodes each
batch with torchvision's decode_jpeg, the code CUDA runs; pixels match the PIL path within a
stated tolerance, and a JPEG neither decoder reads is a counted skip, never a lost sample."""

from __future__ import annotations

import io
import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import make_tiny_dataset, tiny_jpeg, tiny_record  # tests/datasets.py
from PIL import Image

from bionas.errors import BionasError
from bionas.manifests.manifest import load_manifest
from bionas.shards.format import encode_record
from bionas.shards.reader import CorruptDataError
from bionas.shards.writer import Sample, write_shard
from bionas.trainer.batch_decode import EncodedImages, decode_batches, decode_pixels
from bionas.trainer.config import TrainConfig
from bionas.trainer.data import BatchStream, StreamPosition, StreamSpec
from bionas.trainer.encoding import load_encoding
from bionas.trainer.logs import read_jsonl
from bionas.trainer.loop import train
from bionas.trainer.transforms import decode_image

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    # torchvision 0.29 deprecates its image codecs for torchcodec's; they still work
    pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning"),
]

CPU = torch.device("cpu")
REAL_PHOTOS = (
    Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "bioscan-real" / "images"
)


def jpeg_of(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=options.pop("format", "JPEG"), **options)
    return buffer.getvalue()


def photo(seed: int = 0, size: tuple[int, int] = (90, 70)) -> Image.Image:
    """A smooth RGB picture with some edges (gradients plus noise)."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(0, 1, size[0]), np.linspace(0, 1, size[1]))
    pixels = np.stack([x * 200, y * 180, (x + y) * 100], axis=-1) + rng.normal(0, 12, (*x.shape, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def as_tensors(jpegs: list[bytes]) -> list[torch.Tensor]:
    return EncodedImages.of(jpegs).tensors()


def pixel_difference(jpegs: list[bytes], image_size: int, pil=decode_image) -> torch.Tensor:
    ours = torch.stack(decode_pixels(as_tensors(jpegs), image_size, CPU))
    theirs = torch.stack([pil(jpeg, image_size) for jpeg in jpegs])
    assert ours.shape == theirs.shape == (len(jpegs), 3, image_size, image_size)
    assert ours.dtype == theirs.dtype == torch.uint8
    return (ours.float() - theirs.float()).abs()


def pil_full_size(jpeg: bytes, image_size: int) -> torch.Tensor:
    """The PIL path without DCT scaling (`draft`), which decode_jpeg does not do."""
    return decode_image(Image.open(io.BytesIO(jpeg)), image_size)


def test_the_resize_matches_pils_bilinear_to_one_level_when_both_decode_full_size():
    jpegs = [jpeg_of(photo(seed, size)) for seed, size in enumerate([(90, 70), (64, 64), (50, 81)])]
    diff = pixel_difference(jpegs, 32, pil=pil_full_size)
    assert diff.max() <= 1 and diff.mean() < 0.2  # PIL rounds between its two passes


def test_real_photos_decode_like_the_pil_path_within_the_stated_tolerance():
    paths = sorted(REAL_PHOTOS.rglob("*.jpg"))
    if not paths:
        pytest.skip(f"no real photos in {REAL_PHOTOS}")
    # 1024 x 768 to 224: PIL decodes at 1/2 scale (draft), decode_jpeg at full size
    diff = pixel_difference([p.read_bytes() for p in paths], 224)
    assert diff.mean() < 0.5 and diff.max() <= 12


def test_grayscale_cmyk_and_progressive_jpegs_decode_to_rgb_like_pil():
    image = photo(3)
    jpegs = [
        jpeg_of(image.convert("L")),
        jpeg_of(image.convert("CMYK")),
        jpeg_of(image, progressive=True),
    ]
    diff = pixel_difference(jpegs, 32, pil=pil_full_size)
    assert diff.max() <= 2


def test_a_truncated_jpeg_is_pils_to_judge_even_when_the_device_decoder_would_take_it(
    monkeypatch,
):
    import bionas.trainer.batch_decode as batch_decode

    def lenient(jpegs, **options):  # nvJPEG may fill in a truncated file's missing part
        return [torch.zeros(3, 40, 40, dtype=torch.uint8) for _ in jpegs]

    monkeypatch.setattr(batch_decode, "decode_jpeg", lenient)
    whole = jpeg_of(photo(4))
    ok, truncated = decode_pixels(as_tensors([whole, whole[:-300]]), 32, CPU)
    assert ok.shape == (3, 32, 32) and isinstance(truncated, OSError)


@pytest.mark.parametrize("failing", ["the batch's call", "one image's call"])
def test_running_out_of_device_memory_while_decoding_is_raised_not_taken_for_a_bad_jpeg(
    monkeypatch, failing
):
    import bionas.trainer.batch_decode as batch_decode

    def out_of_memory(jpegs, **options):
        if failing == "one image's call" and isinstance(jpegs, list):
            raise RuntimeError("Not a JPEG file")  # a bad image: decode one by one
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(batch_decode, "decode_jpeg", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):  # not PIL's pixels on the host
        decode_pixels(as_tensors([jpeg_of(photo(5))] * 2), 32, CPU)


def write_samples(path: Path, images: list[bytes]) -> Path:
    rng = random.Random(0)
    samples = [
        Sample(f"OK{i:03d}", jpg, encode_record(tiny_record(f"OK{i:03d}", "train", 0, rng)))
        for i, jpg in enumerate(images)
    ]
    write_shard(path, samples)
    return path


@pytest.fixture
def encoding(tmp_path):
    dataset = make_tiny_dataset(tmp_path / "ds", n=16, shards_per_split=1)
    return load_encoding(load_manifest(dataset), "order", ["dna_bin"])


BAD_IMAGES = {
    "truncated": lambda good: good[: len(good) // 2],
    "png": lambda good: jpeg_of(Image.open(io.BytesIO(good)), format="PNG"),
    "garbage": lambda good: b"\xff\xd8 not a JPEG at all",
}


@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_a_bad_image_in_a_shard_is_counted_corrupt_as_the_worker_path_counts_it(
    tmp_path, encoding, kind
):
    rng = random.Random(1)
    good = [tiny_jpeg(0, 32, rng) for _ in range(4)]
    images = [*good[:2], BAD_IMAGES[kind](good[0]), *good[2:]]
    spec = StreamSpec((write_samples(tmp_path / "s.tar", images),), batch_size=8,
                      image_size=32, passes=1, shuffle=False, uint8=True)  # fmt: skip
    (pil,) = BatchStream(spec, encoding)
    (batch,) = decode_batches(BatchStream(replace(spec, encoded=True), encoding), 32, CPU)
    assert batch.keys == pil.keys == ("OK000", "OK001", "OK003", "OK004")
    assert batch.state.corrupt == pil.state.corrupt == 1
    assert batch.images.shape == (4, 3, 32, 32) and batch.labels.shape == (4,)
    assert batch.meta.shape[0] == 4
    assert (batch.images.float() - pil.images.float()).abs().mean() < 1.0
    with pytest.raises(CorruptDataError, match="OK002"):
        list(decode_batches(BatchStream(replace(spec, encoded=True), encoding), 32, CPU, True))


def test_a_dropped_sample_stays_counted_in_the_later_batches_of_its_worker(tmp_path, encoding):
    rng = random.Random(2)
    images = [tiny_jpeg(0, 32, rng) for _ in range(6)]
    images[1] = images[1][:100]
    spec = StreamSpec((write_samples(tmp_path / "s.tar", images),), batch_size=2,
                      image_size=32, passes=1, shuffle=False, encoded=True)  # fmt: skip
    position = StreamPosition()
    for batch in decode_batches(BatchStream(spec, encoding), 32, CPU):
        position.advance(batch)
    assert position.skipped()["corrupt"] == 1
    assert position.workers[0].cursor == 6


def test_a_batch_with_no_decodable_image_stops_with_a_clear_error(tmp_path, encoding):
    spec = StreamSpec((write_samples(tmp_path / "s.tar", [b"junk", b"more junk"]),),
                      batch_size=2, image_size=32, passes=1, shuffle=False)  # fmt: skip
    # the worker path skips both; shipped undecoded they form one batch
    with pytest.raises(BionasError, match="--decode cpu"):
        list(decode_batches(BatchStream(replace(spec, encoded=True), encoding), 32, CPU))


def tiny_config(tmp_path: Path, **changes) -> TrainConfig:
    dataset = make_tiny_dataset(tmp_path / "ds", n=48, shards_per_split=3)
    base = TrainConfig(dataset_dir=dataset, run_dir=tmp_path / "run", epochs=1, batch_size=8,
                       image_size=32, cells=3, channels=4, embed_dim=16, meta_embed_dim=4,
                       workers=0, shuffle_buffer=16, quiet=True, decode="gpu")  # fmt: skip
    return replace(base, **changes)


def trained_samples(run_dir: Path) -> int:
    return sum(step["samples"] for step in read_jsonl(run_dir / "steps.jsonl"))


@pytest.mark.parametrize("workers", [0, 2])
def test_training_with_gpu_decode_on_cpu_trains_on_every_sample(tmp_path, workers):
    config = tiny_config(tmp_path, workers=workers)
    (epoch,) = train(config)
    assert trained_samples(config.run_dir) == 48  # 6 steps of 8
    assert epoch["val_samples"] == 12
    assert sum(epoch["skipped"].values()) == 0
    assert json.loads((config.run_dir / "config.json").read_text())["decode"] == "gpu"


@pytest.fixture
def fifth_image_truncated(monkeypatch):
    """make_tiny_dataset writes its 5th train image (TR00004) cut in half."""
    import datasets

    made = []

    def fifth_truncated(*args):
        jpeg = tiny_jpeg(*args)
        made.append(jpeg)
        return jpeg[: len(jpeg) // 2] if len(made) == 5 else jpeg

    monkeypatch.setattr(datasets, "tiny_jpeg", fifth_truncated)


@pytest.mark.usefixtures("fifth_image_truncated")
def test_training_counts_a_truncated_jpeg_as_skipped_with_either_decode(tmp_path):
    gpu = tiny_config(tmp_path)
    (epoch,) = train(gpu)
    assert epoch["skipped"]["corrupt"] == 1
    assert trained_samples(gpu.run_dir) == 47  # every readable sample; one batch of 7
    cpu = replace(gpu, run_dir=tmp_path / "cpu", decode="cpu")
    (epoch,) = train(cpu)
    assert epoch["skipped"]["corrupt"] == 1
    assert trained_samples(cpu.run_dir) == 48  # the worker filled the batch from the next pass


def step_losses(run_dir: Path) -> list[tuple[int, float, int]]:
    return [(s["step"], s["loss"], s["samples"]) for s in read_jsonl(run_dir / "steps.jsonl")]


@pytest.mark.usefixtures("fifth_image_truncated")
def test_a_resumed_gpu_decode_run_counts_the_skip_once_and_repeats_the_uninterrupted_run(
    tmp_path,
):
    whole = tiny_config(tmp_path, epochs=2)
    history = train(whole)
    stopped = replace(whole, run_dir=tmp_path / "stopped", max_steps=9)  # epoch 2, step 3
    train(stopped)
    resumed = train(replace(stopped, resume=True, max_steps=None))
    assert [h["skipped"]["corrupt"] for h in resumed] == [1, 1]  # once an epoch
    assert [h["skipped"] for h in resumed] == [h["skipped"] for h in history]
    assert step_losses(stopped.run_dir) == step_losses(whole.run_dir)


def test_decode_auto_runs_on_the_workers_and_records_cpu(tmp_path):
    config = tiny_config(tmp_path, decode="auto", max_steps=1)
    train(config)
    stored = json.loads((config.run_dir / "config.json").read_text())
    assert (stored["decode"], stored["train_config"]["decode"]) == ("cpu", "auto")
    older = {k: v for k, v in stored["train_config"].items() if k != "decode"}
    assert TrainConfig.from_stored(older).decode == "cpu"  # before --decode: the workers


NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@NEEDS_CUDA
def test_nvjpeg_decodes_a_batch_like_the_cpu_decoder_and_falls_back_per_image():
    image = photo(5, (300, 260))
    jpegs = [jpeg_of(image), jpeg_of(image.convert("L")), jpeg_of(image.convert("CMYK"))]
    truncated = jpegs[0][: len(jpegs[0]) // 2]
    cpu = decode_pixels(as_tensors([*jpegs, truncated]), 64, CPU)
    cuda = decode_pixels(as_tensors([*jpegs, truncated]), 64, torch.device("cuda"))
    assert isinstance(cuda[-1], Exception) and isinstance(cpu[-1], Exception)
    diff = (torch.stack(cuda[:-1]).cpu().float() - torch.stack(cpu[:-1]).float()).abs()
    assert diff.mean() < 1.0  # nvJPEG's IDCT and colour conversion are not libjpeg's


@NEEDS_CUDA
def test_training_with_gpu_decode_on_cuda_trains_on_every_sample(tmp_path):
    config = tiny_config(tmp_path, device="cuda", workers=2)
    (epoch,) = train(config)
    assert trained_samples(config.run_dir) == 48 and epoch["val_samples"] == 12
