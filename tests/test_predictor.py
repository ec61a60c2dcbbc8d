"""The Predictor's calibration is applied only to the network it was fitted on."""

from __future__ import annotations

import json

import pytest

from bionas.errors import BionasError
from bionas.trainer.predictor import (
    CALIBRATION_NAME,
    CALIBRATION_SCHEMA,
    calibration_of_run,
    load_calibration,
)


def _write(folder, **body):
    (folder / CALIBRATION_NAME).write_text(json.dumps({"schema": CALIBRATION_SCHEMA, **body}))


def test_no_calibration_means_temperature_one(tmp_path):
    assert load_calibration(tmp_path).temperature == 1.0


def test_a_temperature_fitted_on_the_answering_network_is_applied(tmp_path):
    _write(tmp_path, temperature=2.5, low_confidence_threshold=0.7, network="fixed")
    calibration = calibration_of_run(tmp_path, "fixed")
    assert (calibration.temperature, calibration.low_confidence) == (2.5, 0.7)


def test_a_search_runs_derived_temperature_is_not_applied_to_its_supernet(tmp_path):
    _write(tmp_path, temperature=2.5, low_confidence_threshold=0.7, network="derived")
    calibration = calibration_of_run(tmp_path, "supernet")
    assert (calibration.temperature, calibration.low_confidence) == (1.0, None)


@pytest.mark.parametrize("temperature", [0, -1])
def test_a_temperature_that_is_not_positive_is_refused(tmp_path, temperature):
    _write(tmp_path, temperature=temperature)
    with pytest.raises(BionasError, match="temperature must be > 0"):
        load_calibration(tmp_path)


def test_the_crop_rule_comes_from_the_run_when_its_dataset_is_gone(tmp_path):
    """An export made after the dataset moved used to record ingest's defaults: another
    crop, other predictions (found by review). The run records its dataset's options."""
    from bionas.trainer.predictor import run_preprocessing

    gone = tmp_path / "moved-away"
    recorded = {"size": 48, "crop_margin": 0.3, "quality": 85}
    rule = run_preprocessing(gone, 32, recorded, strict=True)
    assert (rule.ingest_size, rule.crop_margin, rule.quality) == (48, 0.3, 85)
    with pytest.raises(BionasError, match="crop rule of the run's dataset is unknown"):
        run_preprocessing(gone, 32, {}, strict=True)
    assert run_preprocessing(gone, 32, {}).crop_margin == 0.1  # predict: defaults, warned


def test_a_calibration_of_another_model_is_not_applied(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"weights v2")
    _write(tmp_path, temperature=2.5, network="fixed", model_sha256="0" * 64)
    assert calibration_of_run(tmp_path, "fixed").temperature == 1.0
