"""MSLR: the multiplier rule, end-of-epoch update, scaling, losses, training and exact resume."""

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
    restore_latest,
    run_tiny,
    tiny_config,
    trace_three_modality_step,
)

from mlb_jax import trainer
from mlb_jax.balancing import balancing_metrics, parameter_paths
from mlb_jax.checkpointing import RunCheckpoints
from mlb_jax.methods import make_method
from mlb_jax.methods.late_linear import SplitOutput, encoder_labels
from mlb_jax.methods.mslr import MSLR, modality_scale_transform, mslr_update
from mlb_jax.models.fusion import LateLinearFusion

INIT_LR = {"audio": 0.5, "video": 2.0}


def as_floats(tree):
    return jax.tree.map(lambda x: float(x) if np.ndim(x) == 0 else list(map(float, x)), tree)


# ----------------------------------------------------------------------------- the rule


def test_multipliers_from_an_accuracy_history():
    # K = 2: r = 1 until two accuracies are stored, then acc / mean(last two stored).
    method = MSLR(init_lr=tuple(INIT_LR.items()), keep_memory=2)
    state = jax.device_get(method.init_state(["audio", "video"], 4))
    expected = [
        # (accuracies of the epoch, multipliers for the next epoch)
        ({"audio": 0.2, "video": 0.1}, {"audio": 0.5, "video": 2.0}),  # nothing stored
        ({"audio": 0.4, "video": 0.3}, {"audio": 0.5, "video": 2.0}),  # one stored
        ({"audio": 0.6, "video": 0.1}, {"audio": 0.5 * 0.6 / 0.3, "video": 2.0 * 0.1 / 0.2}),
        ({"audio": 0.5, "video": 0.4}, {"audio": 0.5 * 0.5 / 0.5, "video": 2.0 * 0.4 / 0.2}),
    ]
    assert as_floats(state["multipliers"]) == INIT_LR  # epoch 0 uses ilr_m
    for accuracies, multipliers in expected:
        state = mslr_update(state, accuracies, keep_memory=2, init_lr=INIT_LR)
        assert as_floats(state["multipliers"]) == pytest.approx(multipliers, rel=1e-6)
        assert as_floats(state["accuracy"]) == pytest.approx(accuracies)
    np.testing.assert_allclose(state["history"]["audio"], [0.6, 0.5], rtol=1e-6)
    np.testing.assert_allclose(state["history"]["video"], [0.1, 0.4], rtol=1e-6)
    assert int(state["stored"]) == 2
    # Shapes and dtypes never change (jit, checkpoint restore).
    initial = method.init_state(["audio", "video"], 4)
    assert jax.tree.map(lambda x: (np.shape(x), np.asarray(x).dtype), state) == jax.tree.map(
        lambda x: (x.shape, x.dtype), initial
    )


def test_zero_mean_history_gives_ratio_one():
    state = {
        "history": {"audio": np.zeros(2, np.float32)},
        "stored": np.int32(2),
        "multipliers": {"audio": np.float32(1)},
        "accuracy": {"audio": np.float32(0)},
    }
    new = mslr_update(state, {"audio": 0.5}, keep_memory=2, init_lr={"audio": 0.7})
    assert float(new["multipliers"]["audio"]) == pytest.approx(0.7)


def test_three_modalities_and_init_lr_checks():
    method = MSLR(init_lr=(("audio", 0.7),), keep_memory=1)
    state = method.init_state(["audio", "video", "flow"], 4)
    assert as_floats(state["multipliers"]) == pytest.approx({"audio": 0.7, "video": 1, "flow": 1})
    new = mslr_update(
        jax.device_get(state),
        {"audio": 0.5, "video": 0.2, "flow": 0.4},
        keep_memory=1,
        init_lr={"audio": 0.7, "video": 1.0, "flow": 1.0},
    )
    newer = mslr_update(
        new,
        {"audio": 0.25, "video": 0.4, "flow": 0.4},
        keep_memory=1,
        init_lr={"audio": 0.7, "video": 1.0, "flow": 1.0},
    )
    assert as_floats(newer["multipliers"]) == pytest.approx({"audio": 0.35, "video": 2, "flow": 1})
    with pytest.raises(ValueError, match=r"unknown modalities \['sound'\]"):
        MSLR(init_lr=(("sound", 1.0),)).init_state(["audio", "video"], 4)


# ----------------------------------------------------------------------------- end of epoch


def hand_fusion():
    """Late-linear fusion, K = 2: W_audio = I, W_video = swap, bias (0, 1.2) -> b/2 = (0, 0.6)."""
    fusion = LateLinearFusion({"audio": 2, "video": 2}, 2, rngs=nnx.Rngs(0))
    fusion.linear["audio"].kernel[...] = jnp.eye(2)
    fusion.linear["video"].kernel[...] = jnp.array([[0.0, 1.0], [1.0, 0.0]])
    fusion.bias[...] = jnp.array([0.0, 1.2])
    return fusion


class FakeContext:
    """An epoch context with hand-made validation predictions and model."""

    epoch = 3

    def __init__(self):
        self.splits = []

    def predict(self, split):
        self.splits.append(split)
        return {
            "labels": np.array([0, 1, 1, 1]),
            "features": {
                "audio": np.array([[1.0, 0], [0, 1], [1, 0], [0, 1]], np.float32),
                "video": np.array([[1.0, 0], [1, 0], [0, 1], [1, 0]], np.float32),
            },
        }

    def model(self):
        return types.SimpleNamespace(fusion=hand_fusion())


def test_end_of_epoch_uses_fusion_split_validation_accuracy():
    # u_audio = x_a + (0, .6): predictions 0,1,0,1 -> 3/4 correct (with the full bias (0, 1.2)
    # the first sample would flip to 1: the b/M split matters).
    # u_video = swap(x_v) + (0, .6): predictions 1,1,0,1 -> 2/4 correct.
    method = MSLR(init_lr=tuple(INIT_LR.items()), keep_memory=1, split="val")
    state = jax.device_get(method.init_state(["audio", "video"], 2))
    state = mslr_update(state, {"audio": 0.5, "video": 0.25}, keep_memory=1, init_lr=INIT_LR)
    context = FakeContext()
    new = method.end_of_epoch(state, context)
    assert context.splits == ["val"]
    assert as_floats(new["accuracy"]) == pytest.approx({"audio": 0.75, "video": 0.5})
    # r_audio = 0.75 / 0.5, r_video = 0.5 / 0.25.
    assert as_floats(new["multipliers"]) == pytest.approx({"audio": 0.5 * 1.5, "video": 2.0 * 2})


# ----------------------------------------------------------------------------- scaling, losses


def test_scale_transform_multiplies_encoder_and_head_only():
    params = {
        "encoders": {m: {"conv": {"kernel": jnp.ones((3, 3, 1, 2))}} for m in ("audio", "video")},
        "heads": {m: {"kernel": jnp.ones((2, 3))} for m in ("audio", "video")},
        "fusion": {"linear": {"audio": {"kernel": jnp.ones((2, 3))}}, "bias": jnp.ones(3)},
    }
    tx = modality_scale_transform(
        encoder_labels(params, ["audio", "video"], scope="encoder"), modalities=["audio", "video"]
    )
    grads = jax.tree.map(lambda x: 2.0 * x, params)
    updates, state = tx.update(
        grads,
        tx.init(params),
        params,
        modality_multipliers={"audio": 0.7, "video": 1.3},
        modality_scores={"audio": 0.4, "video": 0.6},
    )
    for path, u in zip(parameter_paths(updates), jax.tree.leaves(updates)):
        kind, owner = path.split("/")[:2]
        expected = 2.0 * {"audio": 0.7, "video": 1.3}[owner] if kind != "fusion" else 2.0
        np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-6, err_msg=path)
    metrics = balancing_metrics(state)
    assert float(metrics["k/video"]) == pytest.approx(1.3)
    assert float(metrics["score/audio"]) == pytest.approx(0.4)


def test_unimodal_losses_are_kept_when_configured():
    labels = jnp.array([0, 1])
    zeros, eye = jnp.zeros((2, 2)), 5.0 * jnp.eye(2)
    outputs = SplitOutput(
        logits=zeros,
        unimodal_logits={"audio": eye, "video": eye},
        features={},
        split_logits={"audio": -eye, "video": zeros},
    )
    ln2 = float(np.log(2.0))
    assert MSLR().losses(outputs, labels, {}).keys() == {"fused"}  # reference default
    split = MSLR(unimodal_weight=0.5)
    losses = split.losses(outputs, labels, {})
    wrong = float(np.log1p(np.exp(5.0)))  # CE with true-class logit -5 and the other 0
    assert float(losses["video"]) == pytest.approx(ln2, rel=1e-6)
    assert float(losses["audio"]) == pytest.approx(wrong, rel=1e-5)
    assert float(split.combine(losses)) == pytest.approx(ln2 + 0.5 * (wrong + ln2), rel=1e-5)
    heads = MSLR(unimodal_weight=1.0, unimodal_logits="heads").losses(outputs, labels, {})
    assert float(heads["audio"]) == pytest.approx(float(np.log1p(np.exp(-5.0))), rel=1e-4)


def test_config_fields_and_errors():
    config = ml_collections.ConfigDict({"name": "mslr", "placement": "updates"})
    config.mslr = ml_collections.ConfigDict({"init_lr": {"audio": 0.5}, "keep_memory": 3})
    method = make_method(config)
    assert (method.init_lr, method.keep_memory, method.placement) == (
        (("audio", 0.5),),
        3,
        "updates",
    )
    config.mslr = ml_collections.ConfigDict({"keep_memory": 0})
    with pytest.raises(ValueError, match=r"config.method.mslr.keep_memory must be >= 1, got 0"):
        make_method(config)
    config.mslr = ml_collections.ConfigDict({"keep_memroy": 1})
    with pytest.raises(ValueError, match=r"unknown field config.method.mslr.keep_memroy; allowed"):
        make_method(config)
    config.mslr = ml_collections.ConfigDict({"unimodal_logits": "heads"})
    with pytest.raises(ValueError, match=r"unimodal_logits='heads' has no effect with method"):
        make_method(config)  # unimodal_weight 0: there is no unimodal loss to put on the heads
    # The top-level unimodal_weight is multi-loss / MLB's; MSLR's own is in its block.
    config = ml_collections.ConfigDict({"name": "mslr", "unimodal_weight": 0.5})
    with pytest.raises(ValueError, match=r"config.method.mslr.unimodal_weight"):
        make_method(config)


def test_three_modalities_through_the_generic_step():
    state, new_state, metrics, _ = trace_three_modality_step("mslr")
    assert_same_shapes(state, new_state)
    assert {"k/audio", "k/video", "k/audio2"} <= set(metrics)
    # audio2 is not in the demo's init_lr: multiplier 1.
    assert float(state.method_state["multipliers"]["audio2"]) == 1.0


# ----------------------------------------------------------------------------- training, resume


def mslr_config(data_cache):
    config = tiny_config(data_cache, "mslr")
    config.method.mslr.keep_memory = 1  # the second end_of_epoch already uses the history
    return config


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_cache):
    return run_tiny(mslr_config(data_cache), tmp_path_factory.mktemp("mslr"))


def test_training_run_loss_decreases(reference_run):
    results, state, history = reference_run
    assert results["method"] == "mslr" and results["steps"] == 16
    losses = epoch_means(history, "loss")
    assert losses[1] < losses[0]
    # Epochs 1 and 2 trained with the static multipliers 0.7 / 1.3 (r = 1 while K = 1 value
    # is not yet stored), and they were logged every logged step.
    ks = [(s["train/k/audio"], s["train/k/video"]) for s in history["steps"]]
    assert all(k == pytest.approx((0.7, 1.3)) for k in ks)
    # After two epochs: one accuracy stored, multipliers from the ratio of the two epochs.
    ms = jax.device_get(state.method_state)
    assert int(ms["stored"]) == 1
    assert float(ms["history"]["audio"][-1]) == float(ms["accuracy"]["audio"])
    # The ratio moved away from 1, so the resume test below would see a lost history.
    assert as_floats(ms["multipliers"]) != pytest.approx({"audio": 0.7, "video": 1.3})


def test_kill_and_resume_equals_uninterrupted(reference_run, data_cache, tmp_path, monkeypatch):
    ref_results, ref_state, _ = reference_run
    saves = []
    original = RunCheckpoints.save

    def save_then_die(self, step, state, meta):
        original(self, step, state, meta)
        saves.append(step)
        raise KeyboardInterrupt("simulated kill after the first epoch's checkpoint")

    monkeypatch.setattr(RunCheckpoints, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_and_evaluate(mslr_config(data_cache), tmp_path)
    assert saves == [8] and not (tmp_path / "results.json").exists()
    monkeypatch.setattr(RunCheckpoints, "save", original)
    resumed = trainer.train_and_evaluate(mslr_config(data_cache), tmp_path)
    for key in ("accuracy", "unimodal_accuracy", "probe_accuracy", "ece", "steps"):
        assert resumed[key] == ref_results[key], key
    state, _ = restore_latest(mslr_config(data_cache), tmp_path)
    # The restored history drives the second end_of_epoch: same multipliers as uninterrupted.
    assert as_floats(jax.device_get(state.method_state)) == as_floats(
        jax.device_get(ref_state.method_state)
    )
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
