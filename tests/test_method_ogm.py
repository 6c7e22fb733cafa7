"""OGM / OGM-GE: coefficients, scaled leaves, noise statistics, window, fusion check, training."""

import math
import types

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

from mlb_jax.balancing import BalancingState, balancing_metrics, parameter_paths
from mlb_jax.methods import make_method
from mlb_jax.methods.late_linear import encoder_labels
from mlb_jax.methods.ogm import (
    OGM,
    ogm_coefficients,
    ogm_gradient_transform,
    ogm_scores,
)
from mlb_jax.models import build_model

ALPHA = 0.5


def k_dominant(rho):
    return 1.0 - math.tanh(ALPHA * rho)


# ----------------------------------------------------------------------------- coefficients


@pytest.mark.parametrize(
    ("s_audio", "s_video", "k_audio", "k_video"),
    [
        (3.0, 6.0, 1.0, k_dominant(2.0)),  # video dominant: rho_v = 2
        (6.0, 3.0, k_dominant(2.0), 1.0),  # audio dominant: rho_a = 2
        (3.0, 3.0, k_dominant(1.0), 1.0),  # tie: the official else-branch scales audio
        (4.0, 5.0, 1.0, k_dominant(1.25)),
    ],
)
def test_two_modality_coefficients(s_audio, s_video, k_audio, k_video):
    k = ogm_coefficients({"audio": s_audio, "video": s_video}, alpha=ALPHA)
    assert float(k["audio"]) == pytest.approx(k_audio, rel=1e-6)
    assert float(k["video"]) == pytest.approx(k_video, rel=1e-6)


def test_coefficient_jumps_at_equal_scores():
    # 1 - tanh(alpha * rho), not 1 - tanh(alpha * (rho - 1)): crossing rho = 1 jumps k of the
    # newly dominant modality from 1 to about 1 - tanh(alpha) (docs/METHODS.md (ogm)).
    below = ogm_coefficients({"audio": 3.0, "video": 2.999}, alpha=ALPHA)
    above = ogm_coefficients({"audio": 3.0, "video": 3.001}, alpha=ALPHA)
    assert float(below["video"]) == 1.0
    assert float(above["video"]) == pytest.approx(k_dominant(3.001 / 3.0), rel=1e-6)
    assert float(above["video"]) < 0.55 and float(above["audio"]) == 1.0


def test_three_modality_coefficients():
    # rho_m = S_m / min_{j != m} S_j: (1/2, 2/1, 4/1); every modality above the weakest slows.
    k = ogm_coefficients({"audio": 1.0, "video": 2.0, "flow": 4.0}, alpha=ALPHA)
    assert float(k["audio"]) == 1.0
    assert float(k["video"]) == pytest.approx(k_dominant(2.0), rel=1e-6)
    assert float(k["flow"]) == pytest.approx(k_dominant(4.0), rel=1e-6)
    equal = ogm_coefficients({"audio": 2.0, "video": 2.0, "flow": 2.0}, alpha=ALPHA)
    assert [float(equal[m]) for m in ("audio", "video", "flow")] == pytest.approx(
        [k_dominant(1.0), 1.0, 1.0]
    )


def test_scores_are_batch_sums_of_true_class_probability():
    labels = jnp.array([1, 1])
    split = {
        # softmax rows [1/4, 3/4] and [3/4, 1/4]: true-class probabilities 0.75 + 0.25
        "audio": jnp.array([[0.0, math.log(3.0)], [math.log(3.0), 0.0]]),
        # rows [1/2, 1/2] and [1/10, 9/10]: 0.5 + 0.9
        "video": jnp.array([[0.0, 0.0], [-math.log(9.0), 0.0]]),
    }
    scores = ogm_scores(split, labels)
    assert float(scores["audio"]) == pytest.approx(1.0, rel=1e-6)
    assert float(scores["video"]) == pytest.approx(1.4, rel=1e-6)


# ----------------------------------------------------------------------------- scaled leaves


def fake_params():
    """A parameter tree with the model's path layout (encoders/heads/fusion)."""

    def encoder(c_in):
        return {
            "conv": {"kernel": jnp.ones((3, 3, c_in, 2))},
            "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
        }

    return {
        "encoders": {"audio": encoder(1), "video": encoder(3)},
        "heads": {m: {"kernel": jnp.ones((2, 4)), "bias": jnp.ones(4)} for m in ("audio", "video")},
        "fusion": {
            "linear": {m: {"kernel": jnp.ones((2, 4))} for m in ("audio", "video")},
            "bias": jnp.ones(4),
        },
    }


def random_like(tree, seed=0):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def scale_factors(grads, updates):
    """path -> the factor each leaf was multiplied by (leaves are nonzero random normals)."""
    return {
        path: float(np.median(np.asarray(u) / np.asarray(g)))
        for path, g, u in zip(
            parameter_paths(grads), jax.tree.leaves(grads), jax.tree.leaves(updates)
        )
    }


@pytest.mark.parametrize("scope", ["conv", "encoder"])
@pytest.mark.parametrize(("s_audio", "s_video"), [(3.0, 6.0), (6.0, 3.0)])
def test_scaled_leaves_and_factors(scope, s_audio, s_video):
    params = fake_params()
    tx = ogm_gradient_transform(
        encoder_labels(params, ["audio", "video"], scope=scope),
        modalities=["audio", "video"],
        alpha=ALPHA,
    )
    grads = random_like(params)
    updates, state = tx.update(
        grads, tx.init(params), params, modality_scores={"audio": s_audio, "video": s_video}
    )
    dominant = "video" if s_video > s_audio else "audio"  # rho = 2 either way
    k = {"audio": 1.0, "video": 1.0} | {dominant: k_dominant(2.0)}
    factors = scale_factors(grads, updates)
    for path, factor in factors.items():
        kind, owner = path.split("/")[:2]
        in_encoder = kind == "encoders" and (scope == "encoder" or path.endswith("conv/kernel"))
        in_head = kind == "heads" and scope == "encoder"
        # Everything else keeps factor 1: BatchNorm under 'conv', fusion kernels and bias.
        expected = k[owner] if in_encoder or in_head else 1.0
        assert factor == pytest.approx(expected, rel=1e-6), path
    # The applied coefficients are logged like MLB's.
    metrics = balancing_metrics(state)
    assert float(metrics["k/audio"]) == pytest.approx(k["audio"], rel=1e-6)
    assert float(metrics["score/video"]) == s_video


def test_masks_on_the_real_model():
    config = {"modalities": {"audio": {"kind": "audio"}, "video": {"kind": "video"}}}
    model = nnx.eval_shape(lambda: build_model(config | {"base_width": 2}, 4, rngs=nnx.Rngs(0)))
    _, params, _ = nnx.split(model, nnx.Param, ...)
    paths = parameter_paths(params)
    for scope in ("conv", "encoder"):
        labels = jax.tree.structure(params).flatten_up_to(
            encoder_labels(params, ["audio", "video"], scope=scope)
        )
        for m in ("audio", "video"):
            chosen = [p for p, label in zip(paths, labels) if label == m]
            if scope == "conv":
                # ResNet-18: stem + 8 blocks x 2 convs + 3 downsample convs = 20 kernels.
                assert len(chosen) == 20
                assert all(
                    p.startswith(f"encoders/{m}/") and p.endswith("conv/kernel") for p in chosen
                )
            else:
                assert set(chosen) == {
                    p for p in paths if p.startswith((f"encoders/{m}/", f"heads/{m}/"))
                }
            assert not any(p.startswith("fusion/") for p in chosen)


def test_conv_scope_takes_the_1d_kernels_of_sequence_encoders():
    config = {
        "modalities": {
            "imu": {"kind": "tcn", "in_features": 3, "width": 4, "depth": 2},
            "mfcc": {"kind": "conformer", "in_features": 3, "dim": 4, "depth": 1, "heads": 1},
        }
    }
    model = nnx.eval_shape(lambda: build_model(config, 4, rngs=nnx.Rngs(0)))
    _, params, _ = nnx.split(model, nnx.Param, ...)
    labels = jax.tree.structure(params).flatten_up_to(
        encoder_labels(params, ["imu", "mfcc"], scope="conv")
    )
    chosen = {p: label for p, label in zip(parameter_paths(params), labels) if label}
    # The TCN's two Conv1D kernels [k, C_in, C_out] and the Conformer's depthwise one: the
    # 1-D analogue of the official "4-D gradient" rule; linear, attention and norm weights
    # (at most 2-D) stay out.
    assert chosen == {
        "encoders/imu/convs/0/kernel": "imu",
        "encoders/imu/convs/1/kernel": "imu",
        "encoders/mfcc/blocks/0/conv/depthwise/kernel": "mfcc",
    }


# ----------------------------------------------------------------------------- OGM-GE noise


def noise_setup(seed=0):
    shape = (4, 4, 64, 64)  # 65536 elements
    kg = jax.random.split(jax.random.key(123), 3)
    params = {
        "encoders": {
            "audio": {"a": {"kernel": jnp.zeros(shape)}, "b": {"kernel": jnp.zeros(shape)}},
            "video": {"conv": {"kernel": jnp.zeros(shape)}},
        }
    }
    g_audio = 3.0 * jax.random.normal(kg[0], shape) + 1.0
    grads = {
        "encoders": {
            # Two audio tensors with identical gradients: their noise must still differ.
            "audio": {"a": {"kernel": g_audio}, "b": {"kernel": g_audio}},
            "video": {"conv": {"kernel": 0.5 * jax.random.normal(kg[1], shape)}},
        }
    }
    labels = encoder_labels(params, ["audio", "video"], scope="conv")
    tx = ogm_gradient_transform(
        labels, modalities=["audio", "video"], alpha=ALPHA, noise=True, seed=seed
    )
    return tx, params, grads


SCORES = {"audio": 6.0, "video": 3.0}  # audio dominant: k_a = 1 - tanh(1), k_v = 1


def test_ge_noise_statistics():
    tx, params, grads = noise_setup()
    updates, _ = tx.update(grads, tx.init(params), params, modality_scores=SCORES)
    k = {"audio": k_dominant(2.0), "video": 1.0}
    for m, leaf in (("audio", "a"), ("video", "conv")):
        g = np.asarray(grads["encoders"][m][leaf]["kernel"], np.float64)
        noise = np.asarray(updates["encoders"][m][leaf]["kernel"], np.float64) - k[m] * g
        sigma = g.std(ddof=1) + 1e-8  # of the UNSCALED gradient, also for the k = 1 modality
        assert abs(noise.mean()) < 5 * sigma / math.sqrt(noise.size), m
        assert noise.std() == pytest.approx(sigma, rel=0.01), m
        assert abs(np.corrcoef(noise.ravel(), g.ravel())[0, 1]) < 0.02  # ~5 sigma


def test_ge_noise_keys_per_step_tensor_and_seed():
    tx, params, grads = noise_setup()
    state0 = tx.init(params)
    first, state1 = tx.update(grads, state0, params, modality_scores=SCORES)
    again, _ = tx.update(grads, state0, params, modality_scores=SCORES)
    second, _ = tx.update(grads, state1, params, modality_scores=SCORES)
    a = lambda u, leaf="a": np.asarray(u["encoders"]["audio"][leaf]["kernel"])  # noqa: E731
    np.testing.assert_array_equal(a(first), a(again))  # same step and key: same noise
    assert not np.allclose(a(first), a(second))  # next step: new noise
    assert not np.allclose(a(first), a(first, "b"))  # same gradient, other tensor: new noise
    tx_other, _, _ = noise_setup(seed=1)
    other, _ = tx_other.update(grads, tx_other.init(params), params, modality_scores=SCORES)
    assert not np.allclose(a(first), a(other))
    # Jitted, the state holds arrays only and gives the same numbers.
    assert isinstance(state0, BalancingState) and state0.extra.dtype == jnp.uint32
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state0))
    jitted, _ = jax.jit(lambda g, s: tx.update(g, s, params, modality_scores=SCORES))(grads, state0)
    np.testing.assert_allclose(a(jitted), a(first), rtol=1e-6, atol=1e-6)


def test_outside_the_window_gradients_pass_unchanged():
    tx, params, grads = noise_setup()
    updates, state = tx.update(
        grads, tx.init(params), params, modality_scores=SCORES, modulate=jnp.array(False)
    )
    for g, u in zip(jax.tree.leaves(grads), jax.tree.leaves(updates)):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(u))
    assert float(state.coefficients["audio"]) == 1.0


# ----------------------------------------------------------------------------- the method


def method_config(name, **ogm):
    config = ml_collections.ConfigDict({"name": name, "placement": "gradients"})
    config.ogm = ml_collections.ConfigDict(
        {"alpha": 0.3, "scope": "conv", "start_epoch": 2, "end_epoch": 4, "noise_seed": 0} | ogm
    )
    return config


def test_method_window_and_epoch_state():
    method = make_method(method_config("ogm_ge"))
    assert isinstance(method, OGM) and method.noise and method.name == "ogm_ge"
    assert not make_method(method_config("ogm")).noise
    outputs = types.SimpleNamespace(
        split_logits={"audio": jnp.zeros((2, 3)), "video": jnp.zeros((2, 3))}
    )
    flags = []
    state = method.init_state(["audio", "video"], 3)
    for epoch in range(6):
        flags.append(bool(method.update_kwargs(outputs, jnp.array([0, 1]), state)["modulate"]))
        state = method.end_of_epoch(state, types.SimpleNamespace(epoch=epoch))
        assert int(state["epoch"]) == epoch + 1
    assert flags == [False, False, True, True, True, False]  # epochs 2..4 inclusive


def test_config_errors():
    with pytest.raises(
        ValueError, match=r"config.method.ogm.scope must be one of \['conv', 'encoder'\], got 'bn'"
    ):
        make_method(method_config("ogm", scope="bn"))
    with pytest.raises(ValueError, match=r"unknown field config.method.ogm.alhpa; allowed: alpha,"):
        make_method(method_config("ogm", alhpa=1.0))
    with pytest.raises(ValueError, match=r"config.method.ogm.end_epoch must be >= start_epoch"):
        make_method(method_config("ogm", start_epoch=3, end_epoch=2))
    with pytest.raises(ValueError, match=r"config.method.ogm.alpha must be a number, got 'x'"):
        make_method(method_config("ogm", alpha="x"))
    # noise_seed is OGM-GE's: plain OGM refuses a value that would do nothing.
    assert make_method(method_config("ogm_ge", noise_seed=3)).noise_seed == 3
    with pytest.raises(
        ValueError, match=r"config.method.ogm.noise_seed=3 has no effect with method 'ogm'"
    ):
        make_method(method_config("ogm", noise_seed=3))


def test_other_fusions_are_refused_clearly():
    config = {"modalities": {"audio": {"kind": "audio"}, "video": {"kind": "video"}}}
    model = nnx.eval_shape(
        lambda: build_model(config | {"base_width": 2, "fusion": "mid_mlp"}, 4, rngs=nnx.Rngs(0))
    )
    _, params, _ = nnx.split(model, nnx.Param, ...)
    method = make_method(method_config("ogm"))
    with pytest.raises(ValueError, match="late_linear"):
        method.gradient_transform(params, model.modality_patterns())
    with pytest.raises(ValueError, match="late_linear"):
        method.forward(model, {}, train=True, method_state={})


def test_three_modalities_through_the_generic_step():
    state, new_state, metrics, outputs = trace_three_modality_step("ogm_ge")
    assert_same_shapes(state, new_state)
    names = {"audio", "video", "audio2"}
    assert {f"k/{m}" for m in names} | {f"score/{m}" for m in names} <= set(metrics)
    assert set(outputs["unimodal_logits"]) == names


# ----------------------------------------------------------------------------- training


def test_ogm_ge_training_run_loss_decreases(tmp_path_factory, data_cache):
    config = tiny_config(data_cache, "ogm_ge")
    results, restored, history = run_tiny(config, tmp_path_factory.mktemp("ogm_ge"))
    assert results["method"] == "ogm_ge" and results["steps"] == 16
    losses = epoch_means(history, "loss")
    assert losses[1] < losses[0]
    assert int(restored.method_state["epoch"]) == 2
    # The dominant modality was slowed at some logged step (k < 1), the other kept k = 1.
    ks = [(s["train/k/audio"], s["train/k/video"]) for s in history["steps"]]
    assert all(min(k) < 1.0 and max(k) == 1.0 for k in ks)
