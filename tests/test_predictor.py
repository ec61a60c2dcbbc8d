"""The Predictor's calibration is applied only to the network it was fitted on."""

from __future__ import annotations

import json

import pytest

from bionas.errors import BionasError
from bionas.trainer.predictor import (
    CALIBRATION_NAME,
    CALIBRATION_SCHEMA,
    _calibration_for,
    load_calibration,
)


def _write(folder, **body):
    (folder / CALIBRATION_NAME).write_text(json.dumps({"schema": CALIBRATION_SCHEMA, **body}))


def test_no_calibration_means_temperature_one(tmp_path):
    assert load_calibration(tmp_path).temperature == 1.0


def test_a_temperature_fitted_on_the_answering_network_is_applied(tmp_path):
    _write(tmp_path, temperature=2.5, low_confidence_threshold=0.7, network="fixed")
    calibration = _calibration_for(tmp_path, "fixed")
    assert (calibration.temperature, calibration.low_confidence) == (2.5, 0.7)


def test_a_search_runs_derived_temperature_is_not_applied_to_its_supernet(tmp_path):
    _write(tmp_path, temperature=2.5, low_confidence_threshold=0.7, network="derived")
    calibration = _calibration_for(tmp_path, "supernet")
    assert (calibration.temperature, calibration.low_confidence) == (1.0, None)


@pytest.mark.parametrize("temperature", [0, -1])
def test_a_temperature_that_is_not_positive_is_refused(tmp_path, temperature):
    _write(tmp_path, temperature=temperature)
    with pytest.raises(BionasError, match="temperature must be > 0"):
        load_calibration(tmp_path)
