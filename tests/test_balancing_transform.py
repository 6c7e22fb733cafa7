import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from mlb_jax import balancing_state, mlb_gradient_transform, modality_masks
from mlb_jax.balancing import (
    BalancingState,
    MLBState,
    balancing_metrics,
    chain_with_balancing,
    mlb_rule,
    modality_labels,
    modality_values,
    parameter_paths,
    scale_by_modality,
)

# Scores with hand-computable coefficients at alpha=1, beta_max=10:
# r_audio = 0.5 -> k_audio = 1 + tanh(-0.5); r_video = 2 -> k_video = 1 + 9 tanh(1).
SCORES = {"audio": 0.8, "video": 0.4}
K_AUDIO = 1 + math.tanh(-0.5)
K_VIDEO = 1 + 9 * math.tanh(1.0)


def make_params():
    return {
        "encoders": {
            "audio": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)},
            "video": {"w": jnp.full((4, 3), 2.0, jnp.float32)},
        },
        "fusion": {"audio": {"kernel": jnp.ones((3, 2))}, "video": {"kernel": jnp.ones((3, 2))}},
        "bias": jnp.full((2,), 5.0, jnp.float32),
    }


PATTERNS = {"audio": [r"encoders/audio/", r"fusion/audio/"], "video": r"/video/"}


def make_masks(params):
    return modality_masks(params, PATTERNS)


def grads_like(params, seed=0):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_scales_exactly_the_masked_leaves():
    params = make_params()
    tx = mlb_gradient_transform(make_masks(params), alpha=1.0, beta_max=10.0)
    grads = grads_like(params)
    updates, state = tx.update(grads, tx.init(params), params, modality_scores=SCORES)
    np.testing.assert_allclose(
        updates["encoders"]["audio"]["w"], K_AUDIO * grads["encoders"]["audio"]["w"], rtol=1e-6
    )
    np.testing.assert_allclose(
        updates["encoders"]["audio"]["b"], K_AUDIO * grads["encoders"]["audio"]["b"], rtol=1e-6
    )
    np.testing.assert_allclose(
        updates["fusion"]["audio"]["kernel"],
        K_AUDIO * grads["fusion"]["audio"]["kernel"],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        updates["encoders"]["video"]["w"], K_VIDEO * grads["encoders"]["video"]["w"], rtol=1e-6
    )
    np.testing.assert_allclose(
        updates["fusion"]["video"]["kernel"],
        K_VIDEO * grads["fusion"]["video"]["kernel"],
        rtol=1e-6,
    )
    # The shared bias is in no mask: passed through bit for bit.
    np.testing.assert_array_equal(updates["bias"], grads["bias"])
    assert int(state.count) == 1
    assert float(state.coefficients["video"]) == pytest.approx(K_VIDEO, rel=1e-6)
    assert float(state.scores["audio"]) == pytest.approx(0.8)


def test_chain_with_sgd_gives_minus_lr_k_g():
    params = make_params()
    lr = 0.1
    tx = optax.chain(
        mlb_gradient_transform(make_masks(params), alpha=1.0, beta_max=10.0), optax.sgd(lr)
    )
    grads = grads_like(params, seed=1)
    updates, _ = tx.update(grads, tx.init(params), params, modality_scores=SCORES)
    np.testing.assert_allclose(
        updates["encoders"]["video"]["w"],
        -lr * K_VIDEO * grads["encoders"]["video"]["w"],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        updates["encoders"]["audio"]["w"],
        -lr * K_AUDIO * grads["encoders"]["audio"]["w"],
        rtol=1e-6,
    )
    np.testing.assert_allclose(updates["bias"], -lr * grads["bias"], rtol=1e-6)


def test_placement_before_adam_is_cancelled_after_adam_is_not():
    params = make_params()
    masks = make_masks(params)
    grads = grads_like(params, seed=2)
    lr = 1e-2
    plain = optax.adam(lr)
    plain_updates, _ = plain.update(grads, plain.init(params), params)
    before = chain_with_balancing(
        mlb_gradient_transform(masks, alpha=1.0, beta_max=10.0),
        optax.adam(lr),
        placement="gradients",
    )
    after = chain_with_balancing(
        mlb_gradient_transform(masks, alpha=1.0, beta_max=10.0), optax.adam(lr), placement="updates"
    )
    before_updates, _ = before.update(grads, before.init(params), params, modality_scores=SCORES)
    after_updates, _ = after.update(grads, after.init(params), params, modality_scores=SCORES)
    # Adam normalises a constant gradient scale away: scaling before Adam changes nothing
    # (up to eps), while scaling after Adam multiplies the step by k.
    video = ("encoders", "video", "w")
    pick = lambda t: t[video[0]][video[1]][video[2]]  # noqa: E731
    np.testing.assert_allclose(pick(before_updates), pick(plain_updates), rtol=1e-5)
    np.testing.assert_allclose(pick(after_updates), K_VIDEO * pick(plain_updates), rtol=1e-5)
    assert not np.allclose(pick(before_updates), pick(after_updates))


def test_placement_coincides_for_plain_sgd():
    params = make_params()
    masks = make_masks(params)
    grads = grads_like(params, seed=3)
    outs = []
    for placement in ("gradients", "updates"):
        tx = chain_with_balancing(
            mlb_gradient_transform(masks, alpha=1.0, beta_max=10.0),
            optax.sgd(0.1),
            placement=placement,
        )
        outs.append(tx.update(grads, tx.init(params), params, modality_scores=SCORES)[0])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), *outs)


def test_jit_matches_eager_and_does_not_retrace():
    params = make_params()
    tx = optax.chain(
        mlb_gradient_transform(make_masks(params), alpha=1.0, beta_max=10.0),
        optax.sgd(0.1, momentum=0.9),
    )
    traces = []

    @jax.jit
    def step(grads, state, scores):
        traces.append(1)
        return tx.update(grads, state, params, modality_scores=scores)

    state = tx.init(params)
    grads = grads_like(params)
    eager, _ = tx.update(grads, state, params, modality_scores=SCORES)
    jitted, state = step(grads, state, {k: jnp.float32(v) for k, v in SCORES.items()})
    step(grads, state, {k: jnp.float32(v) for k, v in SCORES.items()})
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), eager, jitted)
    assert len(traces) == 1


def test_unknown_extra_args_are_ignored():
    params = make_params()
    tx = mlb_gradient_transform(make_masks(params), alpha=1.0, beta_max=10.0)
    grads = grads_like(params)
    with_extra, _ = tx.update(grads, tx.init(params), params, modality_scores=SCORES, value=3.0)
    without, _ = tx.update(grads, tx.init(params), params, modality_scores=SCORES)
    jax.tree.map(np.testing.assert_array_equal, with_extra, without)


def test_inject_hyperparams_controls_alpha_and_beta():
    params = make_params()
    masks = make_masks(params)
    tx = optax.inject_hyperparams(mlb_gradient_transform, static_args=("modality_masks",))(
        modality_masks=masks, alpha=1.0, beta_max=10.0
    )
    state = tx.init(params)
    grads = grads_like(params)
    updates, state = tx.update(grads, state, params, modality_scores=SCORES)
    np.testing.assert_allclose(
        updates["encoders"]["video"]["w"], K_VIDEO * grads["encoders"]["video"]["w"], rtol=1e-6
    )
    state.hyperparams["beta_max"] = jnp.asarray(3.0)
    updates, state = tx.update(grads, state, params, modality_scores=SCORES)
    np.testing.assert_allclose(
        updates["encoders"]["video"]["w"],
        (1 + 2 * math.tanh(1.0)) * grads["encoders"]["video"]["w"],
        rtol=1e-6,
    )
    assert float(balancing_state(state).coefficients["video"]) == pytest.approx(
        1 + 2 * math.tanh(1.0), rel=1e-6
    )


def test_update_arguments_replace_alpha_and_beta_per_member_under_vmap():
    # Two members of one vmapped update, built with alpha=1, beta_max=10, hand their own
    # mlb_alpha / mlb_beta_max: each equals a transform built with its values.
    params = make_params()
    masks = make_masks(params)
    grads = grads_like(params)
    tx = mlb_gradient_transform(masks, alpha=1.0, beta_max=10.0)
    state = tx.init(params)
    own = {"mlb_alpha": jnp.asarray([0.5, 2.0]), "mlb_beta_max": jnp.asarray([10.0, 3.0])}

    def member(extra):
        return tx.update(grads, state, params, modality_scores=SCORES, **extra)[0]

    both = jax.jit(jax.vmap(member))(own)
    for i, (alpha, beta_max) in enumerate([(0.5, 10.0), (2.0, 3.0)]):
        built = mlb_gradient_transform(masks, alpha=alpha, beta_max=beta_max)
        want = built.update(grads, built.init(params), params, modality_scores=SCORES)[0]
        for got, ref in zip(jax.tree.leaves(both), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(got[i], ref, rtol=1e-6)
    # video leads (r = 2): k = 1 + (beta_max - 1) tanh(alpha)
    k_video = both["encoders"]["video"]["w"] / grads["encoders"]["video"]["w"]
    np.testing.assert_allclose(
        k_video[:, 0, 0], [1 + 9 * math.tanh(0.5), 1 + 2 * math.tanh(2.0)], rtol=1e-6
    )


def test_alpha_schedule_is_evaluated_at_the_update_count():
    params = make_params()
    # alpha = 0 on the first update (k = 1), 1 afterwards.
    tx = mlb_gradient_transform(
        make_masks(params), alpha=lambda count: jnp.where(count < 1, 0.0, 1.0), beta_max=10.0
    )
    grads = grads_like(params)
    state = tx.init(params)
    first, state = tx.update(grads, state, params, modality_scores=SCORES)
    second, state = tx.update(grads, state, params, modality_scores=SCORES)
    jax.tree.map(np.testing.assert_array_equal, first, grads)
    np.testing.assert_allclose(
        second["encoders"]["video"]["w"], K_VIDEO * grads["encoders"]["video"]["w"], rtol=1e-6
    )


def test_score_ema_smooths_before_coefficients():
    params = make_params()
    tx = mlb_gradient_transform(make_masks(params), alpha=1.0, beta_max=10.0, score_ema=0.5)
    grads = grads_like(params)
    state = tx.init(params)
    _, state = tx.update(grads, state, params, modality_scores={"audio": 0.8, "video": 0.4})
    assert float(state.smoothed_scores["video"]) == pytest.approx(0.4)  # first step: no history
    _, state = tx.update(grads, state, params, modality_scores={"audio": 0.8, "video": 0.8})
    assert float(state.scores["video"]) == pytest.approx(0.8)
    assert float(state.smoothed_scores["video"]) == pytest.approx(0.6)
    # r_video = 0.8 / 0.6
    assert float(state.coefficients["video"]) == pytest.approx(
        1 + 9 * math.tanh(0.8 / 0.6 - 1), rel=1e-6
    )


def test_multisteps_applies_k_to_the_accumulated_gradient():
    params = make_params()
    lr = 0.1
    inner = optax.chain(
        mlb_gradient_transform(make_masks(params), alpha=1.0, beta_max=10.0), optax.sgd(lr)
    )
    tx = optax.MultiSteps(inner, every_k_schedule=2)
    state = tx.init(params)
    g1, g2 = grads_like(params, 4), grads_like(params, 5)
    u1, state = tx.update(g1, state, params, modality_scores={"audio": 0.5, "video": 0.5})
    u2, state = tx.update(g2, state, params, modality_scores=SCORES)
    jax.tree.map(lambda u: np.testing.assert_array_equal(u, np.zeros_like(u)), u1)
    mean_video = (g1["encoders"]["video"]["w"] + g2["encoders"]["video"]["w"]) / 2
    np.testing.assert_allclose(u2["encoders"]["video"]["w"], -lr * K_VIDEO * mean_video, rtol=1e-5)
    assert int(balancing_state(state).count) == 1


def test_sharded_on_eight_devices_equals_single_device():
    assert jax.device_count() == 8
    params = {
        "enc_a": jnp.arange(32.0).reshape(8, 4),
        "enc_v": jnp.linspace(-1, 1, 64).reshape(8, 8),
        "bias": jnp.ones(8),
    }
    masks = modality_masks(params, {"audio": "enc_a", "video": "enc_v"})
    tx = optax.chain(
        mlb_gradient_transform(masks, alpha=1.0, beta_max=10.0), optax.sgd(0.1, momentum=0.9)
    )
    grads = jax.tree.map(lambda x: jnp.sin(x) + 0.5, params)

    def run(p, g):
        state = tx.init(p)
        for _ in range(3):
            u, state = tx.update(g, state, p, modality_scores=SCORES)
            p = optax.apply_updates(p, u)
        return p, state

    single = jax.jit(run)(params, grads)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    row = jax.NamedSharding(mesh, jax.P("data"))
    sharded_params = jax.device_put(params, row)
    sharded_grads = jax.device_put(grads, row)
    with jax.set_mesh(mesh):
        sharded = jax.jit(run)(sharded_params, sharded_grads)
    assert sharded[0]["enc_v"].sharding.spec[0] == "data"  # stays sharded by rows
    # Equal up to float32 rounding (XLA may fuse the multiply-adds differently per layout).
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), single, sharded
    )


def test_orbax_round_trip_of_optimizer_state(tmp_path):
    params = make_params()
    tx = optax.chain(
        mlb_gradient_transform(make_masks(params), alpha=1.0, beta_max=10.0),
        optax.sgd(0.1, momentum=0.9),
    )
    state = tx.init(params)
    grads = grads_like(params)
    _, state = tx.update(grads, state, params, modality_scores=SCORES)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp_path / "opt", state)
        ckptr.wait_until_finished()
        restored = ckptr.restore(
            tmp_path / "opt", jax.tree.map(ocp.utils.to_shape_dtype_struct, tx.init(params))
        )
    assert isinstance(balancing_state(restored), MLBState)
    jax.tree.map(np.testing.assert_array_equal, state, restored)
    scores2 = {"audio": 0.3, "video": 0.6}
    a, sa = tx.update(grads, state, params, modality_scores=scores2)
    b, sb = tx.update(grads, restored, params, modality_scores=scores2)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    jax.tree.map(np.testing.assert_array_equal, sa, sb)


def test_balancing_metrics_reads_through_chain():
    params = make_params()
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        mlb_gradient_transform(make_masks(params), alpha=1.0, beta_max=10.0),
        optax.sgd(0.1),
    )
    _, state = tx.update(grads_like(params), tx.init(params), params, modality_scores=SCORES)
    metrics = balancing_metrics(state)
    assert set(metrics) == {
        "k/audio",
        "k/video",
        "score/audio",
        "score/video",
        "smoothed_score/audio",
        "smoothed_score/video",
    }
    assert float(metrics["k/audio"]) == pytest.approx(K_AUDIO, rel=1e-6)
    with pytest.raises(ValueError, match="contains no BalancingState"):
        balancing_state(optax.sgd(0.1).init(params))


def test_dtype_of_updates_is_preserved():
    params = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(3, jnp.bfloat16)}
    masks = modality_masks(params, {"x": "^a$", "y": "^b$"})
    tx = mlb_gradient_transform(masks, alpha=1.0, beta_max=10.0)
    updates, _ = tx.update(params, tx.init(params), params, modality_scores={"x": 0.8, "y": 0.4})
    assert updates["a"].dtype == jnp.bfloat16 and updates["b"].dtype == jnp.bfloat16


def test_callable_masks_are_resolved_from_params():
    params = make_params()
    tx = mlb_gradient_transform(
        {
            name: (lambda p, pats=pats: modality_masks(p, {"m": pats})["m"])
            for name, pats in PATTERNS.items()
        },
        alpha=1.0,
        beta_max=10.0,
    )
    grads = grads_like(params)
    updates, _ = tx.update(grads, tx.init(params), params, modality_scores=SCORES)
    np.testing.assert_allclose(
        updates["encoders"]["video"]["w"], K_VIDEO * grads["encoders"]["video"]["w"], rtol=1e-6
    )


class TestBadInput:
    def test_missing_score(self):
        params = make_params()
        tx = mlb_gradient_transform(make_masks(params), alpha=1.0, beta_max=10.0)
        with pytest.raises(ValueError, match=r"modality_scores lacks \['video'\]"):
            tx.update(params, tx.init(params), params, modality_scores={"audio": 0.5})

    def test_unknown_modality(self):
        params = make_params()
        tx = mlb_gradient_transform(make_masks(params), alpha=1.0, beta_max=10.0)
        with pytest.raises(ValueError, match=r"unknown modalities \['text'\]"):
            tx.update(
                params,
                tx.init(params),
                params,
                modality_scores={"audio": 0.5, "video": 0.5, "text": 0.1},
            )

    def test_one_modality(self):
        params = make_params()
        with pytest.raises(ValueError, match="at least two modalities"):
            mlb_gradient_transform({"audio": make_masks(params)["audio"]}, alpha=1.0)

    def test_negative_alpha(self):
        with pytest.raises(ValueError, match="alpha must be >= 0, got -1.0"):
            mlb_gradient_transform(make_masks(make_params()), alpha=-1.0)

    def test_negative_beta_max(self):
        with pytest.raises(ValueError, match="beta_max must be >= 0, got -0.5"):
            mlb_gradient_transform(make_masks(make_params()), alpha=1.0, beta_max=-0.5)

    def test_mask_structure_mismatch(self):
        params = make_params()
        masks = make_masks(params)
        masks["video"] = {"encoders": True}
        tx = mlb_gradient_transform(masks, alpha=1.0)
        with pytest.raises(ValueError, match="mask of modality 'video' does not match"):
            tx.init(params)

    def test_overlapping_masks(self):
        params = make_params()
        masks = make_masks(params)
        masks["video"] = jax.tree.map(lambda _: True, params)
        tx = mlb_gradient_transform(masks, alpha=1.0)
        with pytest.raises(ValueError, match="selected by two modality masks: encoders/audio/b"):
            tx.init(params)

    def test_bad_ema(self):
        with pytest.raises(ValueError, match=r"score_ema must be in \[0, 1\)"):
            mlb_gradient_transform(make_masks(make_params()), alpha=1.0, score_ema=1.0)


# ----------------------------------------------------------------------------- the core


def test_mlbstate_is_a_deprecated_alias_of_balancing_state():
    assert MLBState is BalancingState
    state = mlb_gradient_transform(make_masks(make_params()), alpha=1.0).init(make_params())
    assert isinstance(state, BalancingState) and state.extra == ()


def constant_rule(k):
    """A coefficient rule that applies the fixed coefficients `k` and records nothing else."""

    def rule(modalities, state, inputs):
        del inputs
        return state._replace(coefficients={m: jnp.float32(k[m]) for m in modalities})

    return rule


def test_core_scales_labelled_leaves_exactly_and_passes_none_unscaled():
    params = make_params()
    labels = modality_labels(params, PATTERNS)
    # The labels say who owns what; the shared bias is labelled None.
    flat = dict(zip(parameter_paths(params), jax.tree.structure(params).flatten_up_to(labels)))
    assert flat == {
        "bias": None,
        "encoders/audio/b": "audio",
        "encoders/audio/w": "audio",
        "encoders/video/w": "video",
        "fusion/audio/kernel": "audio",
        "fusion/video/kernel": "video",
    }
    tx = scale_by_modality(
        labels, constant_rule({"audio": 0.25, "video": 3.0}), modalities=["audio", "video"]
    )
    grads = grads_like(params)
    updates, state = tx.update(grads, tx.init(params), params)
    for path, g, u in zip(
        parameter_paths(params), jax.tree.leaves(grads), jax.tree.leaves(updates)
    ):
        k = {"audio": 0.25, "video": 3.0, None: 1.0}[flat[path]]
        np.testing.assert_array_equal(np.asarray(u), np.float32(k) * np.asarray(g), err_msg=path)
    np.testing.assert_array_equal(updates["bias"], grads["bias"])  # bit for bit
    assert int(state.count) == 1
    assert float(state.coefficients["video"]) == 3.0


def test_core_with_labels_equals_mlb_with_masks():
    params = make_params()
    grads = grads_like(params, seed=7)
    by_masks = mlb_gradient_transform(make_masks(params), alpha=1.0, beta_max=10.0)
    by_labels = scale_by_modality(
        modality_labels(params, PATTERNS),
        mlb_rule(alpha=1.0, beta_max=10.0),
        modalities=["audio", "video"],
    )
    a, sa = by_masks.update(grads, by_masks.init(params), params, modality_scores=SCORES)
    b, sb = by_labels.update(grads, by_labels.init(params), params, modality_scores=SCORES)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    jax.tree.map(np.testing.assert_array_equal, sa, sb)
    assert float(sb.coefficients["video"]) == pytest.approx(K_VIDEO, rel=1e-6)


def test_core_alpha_schedule_through_the_mlb_rule():
    # alpha(count) = 0.5 * count: k = 1 at the first update, then alpha = 0.5 and 1.0.
    params = make_params()
    tx = scale_by_modality(
        modality_labels(params, PATTERNS),
        mlb_rule(alpha=lambda count: 0.5 * count, beta_max=10.0),
        modalities=["audio", "video"],
    )
    grads = grads_like(params)
    state = tx.init(params)
    expected_video = [1.0, 1 + 9 * math.tanh(0.5), 1 + 9 * math.tanh(1.0)]  # r_video = 2
    for k in expected_video:
        updates, state = tx.update(grads, state, params, modality_scores=SCORES)
        np.testing.assert_allclose(
            updates["encoders"]["video"]["w"], k * grads["encoders"]["video"]["w"], rtol=1e-6
        )
    assert int(state.count) == 3


def test_core_callable_labels_and_label_errors():
    params = make_params()
    tx = scale_by_modality(
        lambda p: modality_labels(p, PATTERNS),
        constant_rule({"audio": 2.0, "video": 1.0}),
        modalities=["audio", "video"],
    )
    updates, _ = tx.update(params, tx.init(params), params)
    np.testing.assert_array_equal(
        updates["encoders"]["audio"]["w"], 2 * params["encoders"]["audio"]["w"]
    )
    wrong_structure = scale_by_modality(
        {"bias": None}, constant_rule({"a": 1.0, "b": 1.0}), modalities=["a", "b"]
    )
    with pytest.raises(ValueError, match="modality labels do not match the parameter structure"):
        wrong_structure.init(params)
    unknown = jax.tree.map(lambda _: "text", params)
    with pytest.raises(ValueError, match=r"parameter 'bias' is labelled 'text', which is not one"):
        scale_by_modality(unknown, constant_rule({}), modalities=["audio", "video"]).init(params)
    with pytest.raises(ValueError, match="at least two modalities"):
        scale_by_modality(None, constant_rule({}), modalities=["audio"])


def test_core_reads_and_checks_per_modality_inputs():
    names = ["audio", "video"]
    assert modality_values({}, "modality_scores", names, required=False) is None
    values = modality_values(
        {"modality_scores": {"video": 2, "audio": 1}}, "modality_scores", names
    )
    assert list(values) == names and values["video"].dtype == jnp.float32
    with pytest.raises(ValueError, match=r"needs the keyword argument modality_scores="):
        modality_values({}, "modality_scores", names)
    with pytest.raises(ValueError, match=r"modality_scores\['audio'\] must be a scalar"):
        modality_values(
            {"modality_scores": {"audio": jnp.ones(2), "video": 1.0}}, "modality_scores", names
        )
