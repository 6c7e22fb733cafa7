"""MMPareto: the combination rule on hand-made gradients, per-loss VJPs, M = 3, training."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tiny_run import (
    assert_same_shapes,
    epoch_means,
    run_tiny,
    tiny_config,
    trace_three_modality_step,
)

from mlb_jax.methods import make_method
from mlb_jax.methods.mmpareto import MMPareto, mmpareto_combine, mmpareto_gradients


def arrays(*values):
    return [jnp.asarray(v, jnp.float32) for v in values]


# ----------------------------------------------------------------------------- the rule


def test_positive_cosine_equal_weights():
    # cos(g_mm, g_uni) = 1/sqrt(2) > 0 -> (1/2, 1/2): g_new = g_mm + g_uni = g_total, no
    # rescaling, times gamma.
    new, info = mmpareto_combine(
        arrays([1.0, 0.0]), arrays([1.0, 1.0]), arrays([2.0, 1.0]), gamma=1.5
    )
    np.testing.assert_allclose(new[0], [3.0, 1.5], rtol=1e-6)
    assert float(info["cos"]) == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    assert float(info["weight_mm"]) == 0.5


def test_positive_cosine_rescaled_to_a_larger_total():
    # ||g_total|| = 2 sqrt(5) > ||g_new|| = sqrt(5): g_new is rescaled to the total's norm.
    new, _ = mmpareto_combine(arrays([1.0, 0.0]), arrays([1.0, 1.0]), arrays([4.0, 2.0]), gamma=1)
    np.testing.assert_allclose(new[0], [4.0, 2.0], rtol=1e-6)


def test_negative_cosine_min_norm_weights_and_rescaling():
    # g_mm = (1, 0), g_uni = (-1, 1): mm = 1, uu = 2, mu = -1, cos = -1/sqrt(2).
    # c1 = (uu - mu) / (mm + uu - 2 mu) = 3/5; g_new = 1.2 g_mm + 0.8 g_uni = (0.4, 0.8),
    # ||g_new|| = sqrt(0.8) < ||g_total|| = ||(0, 1)|| = 1 -> rescaled to norm 1, times 1.5.
    new, info = mmpareto_combine(
        arrays([1.0, 0.0]), arrays([-1.0, 1.0]), arrays([0.0, 1.0]), gamma=1.5
    )
    assert float(info["weight_mm"]) == pytest.approx(0.6, rel=1e-6)
    assert float(info["cos"]) == pytest.approx(-1 / math.sqrt(2), rel=1e-6)
    scale = 1.5 / math.sqrt(0.8)
    np.testing.assert_allclose(new[0], [0.4 * scale, 0.8 * scale], rtol=1e-6)


def test_weights_from_all_tensors_rescaling_per_tensor():
    # The same vectors split into two one-element tensors: c1 = 3/5 from the concatenation, but
    # norms per tensor: tensor 1 new 0.4 vs total 0 (kept), tensor 2 new 0.8 vs total 1 (to 1).
    new, info = mmpareto_combine(
        arrays([1.0], [0.0]), arrays([-1.0], [1.0]), arrays([0.0], [1.0]), gamma=1.5
    )
    assert float(info["weight_mm"]) == pytest.approx(0.6, rel=1e-6)
    np.testing.assert_allclose(new[0], [0.6], rtol=1e-6)
    np.testing.assert_allclose(new[1], [1.5], rtol=1e-6)


def test_orthogonal_gradients_take_the_pareto_branch():
    # cos = 0 is not > 0: c1 = uu / (mm + uu) = 4/5; g_new = (1.6, 0.8), norm sqrt(3.2);
    # g_total = (1, 2), norm sqrt(5) -> factor sqrt(5 / 3.2) = 1.25 -> (2, 1).
    new, info = mmpareto_combine(
        arrays([1.0, 0.0]), arrays([0.0, 2.0]), arrays([1.0, 2.0]), gamma=1
    )
    assert float(info["weight_mm"]) == pytest.approx(0.8, rel=1e-6)
    np.testing.assert_allclose(new[0], [2.0, 1.0], rtol=1e-6)


def test_pareto_weight_is_the_min_norm_point():
    key_a, key_b = jax.random.split(jax.random.key(0))
    g_mm = jax.random.normal(key_a, (50,))
    g_uni = -0.5 * g_mm + 0.3 * jax.random.normal(key_b, (50,))  # conflicting
    _, info = mmpareto_combine([g_mm], [g_uni], [g_mm + g_uni], gamma=1)
    grid = np.linspace(0, 1, 100001)
    norms = np.linalg.norm(grid[:, None] * g_mm[None] + (1 - grid[:, None]) * g_uni[None], axis=1)
    assert float(info["cos"]) < 0
    assert float(info["weight_mm"]) == pytest.approx(grid[np.argmin(norms)], abs=1e-4)


def test_degenerate_inputs_stay_finite():
    zero = arrays([0.0, 0.0])
    new, info = mmpareto_combine(zero, zero, zero, gamma=1.5)
    assert np.all(np.isfinite(new[0])) and float(info["weight_mm"]) == 0.5
    new, _ = mmpareto_combine(arrays([1.0, 0.0]), arrays([-1.0, 0.0]), arrays([0.0, 0.0]), gamma=1)
    np.testing.assert_array_equal(new[0], [0.0, 0.0])  # g_new = 0: nothing to rescale


# ----------------------------------------------------------------------------- per-loss VJPs


MODALITIES = ("audio", "video", "flow")


def toy_params():
    return {
        "encoders": {
            m: {"w": jnp.array([0.5 + i, -1.0, 2.0 - i])} for i, m in enumerate(MODALITIES)
        },
        "heads": {m: {"w": jnp.array([1.0 - i, 0.5])} for i, m in enumerate(MODALITIES)},
        "fusion": {"w": jnp.array([0.3, -0.7, 1.1])},
    }


def toy_losses(params):
    """Losses that couple encoders, heads and fusion non-linearly; aux carries a marker."""
    enc, heads = params["encoders"], params["heads"]
    features = {m: jnp.tanh(enc[m]["w"]) for m in MODALITIES}
    fused = sum(jnp.sin(params["fusion"]["w"] * features[m]).sum() for m in MODALITIES)
    losses = {"fused": (fused - 1.0) ** 2}
    for m in MODALITIES:
        losses[m] = (features[m][:2] @ heads[m]["w"] + 0.5) ** 2
    return losses, {"marker": jnp.float32(7.0)}


def test_value_and_grad_combines_per_loss_gradients_for_three_modalities():
    params = toy_params()
    method = MMPareto(alpha=1.5)
    (loss, losses, aux), grads = method.value_and_grad(toy_losses, params)
    assert float(aux["marker"]) == 7.0
    assert float(loss) == pytest.approx(float(sum(losses.values())), rel=1e-6)
    per_loss = {
        name: jax.grad(lambda p, name=name: toy_losses(p)[0][name])(params)
        for name in ("fused", *MODALITIES)
    }
    total = jax.tree.map(lambda *g: sum(g), *per_loss.values())
    cosines = {}
    for m in MODALITIES:
        expected, info = mmpareto_combine(
            [per_loss["fused"]["encoders"][m]["w"]],
            [per_loss[m]["encoders"][m]["w"]],
            [total["encoders"][m]["w"]],
            gamma=1.5,
        )
        cosines[m] = float(info["cos"])
        np.testing.assert_allclose(grads["encoders"][m]["w"], expected[0], rtol=1e-5)
        if cosines[m] > 0:  # equal weights: g_new is the total gradient, times gamma
            np.testing.assert_allclose(
                grads["encoders"][m]["w"], 1.5 * total["encoders"][m]["w"], rtol=1e-5
            )
        # Heads keep the plain gradient of the summed loss.
        np.testing.assert_allclose(grads["heads"][m]["w"], total["heads"][m]["w"], rtol=1e-6)
    np.testing.assert_allclose(grads["fusion"]["w"], total["fusion"]["w"], rtol=1e-6)
    # Both branches are exercised: some modality conflicts, some does not.
    assert min(cosines.values()) <= 0 < max(cosines.values()), cosines


def test_missing_encoder_is_an_error():
    per_loss = {
        "fused": {"encoders": {"audio": jnp.ones(2)}},
        "video": {"encoders": {"audio": jnp.ones(2)}},
    }
    with pytest.raises(ValueError, match="encoders/video/"):
        mmpareto_gradients(per_loss, {"encoders": {"audio": jnp.ones(2)}}, gamma=1)


def test_config():
    config = ml_collections.ConfigDict({"name": "mmpareto"})
    config.mmpareto = ml_collections.ConfigDict({"alpha": 0.5})
    method = make_method(config)
    assert isinstance(method, MMPareto) and method.alpha == 0.5
    config.mmpareto.gamma = 1.0
    with pytest.raises(ValueError, match=r"unknown field config.method.mmpareto.gamma; allowed"):
        make_method(config)
    config = ml_collections.ConfigDict({"name": "mmpareto", "mmpareto": {"alpha": -1.0}})
    with pytest.raises(ValueError, match=r"config.method.mmpareto.alpha must be >= 0, got -1.0"):
        make_method(config)
    # The Pareto rule weights every unimodal gradient by 1: a weight would be ignored.
    config = ml_collections.ConfigDict({"name": "mmpareto", "unimodal_weight": 0.5})
    with pytest.raises(
        ValueError, match=r"config.method.unimodal_weight=0.5 has no effect with method 'mmpareto'"
    ):
        make_method(config)


def test_three_modalities_through_the_generic_step():
    state, new_state, metrics, _ = trace_three_modality_step("mmpareto")
    assert_same_shapes(state, new_state)
    assert {"loss/fused", "loss/audio", "loss/video", "loss/audio2"} <= set(metrics)


# ----------------------------------------------------------------------------- training


def test_training_run_loss_decreases(tmp_path_factory, data_cache):
    config = tiny_config(data_cache, "mmpareto")
    results, _, history = run_tiny(config, tmp_path_factory.mktemp("mmpareto"))
    assert results["method"] == "mmpareto" and results["steps"] == 16
    losses = epoch_means(history, "loss")
    assert losses[1] < losses[0]
    assert {"train/loss/fused", "train/loss/audio", "train/loss/video"} <= set(history["epochs"][0])
