"""Adaptive batch size (Sec. III-B.2): the largest batch in 32…512 whose train step fits.

The search is a pure function of a probe `fits(batch_size) -> bool`, so it is tested on
CPU with fake probes; on CUDA the probe runs a real w step and a real θ step at full size
(forward, backward, optimiser step, so optimiser state and both update kinds count) on
forked RNGs, maps `torch.OutOfMemoryError`, or a peak allocation above (1 - MEMORY_MARGIN)
of the memory budget at a size above MIN_BATCH, to False, then restores the model. A step
that runs out of memory later, mid-training, halves the batch (`bionas.trainer.rebatch`).

Scheme: double from 32 while the step fits (32, 64, 128, 256, 512); after the first
failure, binary-search the gap on multiples of 8. Given a monotone probe the result is the
largest multiple of 8 that fits (or the largest power-of-two step when all fit, 512).
At most 10 probes (5 doublings, then at most 5 halvings of a gap of 32 multiples).

`pick_batch_size` is what a run's set-up calls: --batch-size N, 32 on CPU, or this search
over real w + θ steps of the run's own model and optimisers on CUDA.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import nn

from bionas.errors import BionasError
from bionas.trainer.config import Amp, TrainConfig
from bionas.trainer.encoding import Encoding
from bionas.trainer.optimizers import build_optimizers

log = logging.getLogger(__name__)

MIN_BATCH = 32
MAX_BATCH = 512
MULTIPLE = 8  # sizes tried between powers of two
CPU_DEFAULT_BATCH = 32  # --batch-size auto on CPU: no memory to probe, a sane default
# A size fits when its probe's peak allocation stays within 90 % of the budget. The probe
# takes one w and one θ step in isolation; a run needs more than that peak: validation
# and a short last batch bring new shapes (cuDNN benchmark mode autotunes them, with
# their own workspaces), the caching allocator fragments as shapes vary (memory it holds
# but cannot reuse is not in the allocated peak), and DDP adds gradient buckets the
# unwrapped probe model has none of. 10 % of an RTX 3060's 12 GiB is 1.2 GiB, and costs
# at most a tenth of the batch; a step that still runs out halves it (trainer.rebatch).
# MIN_BATCH itself is taken whenever its step runs (with a warning inside the margin): no
# smaller size is searched, and out-of-memory recovery halves no further either.
MEMORY_MARGIN = 0.10


def search_batch_size(
    fits: Callable[[int], bool],
    low: int = MIN_BATCH,
    high: int = MAX_BATCH,
    multiple: int = MULTIPLE,
) -> int:
    """The largest batch in [low, high] for which `fits` holds (see the module docstring)."""
    low = min(low, high)
    if not fits(low):
        raise BionasError(
            f"a train step with batch size {low} does not fit: it runs out of memory; "
            "lower --image-size, --channels or --cells, use --dilated separable, "
            "raise --gpu-memory-gb, or pass a smaller --batch-size"
        )
    good, size = low, low
    while size < high:
        size = min(size * 2, high)
        if not fits(size):
            break
        good = size
    else:
        return good
    lo, hi = good // multiple, -(-size // multiple)  # search (good, size) on multiples
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid * multiple >= size:
            hi = mid
        elif fits(mid * multiple):
            lo = mid
        else:
            hi = mid
    return max(good, lo * multiple)


def restoring_probe(
    model: nn.Module,
    run_step: Callable[[int], None],
    *,
    budget: int | None = None,
    margin: float = MEMORY_MARGIN,
    measure: Callable[[Callable[[], None]], int] | None = None,
    peaks: dict[int, int] | None = None,
    rng_devices: Sequence[int] = (),
) -> Callable[[int], bool]:
    """A probe that runs `run_step(batch_size)` and reports whether it fits, then puts back
    the model's parameters and buffers either way.

    A size fits when the step does not run out of memory and, given a `budget` (bytes),
    when `measure` (default `cuda_peak_bytes`: runs the step, returns its peak allocation)
    reads at most (1 - margin) of it, or at most all of it at MIN_BATCH or below
    (`_within_budget`); each reading goes into `peaks`. The step runs on
    forked RNGs (CPU and the CUDA `rng_devices`), so probing draws nothing from the run's
    streams: dropout does not depend on how many sizes were tried."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    read_peak = measure or cuda_peak_bytes

    def fits(batch_size: int) -> bool:
        out_of_memory, peak = False, None
        with torch.random.fork_rng(devices=list(rng_devices)):
            try:
                if budget is None:
                    run_step(batch_size)
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                else:
                    peak = read_peak(lambda: run_step(batch_size))
            except RuntimeError as err:  # torch.OutOfMemoryError, or cuDNN/cuBLAS failing
                if not is_out_of_memory(err):
                    raise
                out_of_memory = True  # leave the except block first, so its frames are freed
        model.zero_grad(set_to_none=True)
        model.load_state_dict(saved)
        release_cached_memory()
        within = peak is None or _within_budget(batch_size, peak, budget, margin)
        if peak is not None and peaks is not None:
            peaks[batch_size] = peak
        log.info(
            "batch size %d %s%s", batch_size,
            "fits" if within and not out_of_memory else "does not fit",
            "" if peak is None else f" (peak {peak / 2**30:.2f} GiB of {budget / 2**30:.2f} GiB)",
        )  # fmt: skip
        return within and not out_of_memory

    return fits


def _within_budget(batch_size: int, peak: int, budget: int, margin: float) -> bool:
    """Whether a step's `peak` leaves `margin` of the `budget` free; at MIN_BATCH or below,
    the smallest size a run trains at, whether it stays within the budget at all (refusing
    a step that ran would refuse a run that the old probe, without a margin, trained)."""
    if peak <= (1 - margin) * budget:
        return True
    if batch_size > MIN_BATCH:
        return False
    log.warning(
        "batch size %d peaks at %.2f GiB, within the %.0f %% margin of the %.2f GiB budget: "
        "the smallest size a run trains at, so it is taken, but a later step may run out",
        batch_size, peak / 2**30, margin * 100, budget / 2**30,
    )  # fmt: skip
    return peak <= budget


def cuda_peak_bytes(run: Callable[[], None]) -> int:
    """Run `run`; the most CUDA memory allocated meanwhile, in bytes (the model included)."""
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def memory_budget(gpu_memory_gb: float | None, total_bytes: int) -> int:
    """The bytes a run may allocate: the device's, or `--gpu-memory-gb` of them."""
    if gpu_memory_gb is None:
        return total_bytes
    return min(total_bytes, int(gpu_memory_gb * 2**30))


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err)
    return "out of memory" in text.lower() or "ALLOC_FAILED" in text


def release_cached_memory() -> None:
    """Between epochs and after a probe: collect garbage and empty the CUDA cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def memory_fraction(gpu_memory_gb: float, total_bytes: int) -> float:
    """The share of a device's memory that `gpu_memory_gb` GiB is (at most 1)."""
    return min(1.0, gpu_memory_gb * 2**30 / total_bytes)


def cap_gpu_memory(gpu_memory_gb: float, device: torch.device) -> float:
    """Cap this process's CUDA memory (e.g. 12 to emulate an RTX 3060); returns the fraction."""
    # "cuda" without an index means the current device; the memory calls want an index
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = memory_fraction(gpu_memory_gb, total)
    if fraction >= 1.0:
        log.warning(
            "--gpu-memory-gb %.1f is not below the device's %.1f GiB; no cap applied",
            gpu_memory_gb,
            total / 2**30,
        )
        return 1.0
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    return fraction


def choose_batch_size(
    requested: int | None,
    device: torch.device,
    fits: Callable[[int], bool] | None,
    samples_per_rank: int,
) -> int:
    """A fixed `requested` size, the CPU default, or the CUDA search (capped by the data)."""
    if requested is not None:
        return requested
    if device.type != "cuda" or fits is None:
        return min(CPU_DEFAULT_BATCH, max(samples_per_rank, 1))
    return search_batch_size(fits, MIN_BATCH, max(1, min(MAX_BATCH, samples_per_rank)))


def pick_batch_size(
    config: TrainConfig,
    model: nn.Module,
    encoding: Encoding,
    device: torch.device,
    amp: Amp,
    samples: int,
    lazy_fields: tuple[str, ...] = (),
) -> int:
    """--batch-size N, or auto: the CUDA search over real w + θ steps, 32 on CPU."""
    from bionas.trainer.step import train_step  # it imports this module

    def probe_step(batch_size: int) -> None:
        # loss scale 1: fp16 steps must not be skipped as overflowed, or the optimiser
        # state (part of the memory a real step needs) would never be allocated
        scaler = torch.amp.GradScaler("cuda", init_scale=1.0, enabled=amp.loss_scaling)
        opts = build_optimizers(model, config, amp, lazy_fields=lazy_fields)
        opts = replace(opts, w_scaler=scaler, theta_scaler=scaler)
        size = config.image_size
        images = torch.randn(batch_size, 3, size, size, device=device)
        meta = torch.zeros(batch_size, len(encoding.meta_vocabs), dtype=torch.long, device=device)
        labels = torch.randint(encoding.num_classes, (batch_size,), device=device)
        for kind in ("w", "theta") if opts.theta is not None else ("w",):
            train_step(model, images, meta, labels, kind, opts, amp)

    fits, peaks, budget = None, {}, 0
    if config.batch_size is None and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        budget = memory_budget(config.gpu_memory_gb, total)
        fits = restoring_probe(model, probe_step, budget=budget, peaks=peaks, rng_devices=[index])
    batch_size = choose_batch_size(config.batch_size, device, fits, samples)
    if batch_size in peaks:
        log.info(
            "batch size %d: its w + θ step peaked at %.2f GiB of a %.2f GiB budget "
            "(%.0f%% kept free)", batch_size, peaks[batch_size] / 2**30, budget / 2**30,
            100 * MEMORY_MARGIN,
        )  # fmt: skip
    else:
        log.info("batch size %d", batch_size)
    return batch_size
