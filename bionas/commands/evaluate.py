"""`bionas evaluate RUN_DIR`: metrics, plots and efficiency of a trained run on a split."""

from __future__ import annotations

from pathlib import Path

import click

DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command()
@click.argument("run_dir", type=DIR)
@click.option(
    "--dataset",
    "dataset_dir",
    type=DIR,
    default=None,
    help="Dataset to evaluate on [default: the run's own]; another dataset is mapped by "
    "class name (classes the model does not know are counted and left out).",
)
@click.option("--split", default="test", show_default=True, help="Split of the dataset.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="DataLoader worker processes (shards are split between them).")  # fmt: skip
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder [default: RUN_DIR/eval/<split>].",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--latency-runs", default=20, show_default=True, type=click.IntRange(min=1),
              help="Timed forwards at batch 1 for the median latency.")  # fmt: skip
@click.option(
    "--bn-batches",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="Search runs: train batches on which the derived network's BatchNorm statistics "
    "are re-estimated before it is evaluated (0: keep the supernet's).",
)
def command(
    run_dir: Path,
    dataset_dir: Path | None,
    split: str,
    batch_size: int,
    workers: int,
    out_dir: Path | None,
    device: str,
    latency_runs: int,
    bn_batches: int,
) -> None:
    """Evaluate RUN_DIR on a split: writes metrics.json and PNG plots.

    \b
    metrics.json: accuracy, top-5, precision/recall/F1 (macro, weighted), per-class
    report, one-vs-rest ROC AUC, confusion matrix, the same for samples whose dna_bin
    occurs in training, never does, or is empty, efficiency (parameters, size,
    FLOPs/MACs, latency), and the expected calibration error (ECE, 15 equal-width bins
    of top-1 confidence) with a reliability diagram: as trained, and with the
    temperature of RUN_DIR/calibration.json when `bionas calibrate` wrote one.

    \b
    Which network: for a search run, the headline is the derived network (argmax op
    per edge, weights inherited from the supernet, BatchNorm re-estimated on
    --bn-batches train batches); the supernet's own metrics are under "supernet". For
    a fixed genotype (e.g. RUN_DIR/final of `bionas train --retrain-epochs`), itself.

    \b
    Examples:
      bionas evaluate run/                          # test split of the run's dataset
      bionas evaluate run/ --split val --workers 4
      bionas evaluate run/ --dataset insects1m-ds/ --out run/eval/insects1m
    """
    from bionas.trainer.evaluate import EvaluateConfig, evaluate_run

    cfg = EvaluateConfig(
        run_dir=run_dir,
        dataset_dir=dataset_dir,
        split=split,
        batch_size=batch_size,
        workers=workers,
        out_dir=out_dir,
        device=device,
        latency_runs=latency_runs,
        bn_batches=bn_batches,
    )
    report = evaluate_run(cfg)
    click.echo(summary(report))


def summary(report: dict) -> str:
    """A few lines: sample counts, headline metrics, efficiency, where the files are."""
    samples, every = report["samples"], report["metrics"]["all"]
    network = report["network"]
    lines = [
        f"network: {network['name']} ({network['network']})",
        f"{report['split']} of {report['dataset_dir']}: {samples['evaluated']} samples evaluated"
        f" ({samples['unknown_class_samples']} of classes the model does not know"
        + "".join(f", {n} {reason}" for reason, n in samples["skipped"].items())
        + (f", {samples['not_read']} listed but not read" if samples["not_read"] else "")
        + ")",
        "  all:        " + _headline(every),
    ]
    for group, label in (
        ("seen_bin", "seen BIN"),
        ("unseen_bin", "unseen BIN"),
        ("no_bin", "no BIN"),
    ):
        if group in report["metrics"]:
            lines.append(f"  {label + ':':<11} " + _headline(report["metrics"][group]))
    lines.append("  " + _costs(report["efficiency"]))
    lines.append("  " + _calibration(report["calibration"]))
    if "supernet" in report:
        supernet = report["supernet"]
        lines.append("supernet (as searched, not deployable):")
        lines.append("  all:        " + _headline(supernet["metrics"]["all"]))
        lines.append("  " + _costs(supernet["efficiency"]))
    lines.append(f"wrote {report['out_dir']}/metrics.json and plots")
    return "\n".join(lines)


def _calibration(cal: dict) -> str:
    if cal["uncalibrated"]["ece"] is None:
        return "calibration: no samples"
    line = f"ECE ({cal['bins']} bins): {cal['uncalibrated']['ece']:.4f} as trained"
    if cal["calibrated"] is None:
        return line + "; no calibration.json (`bionas calibrate RUN_DIR` fits a temperature)"
    fitted, flag = cal["fitted_on"], cal.get("low_confidence")
    line += (
        f", {cal['calibrated']['ece']:.4f} with T = {cal['temperature']:.3g} "
        f"(fitted on {fitted['split']}"
        + (": the same samples, so optimistic)" if fitted["this_split"] else ")")
    )
    if flag and flag["accepted"]:
        line += (
            f"\n  low confidence (p < {flag['threshold']:.3f}): {flag['flagged']} flagged; the "
            f"{flag['accepted']} accepted are {flag['accepted_accuracy']:.2%} correct"
        )
    elif flag:
        line += f"\n  low confidence (p < {flag['threshold']:.3f}): all {flag['flagged']} flagged"
    return line


def _costs(eff: dict) -> str:
    model, cpu = eff["model"], eff["latency_ms"]["cpu"]
    gpu = eff["latency_ms"]["cuda"]
    return (
        f"model: {model['parameters']['total']:,} params, {model['size_mb']:.2f} MB, "
        f"{_giga(model['flops'])}FLOPs = {_giga(model['macs'])}MACs at {eff['image_size']} px, "
        f"CPU {cpu['median_ms']:.1f} ms" + (f", GPU {gpu['median_ms']:.2f} ms" if gpu else "")
    )


def _headline(m: dict) -> str:
    if not m.get("n_samples"):
        return "no samples"
    auc = m["roc_auc"]["macro"]
    top = next((v for k, v in m.items() if k.startswith("top") and k.endswith("_accuracy")), None)
    return (
        f"n={m['n_samples']} acc={m['accuracy']:.4f} top5={top:.4f} "
        f"F1 macro={m['f1_macro']:.4f} weighted={m['f1_weighted']:.4f} "
        f"AUC macro={'n/a' if auc is None else f'{auc:.4f}'}"
    )


def _giga(n: int) -> str:
    return f"{n / 1e9:.3g} G" if n >= 1e8 else f"{n / 1e6:.3g} M"
