import math

import numpy as np
import pytest

from mlb_jax.metrics import accuracy, expected_calibration_error


def test_accuracy():
    logits = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 3.0]])
    assert accuracy(logits, np.array([0, 0, 1])) == pytest.approx(2 / 3)
    assert accuracy(logits, np.array([1, 0, 0])) == 0.0
    with pytest.raises(ValueError, match="empty split"):
        accuracy(np.zeros((0, 2)), np.zeros(0, int))


def test_ece_against_hand_computation():
    # Two classes. Example 1: p = 0.9 (bin 14, (0.8667, 0.9333]), correct.
    # Example 2: p = 0.9, wrong. Example 3: p = 0.6 (bin 9, (0.6, 0.6667] -> 0.6 is in bin 8,
    # (0.5333, 0.6]), correct.
    p = [0.9, 0.9, 0.6]
    logits = np.array([[math.log(x / (1 - x)), 0.0] for x in p])
    labels = np.array([0, 1, 0])
    # bin of 0.9: |acc 0.5 - conf 0.9| * 2/3; bin of 0.6: |1 - 0.6| * 1/3.
    expected = (2 / 3) * 0.4 + (1 / 3) * 0.4
    assert expected_calibration_error(logits, labels) == pytest.approx(expected, abs=1e-9)


def test_ece_of_a_certain_correct_prediction_is_zero_and_of_a_wrong_one_is_one():
    # Confidence ~1 lands in the last bin (a confidence of exactly 1.0 must not overflow it).
    logits = np.array([[100.0, 0.0]])
    assert expected_calibration_error(logits, np.array([0])) == pytest.approx(0, abs=1e-9)
    assert expected_calibration_error(logits, np.array([1])) == pytest.approx(1, abs=1e-9)


def test_ece_is_zero_when_confidence_matches_accuracy():
    # Confidence 0.75 everywhere, 3 of 4 right.
    logits = np.tile([math.log(3.0), 0.0], (4, 1))
    assert expected_calibration_error(logits, np.array([0, 0, 0, 1])) == pytest.approx(0, abs=1e-9)


# ----------------------------------------------------------------------------- evaluation metrics
# labels [0, 0, 1, 1, 2], predictions [0, 1, 1, 1, 0], K = 4 (class 3 never occurs).
# Confusion rows (true) x columns (predicted): [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], 0].
_LABELS = np.array([0, 0, 1, 1, 2])
_PREDS = np.array([0, 1, 1, 1, 0])


def test_confusion_f1_and_macro_f1_by_hand():
    from mlb_jax.metrics import confusion_matrix, macro_f1, per_class_f1

    confusion = confusion_matrix(_PREDS, _LABELS, 4)
    np.testing.assert_array_equal(
        confusion, [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    )
    stats = per_class_f1(confusion)
    # class 0: P = 1/2, R = 1/2, F1 = 1/2; class 1: P = 2/3, R = 1, F1 = 0.8; class 2: 0.
    np.testing.assert_allclose(stats["precision"], [0.5, 2 / 3, 0.0, 0.0])
    np.testing.assert_allclose(stats["recall"], [0.5, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(stats["f1"], [0.5, 0.8, 0.0, 0.0])
    np.testing.assert_array_equal(stats["support"], [2, 2, 1, 0])
    # Class 3 is neither a label nor a prediction: left out of the mean.
    assert macro_f1(confusion) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_cohen_kappa_by_hand():
    from mlb_jax.metrics import cohen_kappa, confusion_matrix

    # p_o = 3/5; marginals true [2, 2, 1, 0], predicted [2, 3, 0, 0]: p_e = (4 + 6) / 25.
    assert cohen_kappa(confusion_matrix(_PREDS, _LABELS, 4)) == pytest.approx((0.6 - 0.4) / 0.6)
    assert cohen_kappa(confusion_matrix(_LABELS, _LABELS, 4)) == pytest.approx(1.0)
    # Everything one class: chance agreement 1, kappa undefined -> 0.
    assert cohen_kappa(confusion_matrix(np.zeros(3, int), np.zeros(3, int), 2)) == 0.0


def test_top5_accuracy_by_hand():
    from mlb_jax.metrics import top_k_accuracy

    logits = np.array([[7.0, 6, 5, 4, 3, 2, 1], [7.0, 6, 5, 4, 3, 2, 1]])
    # Label 4 is ranked 5th (a hit); label 5 is ranked 6th (a miss).
    assert top_k_accuracy(logits, np.array([4, 5]), 5) == 0.5
    assert top_k_accuracy(logits, np.array([0, 5]), 1) == accuracy(logits, np.array([0, 5]))


def test_classwise_ece_and_reliability_bins_by_hand():
    from mlb_jax.metrics import classwise_ece, reliability_bins

    # Example 0: p = [0.7, 0.18, 0.12], label 0; example 1: p = [0.7, 0.12, 0.18], label 1.
    p = np.array([[0.7, 0.18, 0.12], [0.7, 0.12, 0.18]])
    logits, labels = np.log(p), np.array([0, 1])
    # Class 0: both p = 0.7 in one bin, hits 1 + 0: |1 - 1.4| / 2 = 0.2.
    # Class 1: 0.18 (miss) and 0.12 (hit) in two bins: (0.18 + 0.88) / 2 = 0.53.
    # Class 2: 0.12 and 0.18, both misses: (0.12 + 0.18) / 2 = 0.15.
    assert classwise_ece(logits, labels) == pytest.approx((0.2 + 0.53 + 0.15) / 3)
    # Top-label ECE: both confidences 0.7 in bin 10 ((0.667, 0.733]), one right: |0.5 - 0.7|.
    assert expected_calibration_error(logits, labels) == pytest.approx(0.2)
    bins = reliability_bins(logits, labels)
    assert bins["count"].tolist() == [0] * 10 + [2] + [0] * 4
    assert bins["accuracy"][10] == 0.5 and bins["confidence"][10] == pytest.approx(0.7)
    assert np.isnan(bins["accuracy"][0])
