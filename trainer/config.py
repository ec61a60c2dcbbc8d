"""`TrainConfig`: every option of `bionas train`, validated once, then passed down.

Defaults are the paper's (Sec. III-B, Algorithm 1) where it gives a number; `None` means
"decide from the device or the dataset" (target, metadata fields, batch size, AMP). The
paper does not state an epoch count; 10 is ours.
"""

from __future__ import annotations

import contextlib
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from bionas.errors import BionasError
from bionas.trainer.backbones import check_backbone
from bionas.trainer.fusion import check_fusion
from bionas.trainer.ops import OP_SETS

THETA_OPTIMIZERS = ("adam", "adamw")
SPARSE_EMBEDDINGS = ("auto", "on", "off")  # see `bionas.trainer.optimizers`
STEP_OPTION_MODES = ("auto", "on", "off")  # --compile, --channels-last: trainer.step_options
DECODES = ("auto", "cpu", "gpu")  # where JPEGs decode: see `bionas.trainer.batch_decode`
ARCH_DATA = ("interleaved", "heldout")
AMP_DTYPES = ("fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")
DILATED = ("full", "separable")
# The names of `bionas.trainer.search.STRATEGIES` (which imports the loop, hence this copy;
# a test checks they agree).
SEARCHES = ("darts", "random", "evolution", "reinforce", "enas")

# Reading a step's loss makes the host wait for the GPU; read them this many steps at a
# time (`bionas.trainer.step.StepWindow`; BENCHMARKS.md, "log cadence").
DEFAULT_LOG_EVERY = 50

PAPER_LR_THETA = 3e-4
# DARTS' CIFAR-10 search (Liu et al. 2019): 50 epochs of 391 θ steps at lr 3e-4. Adam moves
# a parameter by at most about lr per step, so that search could move a logit ~5.9 in all.
DARTS_THETA_TRAVEL = PAPER_LR_THETA * 50 * 391


def auto_lr_theta(theta_steps: int) -> float:
    """`--lr-theta auto`: the paper's 3e-4 when the search takes at least DARTS' 19,550 θ
    steps (the paper's own full-data search takes far more), else DARTS' total travel spread
    over the θ steps there are: max(3e-4, 5.865 / θ steps)."""
    return max(PAPER_LR_THETA, DARTS_THETA_TRAVEL / max(theta_steps, 1))


# What a run stored before an option existed ran with (bionas 0.1: torch's Adam betas,
# affine BN in the supernet's ops; before --sparse-embeddings: AdamW on every table row).
LEGACY_DEFAULTS: dict[str, Any] = {
    "theta_betas": [0.9, 0.999],
    "search_bn_affine": True,
    "sparse_embeddings": "off",
    "compile": "off",
    "channels_last": "off",
    "decode": "cpu",
}

# Options that may change when a run is resumed; any other difference is refused, since
# the continued run would no longer be the run that was checkpointed.
RESUMABLE_OVERRIDES = frozenset(
    {
        "epochs",
        "max_steps",
        "retrain_epochs",
        "checkpoint_every",
        "log_every",
        "quiet",
        "strict",
        "threads",
        "batch_size",  # the epoch goes on from the same samples (trainer.rebatch)
        "compile",  # how the step runs, not what it computes (trainer.step_options)
        "channels_last",
        "decode",  # the same samples, decoded elsewhere (pixels differ slightly: batch_decode)
        "resume",
        "dataset_dir",
        "run_dir",
        "genotype",  # a path: the architecture it holds is compared instead (checkpoint)
    }
)


@dataclass(frozen=True)
class TrainConfig:
    dataset_dir: Path
    run_dir: Path
    target: str | None = None  # None: the manifest's target
    meta_fields: tuple[str, ...] | None = None  # None: the leakage guard's default
    allow_target_leakage: bool = False
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int | None = None  # None: auto (search on CUDA, 32 on CPU); resume: the run's
    gpu_memory_gb: float | None = None
    image_size: int = 224
    cells: int = 5
    channels: int = 16
    embed_dim: int = 256
    meta_embed_dim: int = 32
    dropout: float = 0.2
    fusion: str = "concat"
    dilated: str = "full"
    prune_threshold: float = 1e-6
    genotype: Path | None = None  # train this fixed architecture instead of searching
    backbone: str | None = None  # a torchvision model as the image encoder (Table II)
    weights: Path | None = None  # a local state dict for the backbone (never downloaded)
    workers: int = 4
    decode: str = "auto"  # JPEGs decoded by PIL in the workers (cpu) or batched on the device
    threads: int | None = None  # torch CPU threads of the training process (None: torch's)
    seed: int = 0
    shuffle_buffer: int = 1000
    checkpoint_every: int | None = None  # steps; a checkpoint is also written every epoch
    log_every: int = DEFAULT_LOG_EVERY  # steps whose results are read from the device at once
    resume: bool = False
    device: str = "auto"
    amp: bool | None = None  # None: on with CUDA, off on CPU
    amp_dtype: str | None = None  # None: fp16 + loss scaling on CUDA (paper), bf16 on CPU
    lr_w: float = 1e-3  # AdamW on w
    weight_decay_w: float = 1e-4
    # large metadata tables' rows updated lazily (SparseAdam): auto|on|off (trainer.optimizers)
    sparse_embeddings: str = "auto"
    compile: str = "auto"  # torch.compile of the forward: auto|on|off (trainer.step_options)
    channels_last: str = "auto"  # NHWC model and images: auto|on|off (trainer.step_options)
    lr_theta: float | None = PAPER_LR_THETA  # Adam on θ; None: `auto_lr_theta`
    weight_decay_theta: float = 1e-3
    theta_optimizer: str = "adam"  # "adamw": decoupled weight decay on θ
    theta_betas: tuple[float, float] = (0.5, 0.999)  # DARTS' (paper silent); torch's 0.9 before
    search_bn_affine: bool = False  # learnable BN affine in the supernet's ops (DARTS: no)
    stem: str = "learned"  # "transpose_symmetric": an experimental control (trainer.encoder)
    ops: str = "full"  # the supernet's primitive set (`OP_SETS`: full, reduced, conv-only)
    search: str = "darts"  # the search strategy (`bionas.trainer.search`)
    # budgets of the shared-weight searches (every --search but darts)
    search_evaluations: int = 32  # genotypes scored on the validation batches in all
    search_val_batches: int = 8  # validation batches each genotype is scored on
    population: int = 8  # evolution: population size
    sample_size: int = 3  # evolution: genotypes drawn per tournament
    policy_lr: float = 0.05  # reinforce, enas: Adam's rate on the policy logits
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    warmup_epochs: int = 0  # epochs of weight-only steps before the search starts
    retrain_epochs: int = 0  # then train the derived genotype from scratch in RUN_DIR/final
    arch_data: str = "interleaved"
    heldout_fraction: float = 0.1  # share of train read by θ steps with arch_data=heldout
    meta_dropout: float = 0.0
    val_split: str = "val"
    strict: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        for name in ("dataset_dir", "run_dir", "genotype", "weights"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.meta_fields is not None:
            object.__setattr__(self, "meta_fields", tuple(self.meta_fields))
        object.__setattr__(self, "theta_betas", tuple(float(b) for b in self.theta_betas))
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as strings, tuples as lists."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> TrainConfig:
        """A config stored in a checkpoint; options it predates take the value they had."""
        return cls.from_dict({**LEGACY_DEFAULTS, **data})

    def differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Options that differ, except those a resumed run may change."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {
            k: (mine[k], theirs[k])
            for k in mine
            if k not in RESUMABLE_OVERRIDES and mine[k] != theirs[k]
        }


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _validate(c: TrainConfig) -> None:
    positive = ("epochs", "image_size", "cells", "channels", "embed_dim", "meta_embed_dim")
    for name in positive:
        _check(getattr(c, name) >= 1, f"--{_flag(name)} must be >= 1, got {getattr(c, name)}")
    for name in ("max_steps", "batch_size", "checkpoint_every", "log_every"):
        value = getattr(c, name)
        _check(value is None or value >= 1, f"--{_flag(name)} must be >= 1, got {value}")
    _check(c.workers >= 0, f"--workers must be >= 0, got {c.workers}")
    _check(c.threads is None or c.threads >= 1, f"--threads must be >= 1, got {c.threads}")
    for name in ("lr_w", "lr_theta"):
        value = getattr(c, name)
        _check(value is None or value > 0, f"--{_flag(name)} must be > 0, got {value}")
    _check(c.lr_w is not None, "--lr-w must be a number")
    _check(c.shuffle_buffer >= 0, f"--shuffle-buffer must be >= 0, got {c.shuffle_buffer}")
    _check(c.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {c.warmup_epochs}")
    _check(c.retrain_epochs >= 0, f"--retrain-epochs must be >= 0, got {c.retrain_epochs}")
    _check(
        c.gpu_memory_gb is None or c.gpu_memory_gb > 0,
        f"--gpu-memory-gb must be > 0, got {c.gpu_memory_gb}",
    )
    _check(0.0 <= c.meta_dropout < 1.0, f"--meta-dropout must be in [0, 1), got {c.meta_dropout}")
    _check(0.0 <= c.dropout < 1.0, f"--dropout must be in [0, 1), got {c.dropout}")
    _check(
        0.0 < c.heldout_fraction < 1.0,
        f"--heldout-fraction must be in (0, 1), got {c.heldout_fraction}",
    )
    _check(0.0 <= c.label_smoothing < 1.0, "--label-smoothing must be in [0, 1)")
    _check(c.grad_clip > 0, f"--grad-clip must be > 0, got {c.grad_clip}")
    _check(
        len(c.theta_betas) == 2 and all(0.0 <= b < 1.0 for b in c.theta_betas),
        f"--theta-betas must be two numbers in [0, 1), got {c.theta_betas}",
    )
    _check(c.prune_threshold >= 0, "--prune-threshold must be >= 0")
    _validate_search(c)
    for name, choices in (
        ("theta_optimizer", THETA_OPTIMIZERS),
        ("sparse_embeddings", SPARSE_EMBEDDINGS),
        ("compile", STEP_OPTION_MODES),
        ("channels_last", STEP_OPTION_MODES),
        ("arch_data", ARCH_DATA),
        ("device", DEVICES),
        ("decode", DECODES),
        ("dilated", DILATED),
        ("stem", ("learned", "transpose_symmetric")),
    ):
        value = getattr(c, name)
        _check(value in choices, f"--{_flag(name)} must be one of {choices}, got {value!r}")
    _check(
        c.amp_dtype is None or c.amp_dtype in AMP_DTYPES,
        f"--amp-dtype must be one of {AMP_DTYPES}, got {c.amp_dtype!r}",
    )
    _validate_backbone(c)
    _validate_fusion(c)


def _validate_backbone(c: TrainConfig) -> None:
    if c.backbone is None:
        _check(c.weights is None, "--weights loads a backbone's state dict: give --backbone too")
        return
    check_backbone(c.backbone)
    _check(
        c.genotype is None,
        f"--backbone {c.backbone} replaces the searched cells that --genotype fixes: "
        "give one or the other",
    )
    _check(
        c.retrain_epochs == 0,
        f"--retrain-epochs retrains the genotype a search derives; a --backbone {c.backbone} "
        "run has none (train it longer with --epochs)",
    )
    _check(
        c.ops == "full",
        f"--ops {c.ops} picks the searched cells' primitives; a --backbone {c.backbone} run "
        "has no cells",
    )


def _validate_search(c: TrainConfig) -> None:
    _check(c.ops in OP_SETS, f"--ops must be one of {tuple(OP_SETS)}, got {c.ops!r}")
    _check(c.search in SEARCHES, f"--search must be one of {SEARCHES}, got {c.search!r}")
    for name in ("search_evaluations", "search_val_batches", "sample_size"):
        value = getattr(c, name)
        _check(value >= 1, f"--{_flag(name)} must be >= 1, got {value}")
    _check(c.population >= 2, f"--population must be >= 2, got {c.population}")
    _check(c.policy_lr > 0, f"--policy-lr must be > 0, got {c.policy_lr}")
    if c.search == "darts":
        return
    _check(c.backbone is None, f"--backbone has no cells to search: no --search {c.search}")
    _check(
        c.compile != "on",
        f"--compile on traces one network; --search {c.search} runs another path of the "
        "supernet at every step (a recompile each): leave --compile at auto or off",
    )
    _check(
        c.arch_data == "interleaved",
        f"--arch-data heldout splits the data of darts' θ steps; --search {c.search} has none",
    )
    if c.search == "evolution":
        _check(
            c.sample_size <= c.population,
            f"--sample-size ({c.sample_size}) must be <= --population ({c.population})",
        )
        _check(
            c.search_evaluations >= c.population,
            f"--search-evaluations ({c.search_evaluations}) must be >= --population "
            f"({c.population}): evolution first scores a whole random population",
        )


def _validate_fusion(c: TrainConfig) -> None:
    # meta_fields None (the dataset's default fields) is checked when the model is built
    check_fusion(c.fusion, with_meta=c.meta_fields != (), searched_encoder=c.backbone is None)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def read_toml_options(path: Path) -> dict[str, Any]:
    """Options from a TOML file: keys are option names (`batch_size` or `batch-size`)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"cannot read config file {path}: {err}") from err
    data = data.get("train", data)  # a [train] table or top-level keys
    known = {f.name for f in fields(TrainConfig)} - {"dataset_dir", "run_dir", "resume"}
    options = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"{path}: unknown option(s) {unknown}; known options: {', '.join(sorted(known))}"
        )
    return options


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise BionasError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


@dataclass(frozen=True)
class Amp:
    """Mixed precision as resolved for a device.

    CUDA default: fp16 autocast + dynamic loss scaling, one GradScaler per optimiser (the
    paper's NVIDIA AMP setting); `--amp-dtype bf16` uses bf16 autocast without scaling
    (bf16 has fp32's exponent range). CPU: `--amp` means bf16 autocast; off by default.
    """

    enabled: bool
    dtype: torch.dtype
    device_type: str

    @property
    def loss_scaling(self) -> bool:
        return self.enabled and self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "dtype": str(self.dtype).removeprefix("torch.")}


def resolve_amp(config: TrainConfig, device: torch.device) -> Amp:
    enabled = config.amp if config.amp is not None else device.type == "cuda"
    if not enabled:
        return Amp(False, torch.float32, device.type)
    if device.type != "cuda":
        if config.amp_dtype == "fp16":
            raise BionasError("--amp-dtype fp16 needs CUDA; on CPU --amp uses bf16")
        return Amp(True, torch.bfloat16, device.type)
    if config.amp_dtype == "bf16":
        if not torch.cuda.is_bf16_supported():
            raise BionasError("this GPU does not support bf16; use --amp-dtype fp16")
        return Amp(True, torch.bfloat16, "cuda")
    return Amp(True, torch.float16, "cuda")
