"""MMCosine: cosine logits by hand, the scaling takes effect, fusion check, a tiny training run."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from tiny_run import (
    assert_same_shapes,
    epoch_means,
    run_tiny,
    tiny_config,
    trace_three_modality_step,
)

from mlb_jax import trainer
from mlb_jax.methods import make_method
from mlb_jax.methods.mmcosine import MMCosine, cosine_logits
from mlb_jax.models import MultimodalClassifier
from mlb_jax.models.fusion import LateLinearFusion, MidMLPFusion

A, V, T = "audio", "video", "text"
R2 = 1 / math.sqrt(2)


def test_cosine_logits_by_hand():
    features = {A: jnp.array([[3.0, 4.0]]), V: jnp.array([[0.0, -2.0]])}
    kernels = {A: jnp.array([[1.0, 0.0], [0.0, 2.0]]), V: jnp.array([[1.0, 0.0], [1.0, 5.0]])}
    u = cosine_logits(features, kernels, 10.0)
    np.testing.assert_allclose(u[A], [[6.0, 8.0]], rtol=1e-6)  # cos = 3/5, 4/5
    np.testing.assert_allclose(u[V], [[-10 * R2, -10.0]], rtol=1e-6)  # cos = -1/sqrt2, -1
    # A zero feature gives zero logits, not NaN (norm floored as in torch's normalize).
    zero = cosine_logits({A: jnp.zeros((1, 2))}, {A: kernels[A]}, 10.0)
    np.testing.assert_array_equal(zero[A], 0.0)


class Identity:
    def __call__(self, x, *, train):
        del train
        return x


class FakeModel:
    """Identity encoders (inputs are the features) and a real late-linear fusion."""

    encode = MultimodalClassifier.encode  # the real encoder loop over the identity encoders

    def __init__(self, kernels, late_linear=True):
        names = tuple(kernels)
        self.modality_names = names
        self.encoders = {m: Identity() for m in names}
        dims = {m: k.shape[0] for m, k in kernels.items()}
        classes = next(iter(kernels.values())).shape[1]
        self.fusion = LateLinearFusion(dims, classes, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
        for m, k in kernels.items():
            self.fusion.linear[m].kernel[...] = k
        self.fusion.bias[...] = jnp.full((classes,), 100.0)  # must be ignored
        if not late_linear:
            self.fusion = MidMLPFusion.__new__(MidMLPFusion)  # any other head


def test_forward_sums_scaled_cosines_without_bias_for_three_modalities():
    kernels = {
        A: jnp.array([[1.0, 0.0], [0.0, 2.0]]),
        V: jnp.array([[1.0, 0.0], [1.0, 5.0]]),
        T: jnp.array([[2.0, -1.0], [0.0, 0.0], [0.0, 0.0]]),
    }
    inputs = {A: jnp.array([[3.0, 4.0]]), V: jnp.array([[0.0, -2.0]]), T: jnp.array([[0, 0, 7.0]])}
    for scale in (1.0, 15.0):
        out = MMCosine(scaling=scale).forward(
            FakeModel(kernels), inputs, train=True, method_state={}
        )
        expected = {A: [0.6, 0.8], V: [-R2, -1.0], T: [0.0, 0.0]}
        for m in (A, V, T):
            np.testing.assert_allclose(
                out.unimodal_logits[m], [scale * np.array(expected[m])], 1e-6
            )
        np.testing.assert_allclose(out.logits, [scale * np.array([0.6 - R2, -0.2])], rtol=1e-6)
        np.testing.assert_array_equal(out.features[A], inputs[A])


def test_scaling_comes_from_the_config_and_takes_effect():
    # MLB's --mmcosine_scaling never reached the model (the flag is written where the model
    # does not read it); ours does.
    config = ml_collections.ConfigDict({"name": "mmcosine", "mmcosine": {"scaling": 4.0}})
    method = make_method(config)
    assert method.scaling == 4.0
    kernels = {A: jnp.eye(2), V: jnp.eye(2)}
    inputs = {A: jnp.array([[1.0, 0.0]]), V: jnp.array([[0.0, 1.0]])}
    out = method.forward(FakeModel(kernels), inputs, train=False, method_state={})
    np.testing.assert_allclose(out.logits, [[4.0, 4.0]], rtol=1e-6)
    assert make_method(ml_collections.ConfigDict({"name": "mmcosine"})).scaling == 10.0
    config.mmcosine.scaling = 0.0
    with pytest.raises(ValueError, match=r"config.method.mmcosine.scaling must be > 0, got 0.0"):
        make_method(config)
    config.mmcosine = ml_collections.ConfigDict({"scale": 4.0})
    with pytest.raises(ValueError, match=r"unknown field config.method.mmcosine.scale; allowed"):
        make_method(config)


def test_other_fusions_are_refused():
    kernels = {A: jnp.eye(2), V: jnp.eye(2)}
    model = FakeModel(kernels, late_linear=False)
    with pytest.raises(ValueError, match="late_linear"):
        MMCosine().forward(
            model, {A: jnp.ones((1, 2)), V: jnp.ones((1, 2))}, train=True, method_state={}
        )


def test_three_modalities_through_the_generic_step():
    state, new_state, metrics, outputs = trace_three_modality_step("mmcosine")
    assert_same_shapes(state, new_state)
    assert set(outputs["unimodal_logits"]) == {"audio", "video", "audio2"}
    assert outputs["logits"].shape == (8, 4) and "loss/fused" in metrics


def test_tiny_training_on_eight_devices(data_cache, tmp_path):
    assert jax.device_count() == 8
    results, state, history = run_tiny(tiny_config(data_cache, "mmcosine"), tmp_path)
    assert results["method"] == "mmcosine"
    losses = epoch_means(history, "loss")
    assert losses[1] < losses[0]
    # No bias in the logits: the fusion bias got no loss gradient, only weight decay, which
    # shrinks every element by the same factor.
    config = tiny_config(data_cache, "mmcosine")
    _, initial = trainer.setup(config, trainer.load_dataset(config))
    ratio = np.asarray(state.params["fusion"]["bias"][...]) / np.asarray(
        initial.params["fusion"]["bias"][...]
    )
    assert ratio.min() > 0.9 and ratio.max() < 1.0
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
