import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlb_jax import mlb_coefficients, modality_scores
from mlb_jax.balancing import SCORE_EPS, mlb_ratios


def test_probability_score_is_mean_true_class_softmax():
    # Rows: softmax([0, ln 3]) = [0.25, 0.75]; softmax([0, 0]) = [0.5, 0.5].
    logits = jnp.array([[0.0, math.log(3.0)], [0.0, 0.0]])
    labels = jnp.array([1, 0])
    scores = modality_scores({"audio": logits, "video": -logits}, labels)
    assert float(scores["audio"]) == pytest.approx((0.75 + 0.5) / 2, abs=1e-6)
    # -logits: softmax([0, -ln 3]) = [0.75, 0.25]; label 1 -> 0.25.
    assert float(scores["video"]) == pytest.approx((0.25 + 0.5) / 2, abs=1e-6)


def test_accuracy_score_counts_argmax_hits():
    logits = jnp.array([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0], [0.0, 1.0]])
    labels = jnp.array([0, 1, 1, 0])
    scores = modality_scores({"a": logits, "b": logits}, labels, kind="accuracy")
    assert float(scores["a"]) == 0.5


def test_scores_are_gradient_stopped():
    labels = jnp.array([0, 1])

    def total(logits):
        s = modality_scores({"a": logits, "b": logits}, labels)
        return s["a"] + s["b"]

    grad = jax.grad(total)(jnp.ones((2, 3)))
    np.testing.assert_array_equal(grad, np.zeros((2, 3)))


def test_score_bad_input():
    with pytest.raises(ValueError, match="unknown score kind 'f1'"):
        modality_scores({"a": jnp.zeros((2, 3))}, jnp.zeros(2, int), kind="f1")
    with pytest.raises(ValueError, match=r"'video' must be \[B, K\] with B = 2"):
        modality_scores({"video": jnp.zeros((3, 4))}, jnp.zeros(2, int))


def k_by_hand(r, alpha, beta_max):
    beta = beta_max if r > 1 else 2.0
    return 1 + (beta - 1) * math.tanh(alpha * (r - 1))


def test_two_modalities_against_hand_values():
    k = mlb_coefficients({"audio": 0.8, "video": 0.4}, alpha=1.0, beta_max=10.0)
    # r_audio = 0.4 / 0.8 = 0.5 -> 1 + tanh(-0.5); r_video = 2 -> 1 + 9 tanh(1).
    assert float(k["audio"]) == pytest.approx(0.5378828427399902, rel=1e-6)
    assert float(k["video"]) == pytest.approx(7.854348611, rel=1e-6)


def test_three_modalities_against_hand_values():
    scores = {"a": 0.2, "b": 0.4, "c": 0.6}
    r = mlb_ratios(scores)
    assert float(r["a"]) == pytest.approx(2.5, rel=1e-6)  # mean(0.4, 0.6) / 0.2
    assert float(r["b"]) == pytest.approx(1.0, rel=1e-6)  # mean(0.2, 0.6) / 0.4
    assert float(r["c"]) == pytest.approx(0.5, rel=1e-6)  # mean(0.2, 0.4) / 0.6
    k = mlb_coefficients(scores, alpha=0.5, beta_max=3.0)
    assert float(k["a"]) == pytest.approx(1 + 2 * math.tanh(0.75), rel=1e-6)  # 2.270298
    assert float(k["b"]) == pytest.approx(1.0, abs=1e-6)
    assert float(k["c"]) == pytest.approx(1 + math.tanh(-0.25), rel=1e-6)  # 0.755081


def test_equal_scores_give_unit_coefficients():
    k = mlb_coefficients({"a": 0.37, "b": 0.37, "c": 0.37}, alpha=5.0, beta_max=20.0)
    for value in k.values():
        assert float(value) == pytest.approx(1.0, abs=1e-6)


def test_beta_max_one_disables_acceleration():
    k = mlb_coefficients({"strong": 0.9, "weak": 0.1}, alpha=2.0, beta_max=1.0)
    assert float(k["weak"]) == 1.0
    assert float(k["strong"]) == pytest.approx(k_by_hand(0.1 / 0.9, 2.0, 1.0), rel=1e-6)
    assert float(k["strong"]) < 1.0


def test_deep_deceleration_keeps_float32_relative_precision():
    # z = alpha (r - 1) = -6: k = 1 + tanh(-6) = 1.2e-5. Computed as 1 + tanh(z), float32
    # loses it to cancellation (1.5% off); as 2 sigmoid(2 z) it keeps ~1e-7 relative.
    alpha = 6.0 / (1 - 0.1 / 0.9)
    k = mlb_coefficients({"strong": 0.9, "weak": 0.1}, alpha=alpha, beta_max=2.0)
    assert float(k["strong"]) == pytest.approx(k_by_hand(0.1 / 0.9, alpha, 2.0), rel=1e-6)
    assert float(k["strong"]) == pytest.approx(1 + math.tanh(-6.0), rel=1e-6)  # 1.2288e-5


def test_beta_max_below_one_slows_weak_modality_too():
    k = mlb_coefficients({"strong": 0.9, "weak": 0.3}, alpha=2.0, beta_max=0.5)
    # r_weak = 3 -> 1 - 0.5 tanh(4)
    assert float(k["weak"]) == pytest.approx(1 - 0.5 * math.tanh(4.0), rel=1e-6)
    assert float(k["weak"]) < 1.0 and float(k["strong"]) < 1.0


def test_k_is_monotone_in_r():
    # Fix the other score, sweep s_i: r = 0.5 / s_i decreases as s_i increases, so k must too.
    s = np.linspace(0.05, 0.95, 50)
    ks = [float(mlb_coefficients({"x": v, "y": 0.5}, alpha=1.5, beta_max=4.0)["x"]) for v in s]
    assert all(a >= b for a, b in itertools.pairwise(ks))
    assert ks[0] > 1 > ks[-1]


def test_zero_scores_stay_finite():
    k = mlb_coefficients({"a": 0.0, "b": 0.6}, alpha=1.0, beta_max=10.0)
    assert float(k["a"]) == pytest.approx(10.0, rel=1e-6)  # r huge -> saturates at beta_max
    assert float(k["b"]) == pytest.approx(1 + math.tanh(-1.0), rel=1e-5)  # r = eps / 0.6 ~ 0
    k = mlb_coefficients({"a": 0.0, "b": 0.0}, alpha=1.0, beta_max=10.0)
    assert [float(v) for v in k.values()] == [1.0, 1.0]
    assert SCORE_EPS == 1e-8


def test_jittable_with_traced_hyperparameters():
    f = jax.jit(lambda s, a, b: mlb_coefficients({"x": s, "y": 0.5}, alpha=a, beta_max=b)["x"])
    assert float(f(0.25, 1.0, 3.0)) == pytest.approx(k_by_hand(2.0, 1.0, 3.0), rel=1e-6)


@pytest.mark.parametrize(
    ("scores", "kwargs", "message"),
    [
        ({"a": 0.5}, {"alpha": 1.0, "beta_max": 2.0}, "at least two modalities"),
        ({"a": 0.5, "b": 0.5}, {"alpha": -0.1, "beta_max": 2.0}, "alpha must be >= 0"),
        ({"a": 0.5, "b": 0.5}, {"alpha": 1.0, "beta_max": -1.0}, "beta_max must be >= 0"),
    ],
)
def test_coefficient_bad_input(scores, kwargs, message):
    with pytest.raises(ValueError, match=message):
        mlb_coefficients(scores, **kwargs)
