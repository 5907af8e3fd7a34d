"""Metrics against hand-computed tiny cases and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from research.engine.metrics import (
    classification_report_dict,
    classification_report_text,
    compute_metrics,
    confusion_matrices,
    expected_calibration_error,
    per_class_metrics,
    reliability_bins,
    softmax,
)

NAMES = ("a", "b", "c", "d")


def one_hot(indices: list[int], num_classes: int = 4) -> np.ndarray:
    return np.eye(num_classes)[indices]


def test_softmax_rows_sum_to_one_and_survive_huge_logits() -> None:
    logits = np.array([[1000.0, 1000.0, -1000.0], [0.0, 1.0, 2.0]])
    probs = softmax(logits)
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs[0], [0.5, 0.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(probs[1], np.exp([0, 1, 2]) / np.exp([0, 1, 2]).sum())


def test_perfect_predictions() -> None:
    targets = np.array([0, 1, 2, 3, 0, 1])
    metrics = compute_metrics(one_hot(targets.tolist()), targets, from_logits=False, loss=0.25)
    assert metrics == {
        "loss": 0.25,
        "nll": 0.0,
        "acc": 1.0,
        "top2": 1.0,
        "macro_f1": 1.0,
        "weighted_f1": 1.0,
        "ece": 0.0,
    }
    assert all(isinstance(v, float) for v in metrics.values())


def test_nll_is_plain_cross_entropy_from_logits_or_probabilities() -> None:
    import torch

    rng = np.random.default_rng(0)
    logits, targets = rng.normal(size=(50, 7)) * 3, rng.integers(0, 7, 50)
    expected = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(targets)).item()
    assert compute_metrics(logits, targets)["nll"] == pytest.approx(expected, rel=1e-9)
    assert compute_metrics(softmax(logits), targets, from_logits=False)["nll"] == pytest.approx(expected, rel=1e-9)


def test_all_wrong() -> None:
    targets = np.array([0, 1, 2, 3])
    probs = one_hot([1, 2, 3, 0])
    metrics = compute_metrics(probs, targets, from_logits=False)
    assert "loss" not in metrics
    assert metrics["acc"] == 0.0
    assert metrics["macro_f1"] == 0.0
    assert metrics["weighted_f1"] == 0.0
    # Fully confident and always wrong: |0 - 1| in the only occupied bin.
    assert metrics["ece"] == pytest.approx(1.0)


def test_top2_counts_true_class_ranked_second() -> None:
    targets = np.array([0, 1, 2])
    probs = np.array(
        [
            [0.3, 0.6, 0.05, 0.05],  # true class second -> top-2 hit
            [0.1, 0.2, 0.3, 0.4],  # true class third -> miss
            [0.1, 0.1, 0.7, 0.1],  # top-1 hit
        ]
    )
    metrics = compute_metrics(probs, targets, from_logits=False)
    assert metrics["acc"] == pytest.approx(1 / 3)
    assert metrics["top2"] == pytest.approx(2 / 3)


def test_logits_and_probs_give_same_metrics() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 7)) * 3
    targets = rng.integers(0, 7, size=40)
    from_logits = compute_metrics(logits, targets)
    from_probs = compute_metrics(softmax(logits), targets, from_logits=False)
    assert from_logits == pytest.approx(from_probs)


def test_f1_matches_sklearn_with_absent_class() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 7))
    targets = rng.integers(0, 6, size=50)  # class 6 never occurs
    preds = logits.argmax(axis=1)
    metrics = compute_metrics(logits, targets, num_classes=7)
    for average in ("macro", "weighted"):
        expected = f1_score(targets, preds, labels=range(7), average=average, zero_division=0)
        assert metrics[f"{average}_f1"] == pytest.approx(expected)
    assert metrics["acc"] == pytest.approx(np.mean(preds == targets))
    assert 0.0 <= metrics["top2"] <= 1.0


def test_top2_with_classes_absent_from_targets() -> None:
    targets = np.array([0, 0, 1])
    probs = np.array([[0.5, 0.2, 0.3, 0.0], [0.1, 0.0, 0.6, 0.3], [0.2, 0.1, 0.3, 0.4]])
    assert compute_metrics(probs, targets, from_logits=False)["top2"] == pytest.approx(1 / 3)


def test_labels_subset_restricts_f1_but_not_accuracy() -> None:
    targets = np.array([0, 0, 1, 1])
    preds = [0, 3, 1, 1]  # the class-3 prediction is outside the subset, still an error
    probs = one_hot(preds)
    subset = compute_metrics(probs, targets, from_logits=False, labels=[0, 1])
    full = compute_metrics(probs, targets, from_logits=False)
    assert subset["acc"] == full["acc"] == pytest.approx(0.75)
    # class 0: P=1, R=0.5 -> F1 2/3; class 1: F1 1.
    assert subset["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)
    # Over all 4 classes the absent classes 2 and 3 score 0.
    assert full["macro_f1"] == pytest.approx((2 / 3 + 1) / 4)
    assert subset["weighted_f1"] == pytest.approx(full["weighted_f1"])


def test_rejects_bad_shapes_and_labels() -> None:
    with pytest.raises(ValueError):
        compute_metrics(np.zeros((3, 4)), np.array([0, 1]))
    with pytest.raises(ValueError):
        compute_metrics(np.zeros((2, 4)), np.array([0, 1]), num_classes=7)
    with pytest.raises(ValueError):
        compute_metrics(np.zeros((2, 4)), np.array([0, 1]), labels=[0, 9])
    with pytest.raises(ValueError):
        compute_metrics(np.zeros((0, 4)), np.array([], dtype=int))


def test_ece_known_value() -> None:
    # Bin (0.6, 0.8]: confidences 0.7, 0.7, accuracy 1/2 -> gap 0.2, weight 2/4.
    # Bin (0.8, 1.0]: confidences 0.9, 0.9, accuracy 1   -> gap 0.1, weight 2/4.
    probs = np.array([[0.7, 0.3], [0.7, 0.3], [0.9, 0.1], [0.1, 0.9]])
    targets = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, targets, n_bins=5) == pytest.approx(0.15)


def test_reliability_bins_layout() -> None:
    probs = np.array([[0.7, 0.3], [0.7, 0.3], [0.9, 0.1], [0.1, 0.9]])
    targets = np.array([0, 1, 0, 1])
    bins = reliability_bins(probs, targets, n_bins=5)
    np.testing.assert_allclose(bins["bin_edges"], [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_array_equal(bins["count"], [0, 0, 0, 2, 2])
    np.testing.assert_allclose(bins["accuracy"], [0, 0, 0, 0.5, 1.0])
    np.testing.assert_allclose(bins["confidence"], [0, 0, 0, 0.7, 0.9])
    assert bins["count"].sum() == len(targets)


def test_confusion_matrices_counts_and_rows() -> None:
    targets = np.array([0, 0, 1, 1, 1])
    preds = np.array([0, 1, 1, 1, 0])
    counts, normalized = confusion_matrices(targets, preds, num_classes=3)
    np.testing.assert_array_equal(counts, [[1, 1, 0], [1, 2, 0], [0, 0, 0]])
    assert np.issubdtype(counts.dtype, np.integer)
    np.testing.assert_allclose(normalized[0], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(normalized[1], [1 / 3, 2 / 3, 0.0])
    np.testing.assert_allclose(normalized.sum(axis=1), [1.0, 1.0, 0.0])
    assert not np.isnan(normalized).any()


def test_reports_and_per_class() -> None:
    targets = np.array([0, 0, 1, 1])
    preds = np.array([0, 3, 1, 1])
    text = classification_report_text(targets, preds, NAMES)
    assert "0.667" in text and all(name in text for name in NAMES)
    report = classification_report_dict(targets, preds, NAMES)
    assert report["a"]["recall"] == pytest.approx(0.5)
    assert report["c"]["f1-score"] == 0.0
    per_class = per_class_metrics(targets, preds, NAMES)
    assert list(per_class) == list(NAMES)
    assert per_class["a"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2.0}
    )
    assert per_class["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0.0}


def test_reports_over_labels_subset() -> None:
    targets = np.array([0, 0, 1, 1])
    preds = np.array([0, 3, 1, 1])
    per_class = per_class_metrics(targets, preds, NAMES, labels=[0, 1])
    assert list(per_class) == ["a", "b"]
    assert per_class["a"]["recall"] == pytest.approx(0.5)
    report = classification_report_dict(targets, preds, NAMES, labels=[0, 1])
    assert "c" not in report and "d" not in report
    assert report["macro avg"]["f1-score"] == pytest.approx((2 / 3 + 1) / 2)
    text = classification_report_text(targets, preds, NAMES, labels=[0, 1])
    assert " c " not in text and " d " not in text
