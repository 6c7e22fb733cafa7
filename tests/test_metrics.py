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
