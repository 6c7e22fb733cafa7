"""AGM: Shapley-style logits, coefficients, running means, hook equivalence, clipping, training."""

import itertools
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

from mlb_jax.balancing import balancing_state
from mlb_jax.methods import make_method
from mlb_jax.methods.agm import (
    AGM,
    agm_coefficients,
    agm_gradient_transform,
    agm_logits,
    conditional_clip_by_global_norm,
    cumulative_mean,
    regex_mask,
    shapley_scores,
    shapley_weight,
)
from mlb_jax.methods.base import cross_entropy
from mlb_jax.models import EncoderSpec, MultimodalClassifier

A, V, T = "audio", "video", "text"


def fs(*names):
    return frozenset(names)


def shapley_values(values, modalities):
    """The textbook Shapley values phi_m = sum_{S not containing m} w(|S|) [v(S + m) - v(S)].

    The oracle of `agm_logits` (o_m = phi_m + v(empty) / M): every coalition, the empty one
    included, must be in `values`.
    """
    m = len(modalities)
    subsets = [frozenset(c) for r in range(m + 1) for c in itertools.combinations(modalities, r)]
    return {
        name: sum(
            shapley_weight(len(s), m) * (values[s | {name}] - values[s])
            for s in subsets
            if name not in s
        )
        for name in modalities
    }


# ----------------------------------------------------------------------------- Shapley maths


def test_shapley_two_modalities_by_hand():
    # f(a, v) = 5, f(0, v) = 2, f(a, 0) = 4, f(0, 0) = 1.
    values = {fs(A, V): 5.0, fs(V): 2.0, fs(A): 4.0, fs(): 1.0}
    phi = shapley_values(values, [A, V])
    assert phi[A] == pytest.approx(0.5 * ((5 - 2) + (4 - 1)))  # 3
    assert phi[V] == pytest.approx(0.5 * ((5 - 4) + (2 - 1)))  # 1
    o = agm_logits({k: v for k, v in values.items() if k}, [A, V])
    # MLB: o_a = (f - z_a + z_v) / 2 with z_a = f(0, v), z_v = f(a, 0).
    assert o[A] == pytest.approx(0.5 * (5 - 2 + 4))
    assert o[V] == pytest.approx(0.5 * (5 - 4 + 2))
    assert o[A] == pytest.approx(phi[A] + 1.0 / 2)
    assert o[A] + o[V] == pytest.approx(5.0)


def test_shapley_three_modalities_by_hand():
    # v(S) = 10 + sum_{m in S} c_m + 4 [a and v in S]: phi_a = 1 + 2, phi_v = 2 + 2, phi_t = 3.
    c = {A: 1.0, V: 2.0, T: 3.0}

    def v(s):
        return 10.0 + sum(c[m] for m in s) + (4.0 if {A, V} <= s else 0.0)

    subsets = [fs(*x) for x in ([], [A], [V], [T], [A, V], [A, T], [V, T], [A, V, T])]
    values = {s: v(s) for s in subsets}
    phi = shapley_values(values, [A, V, T])
    assert phi == pytest.approx({A: 3.0, V: 4.0, T: 3.0})
    o = agm_logits({s: x for s, x in values.items() if s}, [A, V, T])
    assert o == pytest.approx({m: phi[m] + 10.0 / 3 for m in (A, V, T)})
    assert sum(o.values()) == pytest.approx(v(fs(A, V, T)))


# ----------------------------------------------------------------------------- a hand-made model


class FakeEncoder:
    """x @ w; eval mode adds 0.5 (stands in for running BatchNorm statistics)."""

    def __init__(self, w, calls, name):
        self.w, self.calls, self.name = w, calls, name

    def __call__(self, x, *, train):
        self.calls.append((self.name, x.shape[0], train))
        return x @ self.w + (0.0 if train else 0.5)


class FakeFusion:
    """Late linear fusion sum_m x_m W_m + b."""

    def __init__(self, kernels, bias):
        self.kernels, self.bias = kernels, bias

    def __call__(self, features, *, train):
        del train
        return sum(features[m] @ self.kernels[m] for m in self.kernels) + self.bias


class FakeModel:
    encode = MultimodalClassifier.encode  # the real encoder loop over the fake encoders

    def __init__(self, params, names=(A, V)):
        self.calls = []
        self.modality_names = tuple(names)
        self.encoders = {m: FakeEncoder(params["enc"][m], self.calls, m) for m in names}
        self.fusion = FakeFusion(params["fusion"], params["bias"])


def fake_params(names=(A, V), dim=2, classes=3, seed=0):
    keys = iter(jax.random.split(jax.random.key(seed), 2 * len(names) + 1))
    return {
        "enc": {m: jax.random.normal(next(keys), (1, dim)) for m in names},
        "fusion": {m: jax.random.normal(next(keys), (dim, classes)) for m in names},
        "bias": jax.random.normal(next(keys), (classes,)),
    }


INPUTS = {A: jnp.array([[1.0], [2.0], [-1.0]]), V: jnp.array([[0.5], [0.0], [3.0]])}
LABELS = jnp.array([0, 2, 1])


def test_forward_two_modalities_matches_hand_formula():
    params = fake_params()
    model = FakeModel(params)
    out = AGM().forward(model, INPUTS, train=True, method_state={})
    w, k, b = params["enc"], params["fusion"], params["bias"]
    x = {m: INPUTS[m] @ w[m] for m in (A, V)}  # train-mode features
    zero = {m: jnp.full((1, 2), 0.5) for m in (A, V)}  # eval-mode encoder of a zero input
    f = x[A] @ k[A] + x[V] @ k[V] + b
    z_a = zero[A] @ k[A] + x[V] @ k[V] + b  # audio absent
    z_v = x[A] @ k[A] + zero[V] @ k[V] + b  # video absent
    np.testing.assert_allclose(out.logits, f, rtol=1e-6)
    np.testing.assert_allclose(out.unimodal_logits[A], 0.5 * (f - z_a + z_v), rtol=1e-5)
    np.testing.assert_allclose(out.unimodal_logits[V], 0.5 * (f - z_v + z_a), rtol=1e-5)
    np.testing.assert_allclose(out.unimodal_logits[A] + out.unimodal_logits[V], f, rtol=1e-5)
    # Ordinary passes in train mode on the batch; padded passes in eval mode on one example.
    assert sorted(model.calls) == [(A, 1, False), (A, 3, True), (V, 1, False), (V, 3, True)]


def test_forward_three_modalities_is_shapley_plus_empty_share():
    names = (A, V, T)
    params = fake_params(names)
    inputs = dict(INPUTS, text=jnp.array([[1.0], [1.0], [0.0]]))
    model = FakeModel(params, names)
    out = AGM().forward(model, inputs, train=True, method_state={})
    x = {m: inputs[m] @ params["enc"][m] for m in names}
    zero = {m: jnp.full((3, 2), 0.5) for m in names}
    fusion = model.fusion

    def v(s):
        return fusion({m: x[m] if m in s else zero[m] for m in names}, train=False)

    subsets = [fs(*c) for c in ([], [A], [V], [T], [A, V], [A, T], [V, T], [A, V, T])]
    phi = shapley_values({s: v(s) for s in subsets}, names)
    for m in names:
        np.testing.assert_allclose(out.unimodal_logits[m], phi[m] + v(fs()) / 3, atol=1e-5)
    np.testing.assert_allclose(sum(out.unimodal_logits.values()), out.logits, atol=1e-5)


def fake_losses_fn(agm, names=(A, V), inputs=INPUTS):
    def losses_fn(p):
        out = agm.forward(FakeModel(p, names), inputs, train=True, method_state={})
        return agm.losses(out, LABELS, {}), (out, None)

    return losses_fn


def test_path_gradients_with_k_equal_the_stop_gradient_hook():
    agm = AGM(alpha=1.0)
    params = fake_params()
    (loss, losses, (out, _)), grads = jax.jit(lambda p: agm.value_and_grad(fake_losses_fn(agm), p))(
        params
    )
    assert set(losses) == {"fused"}
    assert float(loss) == pytest.approx(float(cross_entropy(out.logits, LABELS)), rel=1e-6)
    k = {A: 0.3, V: 2.5}

    def hooked(p):
        # MLB's identity module with a backward hook: forward o, gradient x k.
        o = agm.forward(FakeModel(p), INPUTS, train=True, method_state={}).unimodal_logits
        scaled = {m: jax.lax.stop_gradient(o[m]) * (1 - k[m]) + o[m] * k[m] for m in o}
        return cross_entropy(scaled[A] + scaled[V], LABELS)

    expected = jax.jit(jax.grad(hooked))(params)
    combined = jax.tree.map(
        lambda ga, gv: k[A] * ga + k[V] * gv, out.path_gradients[A], out.path_gradients[V]
    )
    for a, b in zip(jax.tree.leaves(combined), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    # Without modulation the gradient is the plain gradient of CE(sum_m o_m) = CE(f).
    def unmodulated(p):
        o = agm.forward(FakeModel(p), INPUTS, train=True, method_state={}).unimodal_logits
        return cross_entropy(o[A] + o[V], LABELS)

    ones = jax.jit(jax.grad(unmodulated))(params)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ones)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # The transform turns the path gradients into sum_m k_m G_m with its own k.
    tx = agm_gradient_transform([A, V], alpha=1.0)
    kwargs = agm.update_kwargs(out, LABELS, {})
    updates, state = tx.update(grads, tx.init(params), params, **kwargs, unknown_arg=1)
    k_tx = {m: float(state.coefficients[m]) for m in (A, V)}
    manual = jax.tree.map(
        lambda ga, gv: k_tx[A] * ga + k_tx[V] * gv, out.path_gradients[A], out.path_gradients[V]
    )
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(manual)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_shapley_scores_by_hand():
    logits = {A: jnp.log(jnp.array([[0.7, 0.3], [0.2, 0.8]])), V: jnp.array([[0.0, 200.0]] * 2)}
    s = shapley_scores(logits, jnp.array([0, 0]))
    assert float(s[A]) == pytest.approx(-(math.log(0.7) + math.log(0.2)) / 2, rel=1e-5)
    # Probability 0 is floored at 1e-8.
    assert float(s[V]) == pytest.approx(-math.log(1e-8), rel=1e-5)


def test_padded_passes_write_no_batchnorm_statistics():
    # A real (tiny) model: after AGM's train-mode forward, BatchNorm running statistics are
    # exactly those of the plain forward; the eval-mode zero-input passes wrote nothing.
    rngs = nnx.Rngs(params=jax.random.key(0, impl="rbg"), dropout=1)
    specs = {A: EncoderSpec("audio"), V: EncoderSpec("video")}
    plain = MultimodalClassifier(specs, 3, base_width=2, conv="xla", rngs=rngs)
    agm_model = nnx.clone(plain)
    rng = np.random.default_rng(0)
    inputs = {
        A: jnp.asarray(rng.normal(size=(4, 16, 12)), jnp.float32),
        V: jnp.asarray(rng.normal(size=(4, 2, 16, 16, 3)), jnp.float32),
    }
    # Jitted (nnx.jit carries the BatchNorm updates out): op by op, this took 80 s.
    expected = nnx.jit(lambda model, x: model(x, train=True).logits)(plain, inputs)
    logits = nnx.jit(lambda model, x: AGM().forward(model, x, train=True, method_state={}).logits)(
        agm_model, inputs
    )
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    stats = [nnx.state(m, nnx.BatchStat) for m in (plain, agm_model)]
    assert jax.tree.leaves(stats[0])
    for a, b in zip(jax.tree.leaves(stats[0]), jax.tree.leaves(stats[1])):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- coefficients


def test_coefficients_have_the_original_sign():
    # Audio's loss fell below its history: it is ahead now, so it is slowed (BalanceBenchmark's
    # reversed sign would speed it up).
    k = agm_coefficients({A: 0.5, V: 1.5}, {A: 1.0, V: 1.0}, alpha=1.0)
    r_a, r_v = math.exp(1.5 - 0.5), math.exp(0.5 - 1.5)
    assert float(k[A]) == pytest.approx(math.exp(1.0 - r_a), rel=1e-5)
    assert float(k[V]) == pytest.approx(math.exp(1.0 - r_v), rel=1e-5)
    assert float(k[A]) < 1.0 < float(k[V])


def test_coefficients_cap_and_three_modalities():
    k = agm_coefficients({A: 1.0, V: 1.0}, {A: 0.0, V: 20.0}, alpha=0.5, max_exponent=10.0)
    assert float(k[A]) == pytest.approx(math.exp(0.5 * 10.0), rel=1e-5)  # exp(20) - 1 capped
    assert float(k[V]) == pytest.approx(math.exp(0.5 * (math.exp(-20.0) - 1.0)), rel=1e-5)
    # M = 3: r_m = exp(1.5 (mean_j s_j - s_m)), MLB's AGM_3mod.
    s = {A: 0.2, V: 0.8, T: 1.4}
    k3 = agm_coefficients(s, {A: 0.8, V: 0.8, T: 0.8}, alpha=2.0, max_exponent=7.0)
    for m in s:
        assert float(k3[m]) == pytest.approx(
            math.exp(2.0 * (1.0 - math.exp(1.5 * (0.8 - s[m])))), rel=1e-5
        )


def test_running_means_are_cumulative_and_read_before_the_update():
    params = {"w": jnp.ones(2)}
    tx = agm_gradient_transform([A, V], alpha=1.0)
    state = tx.init(params)
    zero = {"w": jnp.zeros(2)}
    paths = {A: zero, V: zero}
    audio = [1.0, 2.0, 6.0]
    for t, s_a in enumerate(audio):
        before = {m: float(state.smoothed_scores[m]) for m in (A, V)}
        _, state = jax.jit(tx.update)(
            zero, state, params, agm_scores={A: s_a, V: 1.0}, path_gradients=paths
        )
        expected_k = agm_coefficients({A: s_a, V: 1.0}, before, alpha=1.0)
        assert float(state.coefficients[A]) == pytest.approx(float(expected_k[A]), rel=1e-5)
        assert float(state.smoothed_scores[A]) == pytest.approx(np.mean(audio[: t + 1]))
        assert int(state.count) == t + 1
    assert float(state.smoothed_scores[A]) == pytest.approx(3.0)  # not an EMA
    assert float(cumulative_mean(jnp.float32(3.0), jnp.float32(7.0), 3)) == pytest.approx(4.0)


# ----------------------------------------------------------------------------- clipping


def test_clipping_only_when_a_fusion_kernel_element_is_large():
    params = {
        "encoders": {"audio": {"kernel": jnp.zeros(3)}},
        "fusion": {"linear": {"audio": {"kernel": jnp.zeros(2)}}, "bias": jnp.zeros(2)},
    }
    watch = regex_mask(params, r"^fusion/.*kernel$")
    assert watch["fusion"]["linear"]["audio"]["kernel"] and not watch["fusion"]["bias"]
    clip = conditional_clip_by_global_norm(watch, threshold=1.0, max_norm=1.0)
    state = clip.init(params)
    # Global norm 100, but every fusion-kernel element within +-1 (and the bias is not watched).
    small = {
        "encoders": {"audio": {"kernel": jnp.array([60.0, 80.0, 0.0])}},
        "fusion": {
            "linear": {"audio": {"kernel": jnp.array([0.5, -1.0])}},
            "bias": jnp.full(2, 9.0),
        },
    }
    out, _ = clip.update(small, state, params)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(small)):
        np.testing.assert_array_equal(a, b)
    large = jax.tree.map(lambda x: x, small)
    large["fusion"]["linear"]["audio"]["kernel"] = jnp.array([0.5, -1.5])
    out, _ = clip.update(large, state, params)
    norm = float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(large))))
    assert float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(out)))) == pytest.approx(
        1.0, rel=1e-5
    )
    np.testing.assert_allclose(
        out["encoders"]["audio"]["kernel"],
        large["encoders"]["audio"]["kernel"] / (norm + 1e-6),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="matches no parameter"):
        regex_mask(params, "^nothing/")


def test_config_errors_name_the_field():
    config = ml_collections.ConfigDict({"name": "agm", "agm": {"alpha": -1.0}})
    with pytest.raises(ValueError, match=r"config.method.agm.alpha must be >= 0, got -1.0"):
        make_method(config)
    method = make_method(ml_collections.ConfigDict({"name": "agm"}))  # defaults without a block
    assert method == AGM()
    config = ml_collections.ConfigDict({"name": "agm", "agm": {"clip_patern": "x"}})
    with pytest.raises(ValueError, match=r"unknown field config.method.agm.clip_patern; allowed"):
        make_method(config)
    config = ml_collections.ConfigDict({"name": "agm", "agm": {"clip_pattern": "("}})
    with pytest.raises(ValueError, match=r"config.method.agm.clip_pattern must be a valid regular"):
        make_method(config)
    # The path gradients are raw gradients: AGM cannot sit after the optimiser.
    config = ml_collections.ConfigDict({"name": "agm", "placement": "updates"})
    with pytest.raises(
        ValueError,
        match=r"config.method.placement='updates' has no effect with method 'agm' \(it needs raw",
    ):
        make_method(config)
    # Without clipping, clip_norm would be silently unused.
    config = ml_collections.ConfigDict({"name": "agm", "agm": {"clip_threshold": 0.0}})
    assert make_method(config).clip_threshold == 0.0
    config.agm.clip_norm = 5.0
    with pytest.raises(ValueError, match=r"config.method.agm.clip_norm=5.0 has no effect"):
        make_method(config)


# ----------------------------------------------------------------------------- training


def test_three_modalities_through_the_generic_step():
    state, new_state, metrics, outputs = trace_three_modality_step("agm")
    assert_same_shapes(state, new_state)
    names = {"audio", "video", "audio2"}
    assert {f"k/{m}" for m in names} | {f"smoothed_score/{m}" for m in names} <= set(metrics)
    assert set(outputs["unimodal_logits"]) == names
    assert outputs["logits"].shape == (8, 4)


def test_tiny_training_on_eight_devices(data_cache, tmp_path):
    assert jax.device_count() == 8
    results, state, history = run_tiny(tiny_config(data_cache, "agm"), tmp_path)
    assert results["method"] == "agm"
    losses = epoch_means(history, "loss")
    assert losses[1] < losses[0]
    # k and the running means were logged and live in the checkpointed optimiser state.
    assert all("train/k/audio" in s and "train/smoothed_score/video" in s for s in history["steps"])
    agm_state = balancing_state(state.opt_state)
    assert int(agm_state.count) == results["steps"] == 16
    assert all(np.isfinite(float(v)) and float(v) > 0 for v in agm_state.smoothed_scores.values())
