"""ReconBoost: stage cycle, boosting and agreement losses, freezing, and a tiny training run."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from tiny_run import (
    assert_same_shapes,
    epoch_means,
    run_tiny,
    tiny_config,
    trace_three_modality_step,
)

from mlb_jax import trainer
from mlb_jax.checkpointing import RunCheckpoints
from mlb_jax.methods import make_method
from mlb_jax.methods.reconboost import (
    ReconBoost,
    agreement_loss,
    boosting_loss,
    freeze_transform,
    stage_flags,
)
from mlb_jax.models.multimodal import ModelOutput
from mlb_jax.optim import make_optimizer

A, V, T = "audio", "video", "text"


def flags(method, state):
    active, ensemble = stage_flags(
        state["stage"], state["slot"], method.boost_epochs, method.ensemble_epochs
    )
    boosted = [m for m, a in active.items() if float(a) == 1.0]
    return boosted[0] if boosted else ("ensemble" if float(ensemble) == 1.0 else None)


def test_stage_advances_once_per_epoch_through_the_cycle():
    method = ReconBoost(boost_epochs=1, ensemble_epochs=1)
    state = method.init_state([A, V], 4)
    seen = []
    for _ in range(5):
        seen.append(flags(method, jax.tree.map(jnp.asarray, state)))
        state = method.end_of_epoch(state, context=None)
    assert seen == [A, "ensemble", V, "ensemble", A]  # MLB's 2E + 2S cycle
    assert state["stage"].dtype == np.int32 and state["stage"].shape == ()
    # M = 3, E = 2, S = 1: a cycle of 9 epochs in the config's modality order.
    method = ReconBoost(boost_epochs=2, ensemble_epochs=1)
    state = method.init_state([V, T, A], 4)
    seen = []
    for _ in range(10):
        seen.append(flags(method, state))
        state = method.end_of_epoch(state, context=None)
    assert seen == [V, V, "ensemble", T, T, "ensemble", A, A, "ensemble", V]


def test_boosting_loss_by_hand():
    logits = jnp.log(jnp.array([[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]]))
    ensemble = jnp.log(jnp.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6]]))
    labels = jnp.array([0, 1])
    loss = boosting_loss(logits, ensemble, labels, w1=5.0, w2=1.0)
    # -w1 mean_k(t_k ln p_k) + w2 mean_k(t_k q_k ln p_k), K = 3, averaged over the batch.
    per = [(5 - 0.8) / 3 * -math.log(0.5), (5 - 0.2) / 3 * -math.log(0.6)]
    assert float(loss) == pytest.approx(np.mean(per), rel=1e-5)
    # The ensemble side carries no gradient.
    grad = jax.grad(lambda e: boosting_loss(logits, e, labels, w1=5.0, w2=1.0))(ensemble)
    np.testing.assert_array_equal(grad, 0.0)


def test_agreement_loss_has_a_gradient_on_the_boosted_side_only():
    logits = {A: jnp.array([[0.0, 0.0]]), V: jnp.array([[math.log(3.0), 0.0]])}
    # softmax: audio [0.5, 0.5], video [0.75, 0.25]; MSE = 0.25^2.
    assert float(agreement_loss(logits, A)) == pytest.approx(0.0625, rel=1e-5)
    grads = jax.grad(lambda lg: agreement_loss(lg, A))(logits)
    # Not a no-op (MLB and BalanceBenchmark detach both sides, so their GA has no gradient).
    assert float(jnp.abs(grads[A]).sum()) > 0
    np.testing.assert_array_equal(grads[V], 0.0)


def test_losses_follow_the_stage():
    method = ReconBoost(alpha=0.5, w1=5.0, w2=1.0)
    uni = {A: jnp.array([[1.0, 0.0], [0.0, 0.5]]), V: jnp.array([[0.2, 0.1], [2.0, 0.0]])}
    z = uni[A] + uni[V]
    out = ModelOutput(z, uni, {})
    labels = jnp.array([0, 1])
    state = jax.tree.map(jnp.asarray, method.init_state([A, V], 2))  # stage 0: boost audio
    losses = method.losses(out, labels, state)
    expected = boosting_loss(uni[A], z, labels, w1=5.0, w2=1.0) + 0.5 * agreement_loss(uni, A)
    assert float(method.combine(losses)) == pytest.approx(float(expected), rel=1e-6)
    assert float(losses["boost_video"]) == 0.0 and float(losses["ensemble"]) == 0.0
    kwargs = method.update_kwargs(out, labels, state)
    assert {m: float(v) for m, v in kwargs["modality_trainable"].items()} == {A: 1.0, V: 0.0}
    assert float(kwargs["shared_trainable"]) == 0.0
    state = dict(state, stage=jnp.asarray(1, jnp.int32))  # ensemble
    losses = method.losses(out, labels, state)
    assert float(method.combine(losses)) == pytest.approx(float(losses["fused"]), rel=1e-6)
    kwargs = method.update_kwargs(out, labels, state)
    assert all(float(v) == 1.0 for v in kwargs["modality_trainable"].values())


def test_inactive_leaves_do_not_move_through_the_full_optimiser():
    params = {
        "encoders": {A: {"w": jnp.ones(3)}, V: {"w": jnp.full(2, 2.0)}},
        "fusion": {"bias": jnp.ones(2)},
    }
    labels = {"encoders": {A: {"w": A}, V: {"w": V}}, "fusion": {"bias": None}}
    train = ml_collections.ConfigDict(
        {
            "optimizer": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 0.1,
            "schedule": "constant",
            "epochs": 1,
        }
    )
    tx, _ = make_optimizer(train, 10, freeze_transform(labels), placement="updates")
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    p = params
    for _ in range(3):  # boost audio: video and the shared bias must not move, decay included
        updates, state = tx.update(
            grads,
            state,
            p,
            modality_trainable={A: jnp.float32(1), V: jnp.float32(0)},
            shared_trainable=jnp.float32(0),
        )
        p = optax.apply_updates(p, updates)
    np.testing.assert_array_equal(p["encoders"][V]["w"], params["encoders"][V]["w"])
    np.testing.assert_array_equal(p["fusion"]["bias"], params["fusion"]["bias"])
    assert np.all(np.asarray(p["encoders"][A]["w"]) < 1.0)


def test_config_fields_and_errors():
    config = ml_collections.ConfigDict(
        {"name": "reconboost", "reconboost": {"w1": 3.0, "boost_epochs": 4, "ensemble_epochs": 4}}
    )
    method = make_method(config)
    assert (method.w1, method.w2, method.boost_epochs, method.placement) == (3.0, 1.0, 4, "updates")
    config.reconboost.boost_epochs = 0
    with pytest.raises(ValueError, match=r"config.method.reconboost.boost_epochs must be >= 1"):
        make_method(config)
    config.reconboost = ml_collections.ConfigDict({"boost_epoch": 2})
    with pytest.raises(ValueError, match=r"unknown field config.method.reconboost.boost_epoch;"):
        make_method(config)
    # Freezing always acts after the optimiser; config.method.placement cannot move it.
    config = ml_collections.ConfigDict({"name": "reconboost", "placement": "updates"})
    with pytest.raises(
        ValueError, match=r"placement='updates' has no effect with method 'reconboost'"
    ):
        make_method(config)


def test_three_modalities_through_the_generic_step():
    state, new_state, metrics, _ = trace_three_modality_step("reconboost")
    assert_same_shapes(state, new_state)
    assert {f"loss/boost_{m}" for m in ("audio", "video", "audio2")} <= set(metrics)
    # Slots follow config.model.modalities' order; a ConfigDict iterates its keys sorted.
    assert {m: int(s) for m, s in state.method_state["slot"].items()} == {
        "audio": 0,
        "audio2": 1,
        "video": 2,
    }


def test_tiny_training_on_eight_devices(data_cache, tmp_path):
    assert jax.device_count() == 8
    config = tiny_config(data_cache, "reconboost")
    results, state, history = run_tiny(config, tmp_path)
    assert results["method"] == "reconboost"
    # Epoch 1 boosts audio, epoch 2 trains the ensemble: the objectives differ, so compare the
    # ensemble's cross-entropy, logged in every stage.
    fused = epoch_means(history, "loss/fused")
    assert fused[1] < fused[0]
    assert epoch_means(history, "loss/ensemble")[0] == 0.0
    assert epoch_means(history, "loss/boost_video") == [0.0, 0.0]
    assert int(state.method_state["stage"]) == 2  # next: boost video
    # After the audio-boosting epoch the video parameters are exactly the initial ones.
    _, initial = trainer.setup(config, trainer.load_dataset(config))
    ckpts = RunCheckpoints(tmp_path)
    after_first, _ = ckpts.restore(initial, step=8)
    ckpts.close()
    video = [
        (a, b)
        for (path, a), b in zip(
            jax.tree_util.tree_flatten_with_path(after_first.params)[0],
            jax.tree.leaves(initial.params),
        )
        if "video" in jax.tree_util.keystr(path)
    ]
    assert video
    for a, b in video:
        np.testing.assert_array_equal(a, b)
    audio_kernel = after_first.params["heads"][A]["kernel"][...]
    assert not np.array_equal(audio_kernel, initial.params["heads"][A]["kernel"][...])
