"""`bionas train DATASET_DIR --out RUN_DIR`: BioAutoML-NAS search training from shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

DIR = click.Path(exists=True, file_okay=False, path_type=Path)
FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
INT1 = click.IntRange(min=1)


def parse_batch_size(value: Any) -> int | None:
    """`auto` -> None (search on CUDA, 32 on CPU); otherwise a positive integer."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a number") from None
    if size < 1:
        raise click.BadParameter(f"must be >= 1, got {size}")
    return size


def parse_meta_fields(value: Any) -> tuple[str, ...] | None:
    """`dna_bin,class` (or a TOML list) -> a tuple; `none` or empty -> no metadata."""
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    fields = tuple(s.strip() for s in items if s.strip())
    return () if fields in ((), ("none",)) else fields


def parse_lr_theta(value: Any) -> float | None:
    """`auto` -> None (`auto_lr_theta`); otherwise a number."""
    if str(value).strip().lower() == "auto":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a number") from None


def parse_betas(value: Any) -> tuple[float, ...]:
    """`0.5,0.999` (or a TOML list) -> (0.5, 0.999)."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    try:
        return tuple(float(s) for s in items)
    except (TypeError, ValueError):
        raise click.BadParameter(f"{value!r} is not two numbers like 0.5,0.999") from None


CONVERT = {
    "batch_size": parse_batch_size,
    "meta_fields": parse_meta_fields,
    "theta_betas": parse_betas,
    "lr_theta": parse_lr_theta,
}


@click.command("train", context_settings={"max_content_width": 100})
@click.argument("dataset_dir", type=DIR)
@click.option(
    "--out",
    "run_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="RUN_DIR: config, checkpoints, logs and model.pt go here.",
)
@click.option(
    "--config",
    "config_file",
    type=FILE,
    help="TOML file of options (keys as the long options, e.g. batch_size = 64); "
    "options given on the command line win.",
)
@click.option("--target", help="Field to predict [default: the dataset's target].")
@click.option(
    "--meta-fields",
    help="Comma list of metadata fields, or 'none' [default: fields that cannot "
    "leak the target: dna_bin plus the ranks above it, e.g. dna_bin,class for order].",
)
@click.option(
    "--allow-target-leakage",
    is_flag=True,
    help="Accept metadata fields at or below the target (the paper's setting).",
)
@click.option(
    "--fusion",
    # the names of bionas.trainer.fusion.FUSIONS (importing it, torch, would slow --help)
    type=click.Choice(
        [
            "concat",
            "gated",
            "bilinear",
            "cross_attention",
            "transformer",
            "multihead",
            "progressive",
            "ensemble",
        ]
    ),  # fmt: skip
    default="concat",
    show_default=True,
    help="How the image and metadata embeddings are combined (the paper's Table I; fusion "
    "parameters vs concat at D = 256): concat (the paper's: one head on [image; metadata]), "
    "gated (per-feature gate, 1.5x), bilinear (low-rank bilinear pooling, rank 256, 1.5x), "
    "cross_attention (image tokens attend to metadata tokens and back, 4.9x), transformer "
    "(2 blocks over [CLS; image tokens; metadata tokens], 8.3x; attention FLOPs grow with "
    "the feature map), multihead (4 heads each weighing the two modalities in its own "
    "sub-space, 1.5x), progressive (FiLM by the metadata after every cell, then concat, "
    "1.8x), ensemble (image and metadata heads, logits mixed by a learned weight, 1.03x). "
    "With --meta-fields none only concat, gated and transformer apply.",
)
@click.option("--epochs", type=INT1, default=10, show_default=True)
@click.option("--max-steps", type=INT1, help="Stop after this many steps in all (checkpointed).")
@click.option(
    "--batch-size",
    default="auto",
    show_default=True,
    help="N, or auto: the largest of 32..512 whose train step fits the GPU with a 10% margin "
    "(32 on CPU). A step that runs out of memory halves it (not below 32) and the run goes "
    "on. With --resume: the run's last size, or N from where it stopped.",
)
@click.option(
    "--gpu-memory-gb",
    type=float,
    help="Cap this process's GPU memory, e.g. 12 to emulate an RTX 3060.",
)
@click.option("--image-size", type=INT1, default=224, show_default=True)
@click.option(
    "--cells",
    type=INT1,
    default=5,
    show_default=True,
    help="Cells in the image encoder (ignored with --genotype).",
)
@click.option("--channels", type=INT1, default=16, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="DataLoader worker processes (resume with the same number).",
)
@click.option(
    "--decode",
    type=click.Choice(["auto", "cpu", "gpu"]),
    default="auto",
    show_default=True,
    help="Where JPEGs are decoded: cpu: PIL in the --workers; gpu: the training process "
    "decodes each batch with torchvision's decode_jpeg on the training device (nvJPEG on "
    "CUDA; on CPU the same code, in one process), for when too few cores feed the GPU. "
    "auto: cpu, on CUDA too until benchmarks/bench_decode.py on a GPU measures gpu "
    "faster end to end. The two give slightly different pixels, so a run is not "
    "bit-identical across a switch (allowed on --resume); config.json records the choice.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Torch CPU threads of the training process [default on CPU with --workers W: "
    "the cores minus W, at least 1 (threads sharing a core with a busy worker stall each "
    "other); else torch's, one per core].",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--lr-w",
    type=float,
    default=1e-3,
    show_default=True,
    help="AdamW learning rate of the weights.",
)
@click.option(
    "--sparse-embeddings",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Metadata tables whose rows only a batch's lookups update (SparseAdam at --lr-w, "
    "no weight decay) instead of AdamW stepping every row: auto: tables of >= 65,536 rows "
    "(BIOSCAN-5M's dna_bin), dense under torchrun; on: every table (one process only); "
    "off: AdamW on all (the paper's setting, and a resumed run's from before this option).",
)
@click.option(
    "--lr-theta",
    default="3e-4",
    show_default=True,
    help="Learning rate of the architecture logits θ (paper: 3e-4), or auto: 3e-4 when the "
    "search has at least DARTS' 19,550 θ steps, else 5.865 / θ steps (the total distance "
    "Adam could move a logit in DARTS' search, spread over the steps there are). Adam moves "
    "a logit by at most about lr per θ step, so at 3e-4 a short search leaves α flat.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue RUN_DIR from checkpoints/last.pt with its stored options.",
)
@click.option(
    "--genotype",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Train this fixed architecture instead of searching (every batch updates the "
    "weights): a genotype.json (from `bionas derive`), or a built-in cell repeated over "
    "--cells: `manual` (the paper's E012 hand-designed network; ours: z1 = D3(x), "
    "z2 = SK(x) + D3(z1), a ResNet basic block) or `pool_skip` (no learned spatial filter).",
)
@click.option(
    "--backbone",
    metavar="NAME",
    help="A torchvision classification model as the image encoder instead of the searched "
    "cells (resnet18, vgg16, densenet121, efficientnet_b0, convnext_tiny, vit_b_16, swin_t, "
    "...): its last layer replaced by a Linear to the embedding, with the same metadata "
    "encoder, fusion and loop (weights only, no θ); the paper's Table II baselines. From "
    "scratch unless --weights.",
)
@click.option(
    "--weights",
    type=FILE,
    help="A local state dict for --backbone (e.g. torch.save(torchvision.models.resnet18("
    "weights='DEFAULT').state_dict(), FILE), or a backbone run's model.pt); its classifier "
    "is dropped. Nothing is ever downloaded.",
)
@click.option(
    "--checkpoint-every",
    type=INT1,
    help="Also checkpoint every N steps (always at the end of each epoch).",
)
@click.option(
    "--log-every",
    type=INT1,
    default=50,
    show_default=True,
    help="Read the steps' loss, accuracy and gradient norm from the device every N steps "
    "(one host sync for all N; the GPU never waits for the host in between). steps.jsonl "
    "still gets one line per step, written N at a time; the progress bar and TensorBoard "
    "follow; epoch records stay exact.",
)
@click.option(
    "--amp/--no-amp", default=None, help="Mixed precision [default: on with CUDA, off on CPU]."
)
@click.option(
    "--amp-dtype",
    type=click.Choice(["fp16", "bf16"]),
    help="fp16 with loss scaling (CUDA default, the paper's) or bf16 (CPU --amp).",
)
@click.option(
    "--compile",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="torch.compile (inductor) the model's forward, for train steps and evaluation; "
    "same losses within float rounding; the first step of each kind (w, θ, evaluation) "
    "compiles (minutes on CPU). auto: off: on CPU the compile outweighs the faster "
    "steps for all but runs of thousands of steps (benchmarks/bench_step_options.py), "
    "and on CUDA it is unmeasured until benchmarks/bench_gpu.py times it. May change on "
    "--resume; refused for --search other than darts (a new path every step).",
)
@click.option(
    "--channels-last",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Model weights and input images in channels_last (NHWC) memory format; same "
    "losses within float rounding. auto: on on CPU (a supernet step 1.26-1.36x as fast, "
    "benchmarks/bench_step_options.py); off on CUDA until benchmarks/bench_gpu.py "
    "measures it. May change on --resume.",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--prune-threshold",
    type=float,
    default=1e-6,
    show_default=True,
    help="Ops whose α is below this are not computed.",
)
@click.option(
    "--dilated",
    type=click.Choice(["full", "separable"]),
    default="full",
    show_default=True,
    help="Dilated convs as full convs (paper) or separable.",
)
@click.option(
    "--ops",
    type=click.Choice(["full", "reduced", "conv-only"]),
    default="full",
    show_default=True,
    help="The supernet's primitive set (the paper's Table I: 10, 6 and 4 ops; it does not "
    "list the smaller two, so these are ours). They nest and all keep zero, through which "
    "the search cuts an edge. full: all ten. reduced: one op per role: zero, skip, max pool, "
    "dw-separable 3x3, dilated 3x3, 1x1 conv (no 5x5 kernels, SE or avg pool). conv-only: "
    "zero and those three convs (no parameter-free path). Only the set's ops are built; the "
    "others' α is 0.",
)
@click.option(
    "--search",
    type=click.Choice(["darts", "random", "evolution", "reinforce", "enas"]),
    default="darts",
    show_default=True,
    help="darts: the paper's gradient-based Algorithm 1. The others share one protocol: "
    "--epochs of weight steps on the supernet, each batch through one uniformly drawn path "
    "(enas: drawn from its policy), no θ; then genotypes are scored on the first "
    "--search-val-batches validation batches with those shared weights (BatchNorm on each "
    "batch's statistics). random: --search-evaluations uniform genotypes, best kept. "
    "evolution: regularized evolution (--population, --sample-size, one-edge mutations, the "
    "oldest dies). reinforce: a policy of logits per edge (not an LSTM) trained with "
    "REINFORCE on val accuracy, moving-average baseline. enas: that policy and the shared "
    "weights trained in alternation, each epoch. Each writes RUN_DIR/genotype.json, "
    "search_history.jsonl and search.json (what was spent). A resume redoes the scoring "
    "after the last epoch. Ignored with --genotype.",
)
@click.option(
    "--search-evaluations",
    type=INT1,
    default=32,
    show_default=True,
    help="Genotypes scored with shared weights in all (not darts; enas spreads them over "
    "the epochs as policy steps, then scores 8 final candidates).",
)
@click.option(
    "--search-val-batches",
    type=INT1,
    default=8,
    show_default=True,
    help="Validation batches each genotype is scored on (the same batches for all).",
)
@click.option("--population", type=click.IntRange(min=2), default=8, show_default=True,
              help="Evolution: population size.")  # fmt: skip
@click.option("--sample-size", type=INT1, default=3, show_default=True,
              help="Evolution: members drawn per tournament; the best is mutated.")  # fmt: skip
@click.option("--policy-lr", type=float, default=0.05, show_default=True,
              help="reinforce, enas: Adam learning rate of the policy logits.")  # fmt: skip
@click.option(
    "--theta-optimizer",
    type=click.Choice(["adam", "adamw"]),
    default="adam",
    show_default=True,
    help="adam: coupled L2 on θ (paper); adamw: decoupled.",
)
@click.option(
    "--stem",
    type=click.Choice(["learned", "transpose_symmetric"]),
    default="learned",
    show_default=True,
    help="transpose_symmetric: stem kernels constrained to w = wᵀ, so only the cells can "
    "tell a structure from its mirror image across the diagonal; a control for search "
    "experiments on `bionas synth --task pairs` (see BENCHMARKS.md), not for real data.",
)
@click.option(
    "--theta-betas",
    default="0.5,0.999",
    show_default=True,
    help="Adam betas of θ. The paper gives none; 0.5,0.999 is DARTS' (a short memory suits "
    "logits whose gradient changes as w trains); 0.9,0.999 is torch's default, which bionas "
    "0.1 used.",
)
@click.option(
    "--search-bn-affine",
    is_flag=True,
    help="Learnable BatchNorm scale/shift inside the supernet's candidate ops. Off by default, "
    "as in DARTS: with it an op can grow its output while its α shrinks. A fixed genotype "
    "always trains with affine BN.",
)
@click.option(
    "--warmup-epochs",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Epochs that update only the weights before the search starts.",
)
@click.option(
    "--retrain-epochs",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="After the search: derive the genotype (RUN_DIR/genotype.json) and train it from "
    "scratch for this many epochs in RUN_DIR/final, the model to evaluate and deploy. "
    "0: search only (derive and retrain later with `bionas derive` + `--genotype`).",
)
@click.option(
    "--arch-data",
    type=click.Choice(["interleaved", "heldout"]),
    default="interleaved",
    show_default=True,
    help="θ steps on the training stream (paper), or on held-out whole train shards "
    "(10%, at least 1; w steps read the others).",
)
@click.option(
    "--meta-dropout",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Replace each metadata value by unknown with this probability (training only).",
)
@click.option(
    "--shuffle-buffer",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Samples per worker in the shuffle buffer.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Fail on the first corrupt shard or sample instead of skipping it.",
)
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
@click.pass_context
def command(ctx: click.Context, dataset_dir: Path, run_dir: Path, config_file: Path | None,
            **options: Any) -> None:  # fmt: skip
    """Train BioAutoML-NAS on DATASET_DIR (written by `bionas ingest`) into RUN_DIR.

    Even batches update the weights (AdamW), odd batches the architecture logits θ
    (Adam), as in the paper's Algorithm 1. Every epoch writes RUN_DIR/checkpoints/last.pt
    and model.pt; logs go to steps.jsonl, epochs.jsonl and alphas.jsonl (events.jsonl: a
    batch halved after running out of memory, or changed by --resume --batch-size N).

    \b
    Examples:
      bionas train ds/ --out run/
      bionas train ds/ --out run/ --epochs 30 --gpu-memory-gb 12
      bionas train ds/ --out run/ --resume              # after a crash or Ctrl-C
      bionas train ds/ --out run/ --resume --batch-size 32   # go on in smaller batches
      bionas train ds/ --out small/ --device cpu --image-size 64 --batch-size 16 \\
             --cells 3 --channels 8 --max-steps 50
      bionas train ds/ --out run/ --retrain-epochs 20   # search, derive, final model
      bionas derive run/ && bionas train ds/ --out fixed/ --genotype run/genotype.json
      bionas train ds/ --out r18/ --backbone resnet18   # a Table II baseline (no θ)
      bionas train ds/ --out evo/ --search evolution --search-evaluations 100 \\
             --ops reduced --retrain-epochs 20     # Table I: another search, fewer ops
      bionas train ds/ --out paper/ --meta-fields dna_bin,class,family \\
             --allow-target-leakage                     # the paper's leaky setting
      torchrun --nproc-per-node 4 -m bionas train ds/ --out run/   # 4 GPUs (DDP)
    """
    from bionas.errors import BionasError
    from bionas.shards.reader import CorruptDataError
    from bionas.trainer.checkpoint import stored_config
    from bionas.trainer.config import TrainConfig, read_toml_options
    from bionas.trainer.distributed import launched_rank, process_group
    from bionas.trainer.final import final_run_dir, search_and_retrain

    try:
        given = read_toml_options(config_file) if config_file else {}
        for name, value in options.items():
            if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT:
                given[name] = value
        given = {k: CONVERT.get(k, lambda v: v)(v) for k, v in given.items()}
        base = {"dataset_dir": dataset_dir, "run_dir": run_dir}
        if given.get("resume"):
            stored = stored_config(run_dir)
            stored.pop("max_steps", None)  # a run stopped by --max-steps goes on to --epochs
            base = {**stored, **base}
        config = TrainConfig.from_dict({**base, **given})
    except (ValueError, click.BadParameter) as err:
        if launched_rank() != 0:  # every rank read the same options: rank 0 says it once
            ctx.exit(1)
        raise BionasError(str(err)) from None

    # Under torchrun: one rank of a distributed run (bionas.trainer.distributed).
    with process_group(config.device) as dist:
        epochs = {"n": config.epochs}

        def on_stage(record: dict) -> None:
            if not dist.is_main:
                return
            if record["stage"] == "derive":
                click.echo(record["text"].rstrip())
                click.echo(f"wrote {record['genotype']}")
            elif record["stage"] == "final":
                epochs["n"] = record["epochs"]
                click.echo(f"training the derived genotype from scratch in {record['run_dir']}")

        def on_epoch(record: dict) -> None:
            if not config.quiet and dist.is_main:
                click.echo(epoch_line(record, epochs["n"]), err=True)

        try:
            histories = search_and_retrain(config, on_stage=on_stage, on_epoch=on_epoch, dist=dist)
        except CorruptDataError as err:
            raise BionasError(last_line(str(err))) from None
    if dist.is_main:
        click.echo(f"trained {len(histories['search'])} epoch(s); run directory: {run_dir}")
        if "final" in histories:
            final = final_run_dir(run_dir)
            click.echo(f"final model: {final} ({len(histories['final'])} epoch(s))")
            click.echo(f"next: bionas evaluate {final}")
        elif config.backbone:
            click.echo(f"next: bionas evaluate {run_dir}")
        else:
            click.echo(f"next: bionas derive {run_dir} && bionas evaluate {run_dir}")


def epoch_line(record: dict, epochs: int) -> str:
    """One human line per epoch (the full record is in epochs.jsonl)."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}",
             f"acc {record['train_acc']:.3f}"]  # fmt: skip
    if record.get("val_acc") is not None:
        parts += [f"val_loss {record['val_loss']:.4f}", f"val_acc {record['val_acc']:.3f}"]
    if record.get("img_per_s"):
        parts.append(f"{record['img_per_s']:.0f} img/s")
    if "alpha_entropy_mean" in record:
        parts.append(
            f"α entropy {record['alpha_entropy_mean']:.3f}, skip {record['skip_count']}, "
            f"pruned {record['pruned_ops']}"
        )
    if "skipped" in record:
        parts.append(skipped_text(record["skipped"]))
    if any((record.get("theta_skipped") or {}).values()):
        parts.append("θ: " + skipped_text(record["theta_skipped"]))
    if any((record.get("val_skipped") or {}).values()):
        parts.append("val: " + skipped_text(record["val_skipped"]))
    return "  ".join(parts)


def skipped_text(skipped: dict) -> str:
    """The epoch's broken shards (always: 0 says every shard read matched manifest.json),
    the samples they lost, and any other samples skipped."""
    text = f"broken shards {skipped.get('broken_shards', 0)}"
    if skipped.get("lost_samples"):
        text += f" (~{skipped['lost_samples']} samples lost)"
    others = [f"{n} {k.replace('_', ' ')}" for k, n in skipped.items()
              if n and k not in ("broken_shards", "lost_samples")]  # fmt: skip
    return text + (f", skipped {', '.join(others)}" if others else "")


def last_line(message: str) -> str:
    """A DataLoader worker's error arrives with its traceback; keep the message."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[-1].split(": ", 1)[-1] if len(lines) > 1 else message
