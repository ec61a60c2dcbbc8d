"""The two export formats: how the fixed network becomes a file, and how a file runs.

TorchScript: `torch.jit.trace` (torch 2.14 marks torch.jit deprecated but ships it; the
fixed network has no data-dependent control flow, so a trace is exact). ONNX: the
torch.export-based exporter (`torch.onnx.export(dynamo=True)`, the default and the only
maintained path since torch 2.9; it needs onnxscript) with the batch axis declared
dynamic, checked by `onnx.checker`, run by onnxruntime on its CPU provider.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bionas.errors import BionasError
from bionas.trainer.predictor import ONNX, TORCHSCRIPT

MODEL_FILES = {TORCHSCRIPT: "model.pt", ONNX: "model.onnx"}
IMAGES, META, LOGITS = "images", "meta", "logits"
LogitsFn = Callable[[Tensor, Tensor | None], Tensor]


def exportable(model: nn.Module) -> nn.Module:
    """A copy of the fixed network in eval mode with named inputs, ready to trace.

    The metadata embeddings are renamed `field<i>`: a field named like a Python keyword
    (`class`) breaks torch.export's generated code, and TorchScript's too.
    """
    if getattr(model, "theta", None) is not None:
        raise ValueError("a supernet is not exported; export its final model")
    net = copy.deepcopy(model).float()
    encoder = net.metadata_encoder
    if encoder is None:
        return _ImagesOnly(net).eval()
    safe = tuple(f"field{i}" for i in range(len(encoder.fields)))
    encoder.embeddings = nn.ModuleDict(
        {name: encoder.embeddings[f] for name, f in zip(safe, encoder.fields, strict=True)}
    )
    encoder.fields = safe
    return _ImagesAndMeta(net).eval()


class _ImagesAndMeta(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor, meta: Tensor) -> Tensor:
        return self.net(images, meta)


class _ImagesOnly(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images, None)


def torchscript_bytes(net: nn.Module, example: tuple[Tensor, ...]) -> bytes:
    """`torch.jit.trace` of the fixed network, saved. Its only Python branches (the
    edges' ops, the metadata shape check) are fixed by the genotype and the field count."""
    buffer = io.BytesIO()
    with torch.no_grad(), _quiet_jit():
        torch.jit.save(torch.jit.trace(net, example), buffer)
    return buffer.getvalue()


def onnx_bytes(
    net: nn.Module, example: tuple[Tensor, ...], opset: int | None
) -> tuple[bytes, dict[str, Any]]:
    """torch.export-based ONNX (`dynamo=True`) with a dynamic batch axis, checked by
    `onnx.checker`; returns the model and how it was made."""
    try:
        import onnx
    except ImportError as err:
        raise BionasError(
            "--format onnx needs onnx, onnxruntime and onnxscript: pip install 'bionas[export]'"
        ) from err
    names = [IMAGES, META][: len(example)]
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        # both inputs share the one batch dim; the exporter says so once per input
        warnings.filterwarnings("ignore", message="# The axis name")
        program = torch.onnx.export(
            net,
            example,
            dynamo=True,
            input_names=names,
            output_names=[LOGITS],
            dynamic_shapes={name: {0: batch} for name in names},
            opset_version=opset,
            verbose=False,
        )
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    opset_used = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    about = {"exporter": "torch.onnx.export(dynamo=True)", "opset": opset_used}
    return proto.SerializeToString(), about


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def model_runner(
    fmt: str, path: Path, with_meta: bool, device: torch.device | str = "cpu",
    threads: int | None = None,
) -> LogitsFn:  # fmt: skip
    """`logits(images, meta)` of an exported file; `threads`: onnxruntime's intra-op threads."""
    if fmt == TORCHSCRIPT:
        with _quiet_jit():
            module = torch.jit.load(str(path), map_location=device).eval()

        def torchscript_logits(images: Tensor, meta: Tensor | None) -> Tensor:
            args = (images.to(device), meta.to(device)) if with_meta else (images.to(device),)
            return module(*args)

        return torchscript_logits
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def onnx_logits(images: Tensor, meta: Tensor | None) -> Tensor:
        feed = {IMAGES: images.detach().cpu().float().numpy()}
        if with_meta:
            feed[META] = meta.detach().cpu().to(torch.int64).numpy()
        return torch.from_numpy(session.run([LOGITS], feed)[0])

    return onnx_logits


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """torch 2.14 marks torch.jit deprecated (FutureWarning) and the tracer warns about
    the metadata shape check it freezes (the field count is fixed): expected, silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield
