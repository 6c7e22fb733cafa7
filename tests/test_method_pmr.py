"""PMR: prototypes, absent classes, coefficients, the loss, resume, and a tiny training run."""

import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from test_train import assert_same_results_and_final_params, load_tiny
from tiny_run import (
    assert_same_shapes,
    epoch_means,
    restore_latest,
    run_tiny,
    tiny_config,
    trace_three_modality_step,
)

from mlb_jax import trainer
from mlb_jax.checkpointing import RunCheckpoints
from mlb_jax.methods import make_method
from mlb_jax.methods.pmr import (
    PMR,
    class_prototypes,
    normalize_features,
    prototype_logits,
    prototype_score,
    prototype_subset,
    rebalance_coefficients,
    update_prototypes,
)
from mlb_jax.models.multimodal import ModelOutput
from mlb_jax.steps import create_train_state

A, V, T = "audio", "video", "text"


def test_class_prototypes_are_class_means_and_absent_classes_are_not_nan():
    features = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 9.0]])
    protos, present = class_prototypes(features, np.array([0, 0, 2, 2]), 3)
    np.testing.assert_allclose(protos, [[2.0, 3.0], [0.0, 0.0], [6.0, 7.5]])
    np.testing.assert_array_equal(present, [True, False, True])
    assert protos.dtype == np.float32


def test_update_prototypes_momentum_and_absent_classes():
    old = np.array([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0], [0.0, 0.0]], np.float32)
    old_valid = np.array([True, True, False, False])
    new = np.array([[3.0, 5.0], [0.0, 0.0], [4.0, 4.0], [0.0, 0.0]], np.float32)
    present = np.array([True, False, True, False])
    protos, valid = update_prototypes(old, old_valid, new, present, momentum=0.5)
    # class 0: blend; class 1: absent now, kept; class 2: first seen, taken; class 3: never seen.
    np.testing.assert_allclose(protos, [[2.0, 3.0], [2.0, 2.0], [4.0, 4.0], [0.0, 0.0]])
    np.testing.assert_array_equal(valid, [True, True, True, False])
    replaced, _ = update_prototypes(old, old_valid, new, present, momentum=0.0)
    np.testing.assert_allclose(replaced[0], [3.0, 5.0])


def test_prototype_logits_scores_and_invalid_classes():
    features = jnp.array([[0.0, 0.0], [3.0, 4.0]])
    protos = jnp.array([[0.0, 0.0], [3.0, 0.0], [9.0, 9.0]])
    logits = prototype_logits(features, protos, jnp.array([True, True, False]))
    np.testing.assert_allclose(logits[:, :2], [[0.0, -3.0], [-5.0, -4.0]], atol=1e-5)
    assert float(logits[0, 2]) < -1e8  # invalid class: out of the softmax
    score = prototype_score(logits, jnp.array([0, 1]), jnp.ones(2))
    expected = 1 / (1 + math.exp(-3.0)) + math.exp(-4.0) / (math.exp(-5.0) + math.exp(-4.0))
    assert float(score) == pytest.approx(expected, rel=1e-5)
    # An example whose class has no prototype has weight 0.
    assert float(prototype_score(logits, jnp.array([0, 1]), jnp.array([1.0, 0.0]))) == (
        pytest.approx(1 / (1 + math.exp(-3.0)), rel=1e-5)
    )


def test_rebalance_coefficients_pick_the_weak_modality():
    betas = rebalance_coefficients({A: jnp.float32(3.0), V: jnp.float32(1.0)}, 1.5)
    assert (float(betas[A]), float(betas[V])) == (0.0, 1.5)  # rho = 3 > 1: video is weak
    betas = rebalance_coefficients({A: jnp.float32(1.0), V: jnp.float32(3.0)}, 1.5)
    assert (float(betas[A]), float(betas[V])) == (1.5, 0.0)
    betas = rebalance_coefficients({A: jnp.float32(2.0), V: jnp.float32(2.0)}, 1.5)
    assert (float(betas[A]), float(betas[V])) == (0.0, 0.0)  # rho = 1: neither
    # M = 3: below the mean of the others.
    betas = rebalance_coefficients({A: 1.0, V: 2.0, T: 4.0}, 2.0)
    assert {m: float(b) for m, b in betas.items()} == {A: 2.0, V: 2.0, T: 0.0}


def test_losses_by_hand():
    pmr = PMR(alpha=2.0, normalize=False, max_feature_dim=3)
    state = pmr.init_state([A, V], 2)
    state["valid"] = np.array([True, True])
    state["prototypes"][A][:, :2] = [[0.0, 0.0], [3.0, 0.0]]
    state["prototypes"][V][:, :2] = [[1.0, 0.0], [0.0, 1.0]]
    labels = jnp.array([0, 1])
    features = {A: jnp.array([[0.0, 0.0], [3.0, 4.0]]), V: jnp.array([[1.0, 0.0], [1.0, 0.0]])}
    fused = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    out = ModelOutput(fused, {}, features)
    losses = jax.jit(pmr.losses)(out, labels, jax.tree.map(jnp.asarray, state))
    # Audio: -d = [[0, -3], [-5, -4]]; video: -d = [[0, -sqrt2], [0, -sqrt2]].
    s_a = 1 / (1 + math.exp(-3)) + 1 / (1 + math.exp(-1))
    s_v = 1 / (1 + math.exp(-math.sqrt(2))) + 1 / (1 + math.exp(math.sqrt(2)))
    assert s_v < s_a  # video is weak: it gets alpha
    ce_v = 0.5 * (math.log(1 + math.exp(-math.sqrt(2))) + math.log(1 + math.exp(math.sqrt(2))))
    assert float(losses["prototype_video"]) == pytest.approx(2.0 * ce_v, rel=1e-5)
    assert float(losses["prototype_audio"]) == 0.0
    ce_z = 0.5 * (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2)))
    assert float(losses["fused"]) == pytest.approx(ce_z, rel=1e-5)


def test_first_epoch_and_invalid_classes_give_finite_zero_prototype_losses():
    pmr = PMR(alpha=1.0)
    state = jax.tree.map(jnp.asarray, pmr.init_state([A, V], 3))
    features = {A: jnp.array([[1.0, 2.0], [2.0, 0.0]]), V: jnp.array([[0.0, 1.0], [5.0, 1.0]])}
    out = ModelOutput(jnp.zeros((2, 3)), {}, features)

    def total(feats):
        losses = pmr.losses(out._replace(features=feats), jnp.array([0, 2]), state)
        return sum(v for k, v in losses.items() if k != "fused"), losses

    grads, losses = jax.grad(total, has_aux=True)(features)
    assert float(losses["prototype_audio"]) == 0.0 and float(losses["prototype_video"]) == 0.0
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    # Class 2 has a prototype, class 0 none: only the second example counts.
    state = dict(state, valid=jnp.array([False, True, True]))
    _, losses = jax.grad(total, has_aux=True)(features)
    assert all(np.isfinite(float(v)) for v in losses.values())
    # Example 0's class has no prototype: it is out of the loss, not a 1e9 logit penalty.
    assert all(float(losses[f"prototype_{m}"]) < 50.0 for m in (A, V))


class FakeContext:
    """An epoch context over hand-made predictions of a whole split (`outputs`)."""

    def __init__(self, epoch, outputs):
        self.epoch, self.outputs, self.splits, self.indices = epoch, outputs, [], []

    def split_size(self, split):
        return len(self.outputs["labels"])

    def predict(self, split, indices=None):
        self.splits.append(split)
        self.indices.append(indices)
        if indices is None:
            return self.outputs
        return jax.tree.map(lambda x: np.asarray(x)[indices], self.outputs)


def test_end_of_epoch_prototypes_subset_and_absent_classes():
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1, 0, 1, 0, 1, 0, 1])  # class 2 never appears
    outputs = {
        "labels": labels,
        "features": {A: rng.normal(size=(10, 4)), V: rng.normal(size=(10, 2))},
    }
    pmr = PMR(fraction=1.0, normalize=True, max_feature_dim=6, split="training")
    state = pmr.init_state([A, V], 3)
    context = FakeContext(0, outputs)
    new = pmr.end_of_epoch(state, context)
    assert context.splits == ["training"]
    np.testing.assert_array_equal(new["valid"], [True, True, False])
    for m, dim in ((A, 4), (V, 2)):
        assert new["prototypes"][m].shape == (3, 6) and new["prototypes"][m].dtype == np.float32
        x = np.asarray(normalize_features(outputs["features"][m]))
        for k in (0, 1):
            np.testing.assert_allclose(new["prototypes"][m][k, :dim], x[labels == k].mean(0), 1e-5)
        assert not np.isnan(new["prototypes"][m]).any()
        np.testing.assert_array_equal(new["prototypes"][m][2], 0.0)  # absent: zeros, invalid
        np.testing.assert_array_equal(new["prototypes"][m][:, dim:], 0.0)
    # A subset without class 1 keeps class 1's previous prototype.
    only0 = {
        "labels": labels[labels == 0],
        "features": {m: f[labels == 0] for m, f in outputs["features"].items()},
    }
    newer = pmr.end_of_epoch(new, FakeContext(1, only0))
    np.testing.assert_array_equal(newer["prototypes"][A][1], new["prototypes"][A][1])
    np.testing.assert_array_equal(newer["valid"], [True, True, False])


def test_end_of_epoch_predicts_only_the_subset():
    # 20 examples, fraction 0.25: 5 examples predicted (not the whole split), and the
    # prototypes are the class means of exactly those 5.
    rng = np.random.default_rng(1)
    labels = np.arange(20) % 2
    outputs = {
        "labels": labels,
        "features": {A: rng.normal(size=(20, 3)), V: rng.normal(size=(20, 2))},
    }
    pmr = PMR(fraction=0.25, normalize=False, max_feature_dim=3, subset_seed=7)
    context = FakeContext(4, outputs)
    new = pmr.end_of_epoch(pmr.init_state([A, V], 2), context)
    (index,) = context.indices
    np.testing.assert_array_equal(index, prototype_subset(20, 0.25, 7, 4))
    assert len(index) == 5 and np.all(np.diff(index) > 0)  # sorted positions of the split
    for k in (0, 1):
        chosen = index[labels[index] == k]
        if len(chosen):
            np.testing.assert_allclose(
                new["prototypes"][A][k], outputs["features"][A][chosen].mean(0), rtol=1e-5
            )


def test_prototype_subset_is_deterministic_and_sized():
    a = prototype_subset(2400, 0.1, 0, 3)
    assert len(a) == 240 and len(set(a)) == 240 and a.max() < 2400
    np.testing.assert_array_equal(a, prototype_subset(2400, 0.1, 0, 3))
    assert not np.array_equal(a, prototype_subset(2400, 0.1, 0, 4))  # each epoch its own
    assert len(prototype_subset(5, 0.1, 0, 0)) == 1


def test_config_fields_and_errors():
    config = ml_collections.ConfigDict(
        {"name": "pmr", "pmr": {"alpha": 1.75, "momentum": 0.5, "fraction": 0.2}}
    )
    method = make_method(config)
    assert (method.alpha, method.momentum, method.fraction) == (1.75, 0.5, 0.2)
    config.pmr.fraction = 0.0
    with pytest.raises(
        ValueError, match=r"config.method.pmr.fraction must be in \(0, 1\], got 0.0"
    ):
        make_method(config)
    config.pmr.fraction = 0.2
    config.pmr.fration = 0.2
    with pytest.raises(ValueError, match=r"unknown field config.method.pmr.fration; allowed"):
        make_method(config)
    config = ml_collections.ConfigDict({"name": "pmr", "pmr": {"normalize": 1}})
    with pytest.raises(ValueError, match=r"config.method.pmr.normalize must be True or False"):
        make_method(config)


# ----------------------------------------------------------------------------- training


def test_three_modalities_through_the_generic_step():
    state, new_state, metrics, outputs = trace_three_modality_step("pmr")
    assert_same_shapes(state, new_state)
    assert {f"loss/prototype_{m}" for m in ("audio", "video", "audio2")} <= set(metrics)
    assert state.method_state["prototypes"]["audio2"].shape == (4, 512)
    assert outputs["features"]["audio2"].shape == (8, 16)


TWO_INPUTS = {"audio": (16, 12), "video": (2, 16, 16, 3)}


def _pmr_forward(reference_eval_mode: bool):
    """BatchNorm statistics before / after the train step's forward pass, and its logits.

    Runs, eagerly and without gradients (no compile), what `train_step`'s loss function does
    with the model: merge, `method.forward(train=True)`, split off the new statistics.
    """
    config = load_tiny(pathlib.Path("unused"))
    config.method.name = "pmr"
    config.method.pmr.reference_eval_mode = reference_eval_mode
    graphdef, method, _, state = create_train_state(config, 4, TWO_INPUTS)
    rng = np.random.default_rng(0)
    inputs = {
        m: jnp.asarray(rng.normal(size=(8, *shape)), jnp.float32) for m, shape in TWO_INPUTS.items()
    }
    model = nnx.merge(graphdef, state.params, jax.tree.map(lambda x: x, state.rest))
    trained = method.forward(model, inputs, train=True, method_state=state.method_state)
    _, _, new_rest = nnx.split(model, nnx.Param, ...)
    evaluated = nnx.merge(graphdef, state.params, state.rest)(inputs, train=False)
    return state.rest, new_rest, trained.logits, evaluated.logits


def _same_leaves(a, b) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    return all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))


def test_reference_eval_mode_trains_with_frozen_running_statistics():
    # M-20: the reference's prototype pass leaves the model in eval mode for the epoch.
    stats, new_stats, trained, evaluated = _pmr_forward(True)
    assert _same_leaves(stats, new_stats)
    np.testing.assert_array_equal(np.asarray(trained), np.asarray(evaluated))
    # Off (the default): BatchNorm normalises with, and updates, the batch statistics.
    stats, new_stats, trained, evaluated = _pmr_forward(False)
    assert not _same_leaves(stats, new_stats)
    assert not np.allclose(np.asarray(trained), np.asarray(evaluated))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_cache):
    workdir = tmp_path_factory.mktemp("pmr_reference")
    return workdir, *run_tiny(tiny_config(data_cache, "pmr"), workdir)


def test_tiny_training_on_eight_devices(reference_run):
    assert jax.device_count() == 8
    _, results, state, history = reference_run
    assert results["method"] == "pmr"
    # Epoch 1 has no prototypes (CE(z) only); epoch 2 adds the weak modality's prototype CE,
    # so the comparable quantity is the fused cross-entropy.
    fused = epoch_means(history, "loss/fused")
    assert fused[1] < fused[0]
    proto = [sum(epoch_means(history, f"loss/prototype_{m}")[e] for m in (A, V)) for e in (0, 1)]
    assert proto[0] == 0.0 and proto[1] > 0.0
    assert np.asarray(state.method_state["valid"]).any()


def test_kill_and_resume_equals_uninterrupted(reference_run, data_cache, tmp_path, monkeypatch):
    ref_dir, ref_results, ref_state, _ = reference_run
    saves = []
    original = RunCheckpoints.save

    def save_then_die(self, step, state, meta):
        original(self, step, state, meta)
        saves.append(step)
        raise KeyboardInterrupt("simulated kill after the first epoch's checkpoint")

    monkeypatch.setattr(RunCheckpoints, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_and_evaluate(tiny_config(data_cache, "pmr"), tmp_path)
    assert saves == [8]
    # The first epoch's prototypes are in the checkpoint.
    config = tiny_config(data_cache, "pmr")
    killed, _ = restore_latest(config, tmp_path)
    assert np.asarray(killed.method_state["valid"]).any()
    monkeypatch.setattr(RunCheckpoints, "save", original)
    resumed = trainer.train_and_evaluate(tiny_config(data_cache, "pmr"), tmp_path)
    assert_same_results_and_final_params(ref_dir, ref_results, tmp_path, resumed, config)
    state, _ = restore_latest(config, tmp_path)
    for a, b in zip(jax.tree.leaves(state.method_state), jax.tree.leaves(ref_state.method_state)):
        np.testing.assert_array_equal(a, b)
