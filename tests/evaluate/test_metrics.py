import numpy as np
import pytest

from transferkit.evaluate.metrics import classification_report, confusion_matrix, expected_calibration_error


def test_report_on_a_hand_checked_example():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[.9, .05, .05], [.2, .7, .1], [.1, .8, .1], [.1, .6, .3], [.1, .1, .8], [.6, .2, .2]])
    full = classification_report(probs, y_true, ["a", "b", "c"], bins=5)
    report = full.summary
    assert report["accuracy"] == pytest.approx(4 / 6)
    # a: P=1/2 R=1/2; b: P=2/3 R=1; c: P=1 R=1/2
    assert report["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert report["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert report["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    np.testing.assert_array_equal(full.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert sum(b["count"] for b in full.calibration) == 6
    assert not any(key.startswith("_") for key in report)  # every key is a figure for metrics JSON


def test_class_never_predicted_has_zero_precision_not_nan():
    counts = confusion_matrix(np.array([0, 1]), np.array([0, 0]), 2)
    report = classification_report(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([0, 1]), ["x", "y"]).summary
    assert counts.tolist() == [[1, 0], [1, 0]]
    assert report["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_calibration_error_is_zero_when_confidence_matches_accuracy():
    probs = np.array([[0.75, 0.25]] * 4)
    ece, table = expected_calibration_error(probs, np.array([0, 0, 0, 1]), bins=10)
    assert ece == pytest.approx(0.0)
    ece_bad, _ = expected_calibration_error(probs, np.array([1, 1, 1, 1]), bins=10)
    assert ece_bad == pytest.approx(0.75)
