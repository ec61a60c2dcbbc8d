"""`--decode gpu`: JPEG decoding in the training process, a batch at a time, on the device.

The DataLoader workers then decode nothing: they ship each batch's JPEG bytes
(`EncodedImages`) with its metadata and labels, and `decode_batches` turns them into the
uint8 pixels a `--decode cpu` worker would have made, on the training device, with one
batched `torchvision.io.decode_jpeg` call (nvJPEG on CUDA, libjpeg-turbo on CPU: the same
code on either, so the CPU tests cover it). `to_device` normalises them as usual.

Pixels follow `bionas.trainer.transforms.decode_image` (resize the shorter side to S with an
antialiased bilinear filter, as PIL's BILINEAR is, then a centre crop), but are not
bit-identical to it: PIL decodes a JPEG at least twice S at 1/2, 1/4 or 1/8 scale (DCT
scaling, `Image.draft`), a big CPU saving that nvJPEG does not offer (it decodes full size,
cheap on a GPU), and PIL rounds to uint8 between its two resize passes. The difference is
measured in tests/test_batch_decode.py and benchmarks/bench_decode.py.

A JPEG that decode_jpeg rejects (not a JPEG, a colour model it lacks), or that does not end
where a JPEG ends (truncated), is decoded by PIL like a worker would; one that PIL rejects
too is dropped from its batch and counted `corrupt` in its worker's state, so skip counts
and resume positions keep every sample. Unlike a worker, which reads another sample in its
place, the batch is then one short.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

from bionas.errors import BionasError
from bionas.shards.format import IMAGE_FORMATS
from bionas.shards.reader import CorruptDataError
from bionas.trainer.batch_size import is_out_of_memory
from bionas.trainer.transforms import DECODE_ERRORS, decode_image

if TYPE_CHECKING:
    from bionas.trainer.data import Batch

# `--decode auto` per device type. CUDA stays on the workers until benchmarks/bench_decode.py
# run on a GPU shows device decoding ahead end to end (only CPU figures exist so far).
AUTO_DECODE = {"cpu": "cpu", "cuda": "cpu"}


def resolve_decode(choice: str, device: torch.device) -> str:
    """`--decode` as it runs on `device`: cpu (PIL in the workers) or gpu (here, batched)."""
    return AUTO_DECODE.get(device.type, "cpu") if choice == "auto" else choice


@dataclass(frozen=True)
class EncodedImages:
    """A batch's JPEG files as one uint8 tensor (one shared-memory block through the worker
    queue, not one per image) and the size of each."""

    data: Tensor  # uint8 [sum(sizes)]
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, jpegs: list[bytes]) -> EncodedImages:
        data = torch.frombuffer(bytearray(b"".join(jpegs)), dtype=torch.uint8)
        return cls(data, tuple(len(jpeg) for jpeg in jpegs))

    def tensors(self) -> list[Tensor]:
        """One uint8 tensor per JPEG (views, no copy)."""
        return list(torch.split(self.data, self.sizes))

    def pin_memory(self) -> EncodedImages:
        return self  # decode_jpeg reads its input from host memory, pinned or not


def decode_batches(
    batches: Iterable[Batch], image_size: int, device: torch.device, strict: bool = False
) -> Iterator[Batch]:
    """Each batch with its JPEGs decoded to uint8 pixels [B', 3, S, S] on `device`; a
    sample neither decoder reads is dropped and added to its worker's `corrupt` count, in
    this and every later batch of that worker (the worker's own count never includes it)."""
    dropped: dict[int, int] = {}
    for batch in batches:
        pixels = decode_pixels(batch.images.tensors(), image_size, device)
        bad = [i for i, p in enumerate(pixels) if not isinstance(p, Tensor)]
        if bad and strict:
            raise CorruptDataError(
                f"sample {batch.keys[bad[0]]}: {pixels[bad[0]]} "
                "(remove --strict to skip and count instead)"
            ) from pixels[bad[0]]
        dropped[batch.worker] = dropped.get(batch.worker, 0) + len(bad)
        state = replace(batch.state, corrupt=batch.state.corrupt + dropped[batch.worker])
        yield _without(replace(batch, state=state), pixels, bad)


def _without(batch: Batch, pixels: list[Tensor | Exception], bad: list[int]) -> Batch:
    """The batch with the decoded pixels, less the samples at `bad`."""
    keep = sorted(set(range(len(pixels))) - set(bad))
    if not keep:
        raise BionasError(
            f"no image of a batch of {len(pixels)} decodes (e.g. sample {batch.keys[0]}: "
            f"{pixels[0]}): check the shards with `bionas inspect --verify`, or train with "
            "--decode cpu, whose workers fill a batch past bad samples"
        )
    images = torch.stack([pixels[i] for i in keep])
    if not bad:
        return replace(batch, images=images)
    index = torch.tensor(keep)
    return replace(
        batch,
        images=images,
        meta=batch.meta[index],
        labels=batch.labels[index],
        keys=tuple(batch.keys[i] for i in keep),
    )


def decode_pixels(
    jpegs: list[Tensor], image_size: int, device: torch.device
) -> list[Tensor | Exception]:
    """Each JPEG as uint8 [3, S, S] on `device`, or the error PIL raised for it. A JPEG
    that does not end in the EOI marker (truncated, or with bytes after it) goes straight
    to PIL: libjpeg-turbo refuses a truncated one as PIL does, but nvJPEG may fill in the
    missing part, and PIL's verdict is the one the workers give."""
    whole = [i for i, jpeg in enumerate(jpegs) if jpeg[-2:].tolist() == [0xFF, 0xD9]]
    decoded = dict(zip(whole, _decode_jpegs([jpegs[i] for i in whole], device), strict=True))
    return [
        fit(decoded[i], image_size)
        if decoded.get(i) is not None
        else _decode_pil(jpeg, image_size, device)
        for i, jpeg in enumerate(jpegs)
    ]


def _decode_jpegs(jpegs: list[Tensor], device: torch.device) -> list[Tensor | None]:
    """decode_jpeg's full-size RGB images, None where it fails. Running out of device
    memory is no verdict on a JPEG: it propagates (the loop halves the batch), where
    catching it would send every image of the batch to PIL on the host."""
    if not jpegs:
        return []
    try:
        return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as err:
        if is_out_of_memory(err):
            raise
        # one bad JPEG fails the whole call: go one by one
        return [_decode_jpeg_or_none(jpeg, device) for jpeg in jpegs]


def _decode_jpeg_or_none(jpeg: Tensor, device: torch.device) -> Tensor | None:
    try:
        return decode_jpeg(jpeg, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as err:
        if is_out_of_memory(err):
            raise
        return None  # PIL decides, as it would in a worker


def _decode_pil(jpeg: Tensor, image_size: int, device: torch.device) -> Tensor | Exception:
    try:
        return decode_image(jpeg.numpy().tobytes(), image_size, IMAGE_FORMATS).to(device)
    except DECODE_ERRORS as err:
        return err


def fit(image: Tensor, image_size: int) -> Tensor:
    """uint8 [3, H, W] -> uint8 [3, S, S] on its device: the shorter side resized to S
    (bilinear, antialiased like PIL's), then the centre S x S, as `decode_image` does."""
    height, width = image.shape[-2:]
    scale = image_size / min(width, height)
    size = (max(image_size, round(height * scale)), max(image_size, round(width * scale)))
    resized = F.interpolate(
        image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
    )[0]
    top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    crop = resized[:, top : top + image_size, left : left + image_size]
    return crop.round().to(torch.uint8)
