"""Evaluation metrics on hand-made arrays (bionas.trainer.metrics)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from bionas.trainer.metrics import (
    BIN_GROUPS,
    classification_metrics,
    dna_bin_groups,
    evaluation_metrics,
)

NAMES = ["a", "b", "c"]


def probs_for(predicted: list[int], num_classes: int, second: list[int] | None = None):
    """Probabilities whose argmax is `predicted` (and whose runner-up is `second`)."""
    probs = np.full((len(predicted), num_classes), 0.01)
    for i, p in enumerate(predicted):
        probs[i, p] = 0.9
        if second is not None:
            probs[i, second[i]] = 0.05
    return probs / probs.sum(axis=1, keepdims=True)


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_accuracy_and_f1_match_a_hand_computation(no_warnings):
    # a: TP 2 FN 1 -> P 1, R 2/3, F1 0.8; b: TP 1 FP 1 FN 1 -> 0.5/0.5/0.5; c: TP 1 FP 1 -> 0.5/1/(2/3)
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_prob = probs_for([0, 0, 1, 1, 2, 2], 3)
    m = classification_metrics(y_true, y_prob, NAMES)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["f1_weighted"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 / 3) / 6)
    assert m["precision_macro"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["recall_macro"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    )
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_top_k_counts_the_true_class_among_the_k_most_probable(no_warnings):
    y_true = np.array([0, 1, 2, 3])
    # argmax right for sample 0 only; the runner-up is right for samples 1 and 2
    y_prob = probs_for([0, 0, 0, 0], 5, second=[1, 1, 2, 4])
    m = classification_metrics(y_true, y_prob, list("abcde"), top_k=2)
    assert m["accuracy"] == pytest.approx(1 / 4)
    assert m["top2_accuracy"] == pytest.approx(3 / 4)
    # with k >= number of classes every sample counts, without sklearn's warning
    assert classification_metrics(y_true, y_prob, list("abcde"))["top5_accuracy"] == 1.0


def test_roc_auc_skips_a_class_absent_from_y_true_and_says_why(no_warnings):
    y_true = np.array([0, 0, 1, 1])
    y_prob = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.4, 0.5, 0.1], [0.1, 0.7, 0.2]])
    auc = classification_metrics(y_true, y_prob, NAMES)["roc_auc"]
    assert auc["skipped"] == {"c": "no positive samples"}
    # class a: positives score 0.8, 0.3; negatives 0.4, 0.1 -> 3 of 4 pairs ordered right
    assert auc["per_class"]["a"] == pytest.approx(0.75)
    # class b: positives 0.5, 0.7; negatives 0.1, 0.6 -> 3 of 4
    assert auc["per_class"]["b"] == pytest.approx(0.75)
    assert auc["macro"] == pytest.approx(0.75)


def test_averages_ignore_classes_without_samples_and_report_them(no_warnings):
    y_true = np.array([0, 0, 1, 1])
    m = classification_metrics(y_true, probs_for([0, 0, 1, 1], 3), NAMES)
    assert m["f1_macro"] == 1.0  # class c (no samples, never predicted) does not count as 0
    assert m["classes_without_samples"] == ["c"]
    assert m["per_class"]["c"] == {"precision": None, "recall": None, "f1": None, "support": 0}


def test_a_class_never_predicted_has_no_precision_and_zero_in_the_macro_average(no_warnings):
    y_true = np.array([0, 1, 1])
    m = classification_metrics(y_true, probs_for([0, 0, 0], 2), ["a", "b"])
    assert m["per_class"]["b"]["precision"] is None
    assert m["per_class"]["b"]["recall"] == 0.0
    assert m["precision_macro"] == pytest.approx((1 / 3 + 0) / 2)


def test_subset_metrics_use_only_the_masked_samples(no_warnings):
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_prob = probs_for([0, 1, 1, 0, 2, 2], 3)
    unseen = np.array([False, True, False, True, True, False])
    result = evaluation_metrics(y_true, y_prob, NAMES, subsets={"unseen_bin": unseen, "x": None})
    assert result["all"]["n_samples"] == 6
    assert result["all"]["accuracy"] == pytest.approx(4 / 6)
    subset = result["unseen_bin"]
    assert subset["n_samples"] == 3
    assert subset["accuracy"] == pytest.approx(1 / 3)  # only sample 4 (class c) is right
    assert subset["confusion_matrix"] == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
    assert "x" not in result  # a subset that could not be computed is left out


def test_an_empty_dna_bin_is_no_bin_not_an_unseen_bin():
    groups = dna_bin_groups(["BOLD:A", "BOLD:NEW", "", "BOLD:B", ""], {"BOLD:A", "BOLD:B"})
    assert list(groups) == list(BIN_GROUPS) == ["seen_bin", "unseen_bin", "no_bin"]
    assert groups["seen_bin"].tolist() == [True, False, False, True, False]
    assert groups["unseen_bin"].tolist() == [False, True, False, False, False]
    assert groups["no_bin"].tolist() == [False, False, True, False, True]
    assert all(m.dtype == np.bool_ for m in dna_bin_groups([], {"x"}).values())


def test_single_class_one_sample_and_empty_subsets_give_json_without_warnings(no_warnings):
    single = evaluation_metrics(np.array([0, 0]), np.ones((2, 1)), ["only"])
    assert single["all"]["accuracy"] == 1.0
    assert single["all"]["roc_auc"] == {
        "macro": None,
        "per_class": {},
        "skipped": {"only": "no negative samples"},
    }
    none = {"unseen_bin": np.zeros(1, bool)}
    one = evaluation_metrics(np.array([1]), probs_for([1], 3), NAMES, subsets=none)
    assert one["all"]["accuracy"] == 1.0
    assert one["unseen_bin"] == {"n_samples": 0, "accuracy": None, "note": "no samples"}
    for result in (single, one):
        json.dumps(result, allow_nan=False)  # strict JSON: no NaN anywhere


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="expected"):
        classification_metrics(np.array([0, 1]), np.ones((2, 2)), NAMES)
    with pytest.raises(ValueError, match="outside"):
        classification_metrics(np.array([0, 3]), np.ones((2, 3)), NAMES)
    with pytest.raises(ValueError, match="unseen_bin"):
        evaluation_metrics(
            np.array([0]), np.ones((1, 3)), NAMES, subsets={"unseen_bin": np.ones(2, bool)}
        )
