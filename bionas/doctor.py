"""`bionas doctor`: what the environment provides (versions, PIL flavour, JPEG codec, GPUs)."""

from __future__ import annotations

import platform
from importlib import metadata


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def pil_report() -> dict[str, object]:
    """Which PIL is imported (pillow-simd or Pillow) and whether libjpeg-turbo backs it."""
    import PIL
    from PIL import features

    simd = _version("pillow-simd")
    pillow = _version("pillow")
    # pillow-simd versions end in .postN; both distributions install the same PIL/ folder
    flavour = "pillow-simd" if ".post" in PIL.__version__ else "Pillow"
    return {
        "PIL.__version__": PIL.__version__,
        "flavour": flavour,
        "installed distributions": {"pillow-simd": simd, "pillow": pillow},
        "libjpeg-turbo": bool(features.check_feature("libjpeg_turbo")),
        "libjpeg version": features.version("jpg"),
    }


def cuda_report() -> dict[str, object]:
    import torch

    if not torch.cuda.is_available():
        return {"available": False, "devices": []}
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append(
            {
                "index": i,
                "name": props.name,
                "memory_gb": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
                "bf16": torch.cuda.is_bf16_supported(),
            }
        )
    return {"available": True, "cuda": torch.version.cuda, "devices": devices}


def report() -> dict[str, object]:
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "bionas": _version("bionas"),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "polars": _version("polars"),
        "webdataset": _version("webdataset"),
        "pyarrow": _version("pyarrow"),
        "zstandard": _version("zstandard"),
        "torch threads": torch.get_num_threads(),
        "PIL": pil_report(),
        "CUDA": cuda_report(),
    }
