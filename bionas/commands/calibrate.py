"""`bionas calibrate RUN_DIR`: fit the temperature and the low-confidence threshold."""

from __future__ import annotations

from pathlib import Path

import click

# trainer.calibration's defaults, spelled out: importing it (torch) would slow `bionas --help`
DEFAULT_BINS, DEFAULT_TARGET_ACCURACY = 15, 0.95


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--split",
    default="val",
    show_default=True,
    help="Split of the run's dataset to fit on: one the model was not trained or selected on.",
)
@click.option("--bins", default=DEFAULT_BINS, show_default=True, type=click.IntRange(min=1),
              help="Equal-width confidence bins of the ECE and the reliability diagram.")  # fmt: skip
@click.option(
    "--target-accuracy",
    default=DEFAULT_TARGET_ACCURACY,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="The low-confidence threshold is the smallest calibrated probability whose "
    "accepted predictions (p >= threshold) were this accurate on the split.",
)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="DataLoader worker processes (shards are split between them).")  # fmt: skip
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--bn-batches", default=20, show_default=True, type=click.IntRange(min=0),
              help="Search runs: as `bionas evaluate --bn-batches` (the derived network).")  # fmt: skip
def command(
    run_dir: Path,
    split: str,
    bins: int,
    target_accuracy: float,
    batch_size: int,
    workers: int,
    device: str,
    bn_batches: int,
) -> None:
    """Fit a temperature T and the low-confidence threshold on a split; writes
    RUN_DIR/calibration.json, which predict, export and evaluate then use.

    T is one scalar, the one that minimises the negative log-likelihood of
    softmax(logits / T) on the split (temperature scaling, Guo et al. 2017); it never
    changes a predicted class, only how sure the model says it is. Prints the expected
    calibration error (ECE: top-1 confidence in --bins equal-width bins) and the NLL,
    before and after.

    The low-confidence threshold t: predictions whose calibrated top-1 probability is
    below t are flagged for a person to check. t is the smallest threshold whose
    accepted predictions (p >= t) were at least --target-accuracy correct on the split,
    so the fewest photos go to review; when no threshold reaches the target, t = 1.0
    and every prediction is flagged.

    The split must be independent of the model: if θ or the model was chosen on the
    val split (e.g. `--arch-data val`, or a search strategy that scores candidates on
    val), the val split is not independent, T comes out too small and confidence too
    high on new photos: fit on another held-out split with --split. Fitting on test
    makes test metrics with T optimistic.

    Which network: the one `bionas evaluate` reports as headline. For a search run that
    is the derived network, while `bionas predict` on that folder answers with the
    supernet: calibrate the final model (RUN_DIR/final), the one you deploy.

    \b
    Examples:
      bionas calibrate run/final/                    # on the val split
      bionas calibrate run/final/ --target-accuracy 0.98
      bionas calibrate run/final/ --split calib --workers 4
    """
    from bionas.trainer.calibration import CalibrateConfig, calibrate_run

    cfg = CalibrateConfig(
        run_dir=run_dir,
        split=split,
        bins=bins,
        target_accuracy=target_accuracy,
        batch_size=batch_size,
        workers=workers,
        device=device,
        bn_batches=bn_batches,
    )
    body = calibrate_run(cfg)
    click.echo(summary(body))
    for note in body["notes"]:
        click.echo(f"note: {note}", err=True)


def summary(body: dict) -> str:
    """A few lines: what was fitted on what, T, ECE and NLL before -> after, the threshold."""
    samples, threshold = body["samples"], body["threshold"]
    unknown = samples["unknown_class_samples"]
    lines = [
        f"network: {body['network']}; {body['split']} of {body['dataset_dir']}: "
        f"{samples['fitted']} samples fitted on"
        + (f" ({unknown} of classes the model does not know)" if unknown else ""),
        f"  temperature T = {body['temperature']:.4g} (1 = as trained; > 1: it was overconfident)",
        f"  ECE ({body['bins']} bins): {body['ece_before']:.4f} -> {body['ece_after']:.4f}",
        f"  NLL:           {body['nll_before']:.4f} -> {body['nll_after']:.4f}",
        f"  accuracy {body['accuracy']:.4f} (T does not change it)",
    ]
    if threshold["reached"]:
        lines.append(
            f"  low-confidence threshold {threshold['value']:.4f}: predictions with p >= it "
            f"were {threshold['accepted_accuracy']:.2%} correct ({threshold['accepted']} of "
            f"{samples['fitted']}, {threshold['coverage']:.1%} accepted), the rest are flagged"
        )
    else:
        lines.append(
            f"  low-confidence threshold 1.0: no threshold reached {threshold['target_accuracy']:.2%}"
            f" (best {threshold['best_accuracy']:.2%}), every prediction is flagged"
        )
    lines.append(f"wrote {Path(body['run_dir']) / 'calibration.json'}")
    return "\n".join(lines)
