"""w-step time with a 324k-row `dna_bin` table: AdamW on every row vs lazily-updated rows.

The model is built directly (no dataset): `dna_bin` with BIOSCAN-5M's 324,000 BINs and
`class` (3 values), the searched supernet (--cells, --channels) at a small --image-size so
the table's share of a CPU step is visible. Each w step is the real `train_step` (forward,
backward, clip, optimiser step) on a batch of --batch-size random samples.

  dense  --sparse-embeddings off: AdamW (wd 1e-4) on every row of every table (baseline)
  lazy   --sparse-embeddings auto: SparseAdam on dna_bin's looked-up rows, AdamW on the rest

Then the table alone (lookup, backward, clip, step) over vocabulary sizes: where lazy rows
start to pay (`AUTO_SPARSE_ROWS`). Memory: the optimisers' state (both keep two fp32
moments per row) and the table's gradient (dense V x d, or the batch's rows).

    python benchmarks/bench_sparse_embeddings.py --quick   # fewer steps
    python benchmarks/bench_sparse_embeddings.py
"""

from __future__ import annotations

import argparse
import time

import torch
from reporting import LoadMeter, format_table, machine_line, wait_for_quiet
from torch import nn

from bionas.trainer.config import Amp, TrainConfig
from bionas.trainer.model import ModelConfig, build_model
from bionas.trainer.optimizers import build_optimizers, state_bytes
from bionas.trainer.step import train_step

BINS = 324_000
FP32 = Amp(False, torch.float32, "cpu")


def setup(mode: str, args: argparse.Namespace):
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=16, meta_cardinalities=(("dna_bin", BINS), ("class", 3)),
                      channels=args.channels, cells=args.cells)  # fmt: skip
    model = build_model(cfg)
    config = TrainConfig(dataset_dir=".", run_dir=".", sparse_embeddings=mode)
    return model, build_optimizers(model, config, FP32)


def w_steps_ms(args: argparse.Namespace) -> dict[str, tuple[float, int, int]]:
    """Per mode: median w-step time (ms), optimiser state bytes, dna_bin gradient bytes.
    The two modes' steps alternate, so a busy neighbour slows both alike."""
    runs = {mode: setup(mode, args) for mode in ("off", "auto")}
    times: dict[str, list[float]] = {mode: [] for mode in runs}
    b, size = args.batch_size, args.image_size
    images = torch.randn(b, 3, size, size)
    labels = torch.randint(16, (b,))
    for i in range(args.steps + 2):
        meta = torch.stack([torch.randint(BINS, (b,)), torch.randint(3, (b,))], dim=1)
        for mode, (model, opts) in runs.items():
            start = time.perf_counter()
            train_step(model, images, meta, labels, "w", opts, FP32)
            if i >= 2:  # the first steps allocate the optimiser state
                times[mode].append(time.perf_counter() - start)
    out = {}
    for mode, (model, opts) in runs.items():
        grad = model.metadata_encoder.embeddings["dna_bin"].weight.grad
        if grad.is_sparse:
            grad = grad.coalesce()
            grad_bytes = grad.values().nbytes + grad.indices().nbytes
        else:
            grad_bytes = grad.nbytes
        median = sorted(times[mode])[len(times[mode]) // 2] * 1e3
        out[mode] = (median, state_bytes(opts.w), grad_bytes)
    return out


def table_step_ms(rows: int, sparse: bool, batch: int, steps: int) -> float:
    table = nn.Embedding(rows, 32, sparse=sparse)
    params = list(table.parameters())
    opt = torch.optim.SparseAdam(params) if sparse else torch.optim.AdamW(params, weight_decay=1e-4)  # fmt: skip
    times = []
    for i in range(steps + 2):
        index = torch.randint(rows, (batch,))
        start = time.perf_counter()
        table.zero_grad(set_to_none=True)
        table(index).sum().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 steps instead of 20")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--cells", type=int, default=5)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.steps = 5 if args.quick else 20
    print(machine_line())
    print(f"torch threads {torch.get_num_threads()}; batch {args.batch_size}, image "
          f"{args.image_size}px, {args.cells} cells, C={args.channels}, dna_bin {BINS:,} rows")  # fmt: skip
    wait_for_quiet(60, cores=torch.get_num_threads())
    with LoadMeter(torch.get_num_threads()) as meter:
        measured = w_steps_ms(args)
    (dense_ms, dense_state, dense_grad), (lazy_ms, lazy_state, lazy_grad) = measured.values()
    print(f"w steps: {meter.load}")
    mib = 2**20
    print(format_table(
        ["w step", "dense AdamW (off)", "lazy rows (auto)", "ratio"],
        [["median ms", f"{dense_ms:.1f}", f"{lazy_ms:.1f}", f"{dense_ms / lazy_ms:.2f}x"],
         ["optimiser state MiB", f"{dense_state / mib:.1f}", f"{lazy_state / mib:.1f}",
          f"{dense_state / lazy_state:.2f}x"],
         ["dna_bin gradient MiB", f"{dense_grad / mib:.2f}", f"{lazy_grad / mib:.3f}",
          f"{dense_grad / lazy_grad:.0f}x"]],
    ))  # fmt: skip
    rows = []
    wait_for_quiet(60, cores=torch.get_num_threads())
    for vocab in (256, 1024, 4096, 16_384, 65_536, BINS):
        dense = table_step_ms(vocab, False, args.batch_size, args.steps * 5)
        lazy = table_step_ms(vocab, True, args.batch_size, args.steps * 5)
        rows.append([f"{vocab:,}", f"{dense:.3f}", f"{lazy:.3f}", f"{dense / lazy:.2f}x"])
    print("\nthe table alone (32-d rows): lookup, backward, clip, step")
    print(format_table(["rows", "AdamW ms", "SparseAdam ms", "ratio"], rows))


if __name__ == "__main__":
    main()
