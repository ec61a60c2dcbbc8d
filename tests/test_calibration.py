"""Calibration: ECE on hand-computed cases, temperature scaling that recovers a known T,
the low-confidence threshold rule, and `bionas calibrate` -> `bionas evaluate` end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.trainer.calibration import (
    expected_calibration_error,
    fit_temperature,
    low_confidence_threshold,
    negative_log_likelihood,
    reliability_bins,
    with_temperature,
)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- expected calibration error ---------------------------------------------------------


def test_ece_of_four_samples_in_two_bins_is_the_count_weighted_gap():
    probs = np.array(
        [
            [0.9, 0.05, 0.05],  # conf 0.9, correct
            [0.1, 0.8, 0.1],  # conf 0.8, correct
            [0.6, 0.3, 0.1],  # conf 0.6, wrong (label 1)
            [0.4, 0.35, 0.25],  # conf 0.4, correct
        ]
    )
    labels = np.array([0, 1, 1, 0])
    # bin (0.5, 1]: conf (0.9 + 0.8 + 0.6) / 3, acc 2/3 -> gap 0.1; bin (0, 0.5]: gap 0.6
    assert expected_calibration_error(probs, labels, bins=2) == pytest.approx(
        3 / 4 * 0.1 + 1 / 4 * 0.6
    )
    low, high = reliability_bins(probs, labels, bins=2)
    assert (low["count"], high["count"]) == (1, 3)
    assert high["confidence"] == pytest.approx(2.3 / 3) and high["accuracy"] == pytest.approx(2 / 3)  # fmt: skip
    assert (low["lower"], low["upper"], high["upper"]) == (0.0, 0.5, 1.0)


def test_ece_is_zero_when_confidence_equals_accuracy_in_every_bin():
    # ten samples at confidence 0.8, eight of them right
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_an_overconfident_model_has_ece_equal_to_its_overconfidence():
    probs = np.tile([0.9, 0.05, 0.05], (6, 1))
    labels = np.array([0, 0, 0, 1, 2, 1])  # half right at confidence 0.9
    assert expected_calibration_error(probs, labels, bins=15) == pytest.approx(0.4)


def test_a_confidence_on_a_bin_edge_belongs_to_the_lower_bin():
    # bins ((m-1)/M, m/M]: 0.5 is in (0, 0.5], 0.6 (0.6000000000000001 as an edge) in (0.4, 0.6]
    rows = reliability_bins(np.array([[0.5, 0.3, 0.2]]), np.array([0]), bins=2)
    assert [r["count"] for r in rows] == [1, 0]
    rows = reliability_bins(np.array([[0.6, 0.4]]), np.array([0]), bins=5)
    assert [r["count"] for r in rows] == [0, 0, 1, 0, 0]
    assert rows[1]["confidence"] is None and rows[1]["accuracy"] is None


# --- temperature scaling ----------------------------------------------------------------


def calibrated_logits(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n, classes))
    cumulative = softmax(logits).cumsum(axis=1)
    labels = (rng.random((n, 1)) > cumulative).sum(axis=1)
    return logits, np.minimum(labels, classes - 1)


@pytest.mark.parametrize("true_t", [3.0, 0.5])
def test_fit_recovers_the_temperature_that_distorted_calibrated_logits(true_t):
    logits, labels = calibrated_logits(4000, 10, seed=1)
    # as evaluate hands them over: float32 probabilities of the distorted logits
    probs = softmax(logits * true_t).astype(np.float32)
    fitted = fit_temperature(probs, labels)
    assert fitted == pytest.approx(true_t, rel=0.06)
    assert fit_temperature(probs, labels) == fitted  # deterministic
    nll = negative_log_likelihood(probs, labels, fitted)
    assert nll <= negative_log_likelihood(probs, labels, 1.0)
    assert nll <= negative_log_likelihood(probs, labels, true_t) + 1e-9
    calibrated = with_temperature(probs, fitted)
    assert np.array_equal(calibrated.argmax(axis=1), probs.argmax(axis=1))  # accuracy kept
    before = expected_calibration_error(probs, labels)
    assert expected_calibration_error(calibrated, labels) < before / 3


def test_temperature_on_probabilities_equals_temperature_on_logits():
    logits, _ = calibrated_logits(50, 6, seed=2)
    assert with_temperature(softmax(logits), 2.5) == pytest.approx(softmax(logits / 2.5), abs=1e-12)


def test_underflowed_probabilities_keep_the_nll_finite():
    # a wrong answer 300 logits away: float32 softmax rounds the label's probability to 0
    probs = softmax(np.array([[300.0, 0.0], [0.0, 3.0]])).astype(np.float32)
    assert probs[0, 1] == 0
    assert np.isfinite(negative_log_likelihood(probs, np.array([1, 1])))
    assert 0.05 <= fit_temperature(probs, np.array([1, 1])) <= 20


# --- the low-confidence threshold -------------------------------------------------------


def confident(confidences, correct):
    """Two-class probabilities with these top-1 confidences; label 1 where wrong."""
    conf = np.asarray(confidences, dtype=np.float64)
    probs = np.stack([conf, 1 - conf], axis=1)
    return probs, np.where(np.asarray(correct, dtype=bool), 0, 1)


@pytest.mark.parametrize(
    ("target", "threshold", "accepted"),
    # the threshold lies midway between the last accepted and the first flagged confidence
    [(0.75, 0.65, 5), (0.95, 0.85, 3), (1.0, 0.85, 3), (0.5, 0.3, 6)],
)
def test_threshold_is_the_smallest_whose_accepted_predictions_reach_the_target(
    target, threshold, accepted
):
    # by confidence: right, right, right, wrong, right, wrong -> accepted accuracy
    # 1, 1, 1, 0.75, 0.8, 0.667
    probs, labels = confident([0.99, 0.95, 0.9, 0.8, 0.7, 0.6], [1, 1, 1, 0, 1, 0])
    order = np.random.default_rng(0).permutation(6)  # input order does not matter
    chosen = low_confidence_threshold(probs[order], labels[order], target)
    assert chosen.reached
    assert chosen.value == pytest.approx(threshold)
    assert chosen.accepted == accepted
    assert chosen.coverage == pytest.approx(accepted / 6)
    assert chosen.accepted_accuracy >= target


def test_tied_confidences_are_accepted_together():
    # 0.9 alone would be right, but a threshold cannot take one of two 0.9s
    probs, labels = confident([0.9, 0.9, 0.8], [1, 0, 1])
    assert not low_confidence_threshold(probs, labels, 0.9).reached
    assert low_confidence_threshold(probs, labels, 0.6).value == pytest.approx(0.4)


def test_an_unreachable_target_flags_every_prediction_and_says_the_best():
    probs, labels = confident([0.99, 0.9, 0.8], [0, 1, 1])
    chosen = low_confidence_threshold(probs, labels, 0.95)
    assert (chosen.reached, chosen.value, chosen.accepted) == (False, 1.0, 0)
    assert chosen.best_accuracy == pytest.approx(2 / 3)
    assert "every prediction is flagged" in chosen.rule


# --- `bionas calibrate` and `bionas evaluate` end to end --------------------------------

TRAIN_ARGS = ["--genotype", "manual", "--channels", "4", "--cells", "3", "--image-size", "32"]
TRAIN_ARGS += ["--max-steps", "8", "--batch-size", "8", "--workers", "0", "--seed", "0"]


def invoke(*args):
    from click.testing import CliRunner

    from bionas.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, torch_single_thread_module):
    """A tiny fixed-genotype run, calibrated on its val split."""
    root = tmp_path_factory.mktemp("calibrate")
    dataset = make_tiny_dataset(root / "ds", n=48, n_val=40, classes=4)
    run = root / "run"
    result = invoke("train", dataset, "--out", run, *TRAIN_ARGS)
    assert result.exit_code == 0, result.output
    result = invoke("calibrate", run, "--batch-size", "16")
    assert result.exit_code == 0, result.output
    return run, result


def test_calibrate_writes_the_temperature_and_threshold_prediction_reads(calibrated):
    from bionas.trainer.predictor import load_calibration

    run, result = calibrated
    body = json.loads((run / "calibration.json").read_text())
    assert body["schema"] == "bionas.calibration/1"
    assert body["split"] == "val" and body["network"] == "fixed"
    assert body["samples"]["fitted"] == body["samples"]["in_split"] == 40
    assert 0.05 <= body["temperature"] <= 20 and body["temperature"] != pytest.approx(1.0)
    assert isinstance(body["low_confidence_threshold"], float)
    assert 0 < body["low_confidence_threshold"] <= 1
    # fitting minimises NLL; on the split it was fitted on, ECE drops too
    assert body["nll_after"] <= body["nll_before"]
    assert body["ece_after"] <= body["ece_before"]
    assert sum(b["count"] for b in body["reliability"]["after"]) == 40
    assert len(body["reliability"]["before"]) == body["bins"] == 15
    calibration = load_calibration(run)
    assert calibration.temperature == body["temperature"]
    assert calibration.low_confidence == body["low_confidence_threshold"]
    assert f"T = {body['temperature']:.4g}" in result.output
    assert f"{body['ece_before']:.4f} -> {body['ece_after']:.4f}" in result.output
    assert not list(run.glob("*.tmp"))


def test_evaluate_reports_ece_before_and_after_and_draws_the_reliability_diagram(calibrated):
    from PIL import Image

    run, _ = calibrated
    result = invoke("evaluate", run, "--split", "val", "--latency-runs", "1")
    assert result.exit_code == 0, result.output
    out = run / "eval" / "val"
    report = json.loads((out / "metrics.json").read_text())
    body = json.loads((run / "calibration.json").read_text())
    cal = report["calibration"]
    # the same network on the same samples as calibrate saw
    assert cal["uncalibrated"]["ece"] == pytest.approx(body["ece_before"], abs=1e-6)
    assert cal["calibrated"]["ece"] == pytest.approx(body["ece_after"], abs=1e-6)
    assert cal["temperature"] == body["temperature"]
    assert cal["fitted_on"]["this_split"] is True
    # on the split it was chosen on, the threshold accepts what calibrate said it would
    flag = cal["low_confidence"]
    assert flag["threshold"] == body["low_confidence_threshold"]
    assert flag["accepted"] == body["threshold"]["accepted"]
    assert flag["accepted"] + flag["flagged"] == 40
    assert "optimistic" in result.output and "ECE (15 bins)" in result.output
    assert report["plots"]["reliability"] == "reliability.png"
    with Image.open(out / "reliability.png") as image:
        assert image.format == "PNG" and min(image.size) >= 200


def test_calibrate_refuses_a_split_the_dataset_lacks(calibrated):
    run, _ = calibrated
    before = (run / "calibration.json").read_bytes()
    result = invoke("calibrate", run, "--split", "test")
    assert result.exit_code == 1
    assert "no 'test' split" in result.output and "--split" in result.output
    assert "Traceback" not in result.output
    assert (run / "calibration.json").read_bytes() == before


def test_calibrate_refuses_an_empty_split(calibrated, tmp_path):
    import shutil

    run, _ = calibrated
    empty = make_tiny_dataset(tmp_path / "ds", n=8, n_val=0, classes=4)
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "dataset_dir": str(empty)}))
    result = invoke("calibrate", moved)
    assert result.exit_code == 1
    assert "split 'val'" in result.output and "is empty" in result.output
    assert "Traceback" not in result.output


def test_calibrate_help_warns_that_a_split_the_model_was_chosen_on_is_not_independent():
    result = invoke("calibrate", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--arch-data val" in text and "not independent" in text


def test_cli_defaults_are_the_library_defaults():
    from bionas.commands import calibrate
    from bionas.trainer import calibration

    assert calibrate.DEFAULT_BINS == calibration.DEFAULT_BINS
    assert calibrate.DEFAULT_TARGET_ACCURACY == calibration.DEFAULT_TARGET_ACCURACY


def test_a_split_with_no_error_keeps_temperature_one_and_says_why():
    """An all-right split drives the NLL fit to the smallest T: every probability would
    become 1 and the low-confidence flag meaningless (found by review)."""
    from bionas.trainer.calibration import fit_calibration

    probs, labels = confident([0.9, 0.8, 0.7, 0.6], [1, 1, 1, 1])
    body = fit_calibration(probs, labels, bins=5, target_accuracy=0.95)
    assert body["temperature"] == 1.0 and body["fitted_temperature"] < 0.1
    assert "nothing to fit on" in body["kept_at_one"]


def test_non_finite_probabilities_are_refused_by_name():
    from bionas.errors import BionasError
    from bionas.trainer.calibration import fit_calibration

    probs, labels = confident([0.9, 0.8, 0.7], [1, 0, 1])
    probs[1, 0] = np.nan
    with pytest.raises(BionasError, match="non-finite probabilities"):
        fit_calibration(probs, labels, bins=5, target_accuracy=0.95)


def test_a_calibration_goes_stale_when_the_model_is_trained_on(calibrated):
    """calibrate records the model it was fitted on; a later model.pt (a resumed run)
    makes prediction fall back to T = 1 with a warning instead of a stale temperature."""
    from bionas.shards.writer import file_sha256
    from bionas.trainer.predictor import calibration_of_run

    run, _ = calibrated
    body = json.loads((run / "calibration.json").read_text())
    assert body["model_sha256"] == file_sha256(run / "model.pt")
    assert calibration_of_run(run, "fixed").temperature == body["temperature"]
    copy = run.parent / "retrained"
    shutil.copytree(run, copy)
    (copy / "model.pt").write_bytes((copy / "model.pt").read_bytes() + b"\0")
    assert calibration_of_run(copy, "fixed").temperature == 1.0
