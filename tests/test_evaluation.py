"""Evaluation: Shapley values, imbalance, agreement counts, and the batched device passes.

The device passes run on a toy 3-modality model (tiny audio encoders, no training): every
subset at once must equal evaluating each masked input separately, the Shapley values from
them must equal a brute-force computation over orderings, and the noise pass must equal
noising the input by hand. End-to-end checks on a trained run live in test_train.py (they
reuse its reference run).
"""

import itertools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from test_train import load_tiny

from mlb_jax import attribution, evaluate
from mlb_jax.evaluation_passes import absent_inputs, make_noise_step, make_subset_logits
from mlb_jax.methods import METHODS, make_method
from mlb_jax.metrics import accuracy
from mlb_jax.models import build_model
from mlb_jax.steps import TrainState

NAMES = ["a", "b", "c"]
MODALITIES = {
    "a": {"kind": "audio", "in_channels": 1},
    "b": {"kind": "audio", "in_channels": 2},
    "c": {"kind": "audio", "in_channels": 1},
}
SHAPES = {"a": (16, 12), "b": (16, 12, 2), "c": (16, 12)}
K = 5


def RNGS(seed):  # noqa: N802 - a constructor
    """'rbg' initialisation keys: eager ResNet initialisation ~3x faster on CPU (as steps.py)."""
    return nnx.Rngs(params=jax.random.key(seed, impl="rbg"), dropout=seed + 1)


def brute_force_shapley(value, names):
    """phi_i = mean over all orderings of v(predecessors + i) - v(predecessors)."""
    phi = dict.fromkeys(names, 0.0)
    orders = list(itertools.permutations(names))
    for order in orders:
        before = frozenset()
        for name in order:
            phi[name] += (value[before | {name}] - value[before]) / len(orders)
            before = before | {name}
    return np.array([phi[n] for n in names])


def test_shapley_equals_brute_force_and_is_efficient():
    rng = np.random.default_rng(0)
    values = rng.uniform(size=8)  # v(s) for every bitmask s of three modalities
    by_set = {frozenset(n for i, n in enumerate(NAMES) if s >> i & 1): values[s] for s in range(8)}
    phi = attribution.shapley_values(values)
    np.testing.assert_allclose(phi, brute_force_shapley(by_set, NAMES), atol=1e-12)
    assert phi.sum() == pytest.approx(values[7] - values[0])


def test_shapley_of_an_additive_game_by_hand():
    # v = 0.1 + 0.4 [a] + 0.2 [b]; c adds nothing: phi = (0.4, 0.2, 0).
    values = [0.1 + 0.4 * (s & 1) + 0.2 * (s >> 1 & 1) for s in range(8)]
    np.testing.assert_allclose(attribution.shapley_values(values), [0.4, 0.2, 0.0], atol=1e-12)
    # Two modalities, interaction: v(none) 0, v(a) 0.5, v(b) 0.1, v(ab) 0.8.
    # phi_a = 1/2 (0.5 - 0) + 1/2 (0.8 - 0.1) = 0.6; phi_b = 1/2 (0.1) + 1/2 (0.3) = 0.2.
    np.testing.assert_allclose(attribution.shapley_values([0, 0.5, 0.1, 0.8]), [0.6, 0.2])


def test_imbalance_index_by_hand():
    assert attribution.imbalance_index([0.3, 0.1]) == pytest.approx(0.5)  # shares 3/4, 1/4
    assert attribution.imbalance_index([0.2, -0.1]) == pytest.approx(1.0)  # only the first
    assert attribution.imbalance_index([0.1, 0.1, 0.1]) == pytest.approx(0.0)
    assert attribution.imbalance_index([0.3, 0.0, 0.0]) == pytest.approx(1.0)
    # Shares (1/2, 1/2, 0): 3/4 * (1/6 + 1/6 + 1/3) = 1/2.
    assert attribution.imbalance_index([0.2, 0.2, 0.0]) == pytest.approx(0.5)
    assert attribution.imbalance_index([0.0, -0.1]) is None


def test_subset_masks_and_names():
    masks = attribution.subset_masks(2)
    np.testing.assert_array_equal(masks, [[0, 0], [1, 0], [0, 1], [1, 1]])
    names = ["audio", "video"]
    assert [attribution.subset_name(s, names) for s in range(4)] == [
        "none",
        "audio",
        "video",
        "audio+video",
    ]
    assert [attribution.pattern_name(p, names) for p in range(4)] == [
        "both wrong",
        "only audio right",
        "only video right",
        "both right",
    ]


def test_agreement_counts_on_a_constructed_example():
    # (audio right, video right) per example, and whether the fused model is right.
    reference = np.array([[0, 0], [1, 0], [1, 0], [0, 1], [1, 1], [1, 1]], bool)
    fused = np.array([1, 1, 0, 0, 1, 1], bool)
    table = attribution.agreement(reference, fused)
    assert table["count"].tolist() == [1, 2, 1, 2]  # none, only audio, only video, both
    assert table["fused_correct"].tolist() == [1, 1, 0, 2]
    np.testing.assert_allclose(table["fused_accuracy"], [1.0, 0.5, 0.0, 1.0])
    # M = 3: eight patterns; an empty one has no accuracy.
    table = attribution.agreement(np.array([[1, 0, 1], [1, 0, 1]], bool), np.array([1, 0], bool))
    assert table["count"].tolist() == [0, 0, 0, 0, 0, 2, 0, 0]
    assert table["fused_accuracy"][5] == 0.5 and np.isnan(table["fused_accuracy"][0])
    # Through the evaluation's summary: patterns named, reference accuracies, logits in.
    eye = np.eye(2)
    summary = evaluate.agreement_summary(
        {"audio": eye[[0, 1]], "video": eye[[1, 1]]},
        eye[[0, 0]],
        np.array([0, 1]),
        ["audio", "video"],
    )
    assert [(p["pattern"], p["count"]) for p in summary["patterns"]] == [
        ("both wrong", 0),
        ("only audio right", 1),
        ("only video right", 0),
        ("both right", 1),
    ]
    assert summary["reference_accuracy"] == {"audio": 1.0, "video": 0.5}
    assert summary["patterns"][0]["fused_accuracy"] is None


@pytest.fixture(scope="module")
def toy():
    """An untrained 3-modality model (transformer fusion: modalities interact), inputs, labels."""
    model = build_model(
        {"modalities": MODALITIES, "base_width": 2, "conv": "xla", "fusion": "transformer"},
        K,
        rngs=RNGS(0),
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = TrainState(jnp.zeros([], jnp.int32), params, rest, {}, {})
    rng = np.random.default_rng(1)
    inputs = {m: rng.normal(size=(12, *s)).astype(np.float32) for m, s in SHAPES.items()}
    labels = rng.integers(0, K, size=12)

    @jax.jit
    def logits_of(state, inputs):  # the plain model on whole (masked) inputs
        return nnx.merge(graphdef, state.params, state.rest)(inputs, train=False).logits

    @jax.jit
    def features_of(state, inputs):
        return nnx.merge(graphdef, state.params, state.rest)(inputs, train=False).features

    return graphdef, state, inputs, labels, logits_of, features_of


@pytest.mark.parametrize("absent", ["zeros", "mean"])
def test_all_subsets_in_one_pass_equal_each_masked_input(toy, absent):
    graphdef, state, inputs, labels, logits_of, features_of = toy
    method = make_method(ml_collections.ConfigDict({"name": "joint"}))
    rng = np.random.default_rng(2)
    stats = {m: {"mean": rng.normal(size=s).astype(np.float32)} for m, s in SHAPES.items()}
    absent_in = absent_inputs(absent, SHAPES, stats)
    masks = attribution.subset_masks(3)
    batched = np.asarray(
        make_subset_logits(graphdef, method, NAMES)(
            state, features_of(state, inputs), absent_in, masks
        )
    )
    assert batched.shape == (8, 12, K)
    values = {}
    for s, mask in enumerate(masks):
        masked = {
            m: inputs[m] if mask[i] else np.broadcast_to(absent_in[m], inputs[m].shape)
            for i, m in enumerate(NAMES)
        }
        separate = np.asarray(logits_of(state, masked))
        np.testing.assert_allclose(batched[s], separate, rtol=1e-5, atol=1e-5)
        values[frozenset(n for i, n in enumerate(NAMES) if mask[i])] = accuracy(separate, labels)
    # Shapley values of the toy model: from the one pass = brute force over separate passes.
    summary = evaluate.subset_summary(batched, labels, NAMES)
    np.testing.assert_allclose(
        [summary["shapley"][m] for m in NAMES], brute_force_shapley(values, NAMES), atol=1e-12
    )
    assert summary["accuracy"]["a+b+c"] == values[frozenset(NAMES)]


def test_noise_pass_equals_noising_each_modality_by_hand(toy):
    graphdef, state, inputs, labels, logits_of, _ = toy
    method = make_method(ml_collections.ConfigDict({"name": "joint"}))
    stds = {"a": 1.0, "b": 0.5, "c": 2.0}
    levels = (0.0, 0.7)
    index = np.arange(12, dtype=np.int32) * 3 + 5  # noise is keyed by the example's index
    batch = {"inputs": inputs, "index": index, "label": labels}
    out = make_noise_step(graphdef, method, NAMES, levels, stds, seed=4)(state, batch)
    preds = np.asarray(out["noise_predictions"])
    assert preds.shape == (12, 3, 2)
    clean = np.asarray(logits_of(state, inputs)).argmax(-1)
    for i, m in enumerate(NAMES):
        np.testing.assert_array_equal(preds[:, i, 0], clean)  # sigma 0: the clean model
        key = jax.random.fold_in(jax.random.key(4), i)
        eps = np.stack([jax.random.normal(jax.random.fold_in(key, j), SHAPES[m]) for j in index])
        noisy = {**inputs, m: inputs[m] + 0.7 * stds[m] * eps}
        np.testing.assert_array_equal(
            preds[:, i, 1], np.asarray(logits_of(state, noisy)).argmax(-1)
        )


def test_every_trained_method_fuses_features_as_its_forward_does():
    """`Method.fuse` of every method reproduces the logits of its own eval-mode forward."""
    modalities = {"a": MODALITIES["a"], "c": MODALITIES["c"]}
    model = build_model({"modalities": modalities, "base_width": 2, "conv": "xla"}, K, rngs=RNGS(3))
    rng = np.random.default_rng(3)
    inputs = {m: rng.normal(size=(4, *SHAPES[m])).astype(np.float32) for m in modalities}
    features = {m: model.encoders[m](inputs[m], train=False) for m in modalities}
    base = load_tiny(None).method
    checked = []
    for name in METHODS:
        config = ml_collections.ConfigDict(base.to_dict())
        config.name = name
        config.modality = "a" if name == "unimodal" else ""
        config.pretrained.workdirs = {"a": "unused", "c": "unused"}
        config.ensemble.workdirs = {"a": "unused", "c": "unused"}
        config.mslr.init_lr = {}  # the demo's are keyed by audio / video
        method = make_method(config)
        if not method.trains:
            continue
        state = jax.tree.map(jnp.asarray, method.init_state(list(modalities), K))
        forward = method.forward(model, inputs, train=False, method_state=state)
        fused = method.fuse(model, features, method_state=state)
        np.testing.assert_allclose(fused, forward.logits, rtol=1e-5, atol=1e-6, err_msg=name)
        checked.append(name)
    assert {"joint", "mlb", "agm", "mmcosine", "reconboost", "pmr"} <= set(checked)


def test_settings_reject_bad_fields_naming_them():
    config = load_tiny(None)
    assert evaluate.EvalSettings.from_config(config).noise_levels == (0.5, 1.0, 2.0)
    for field, value, message in [
        ("absent", "noise", "config.evaluate.absent must be one of"),
        ("noise_levels", (0.5, -1.0), "config.evaluate.noise_levels must be positive"),
        ("calibration_bins", 0, "config.evaluate.calibration_bins must be an integer >= 1"),
    ]:
        bad = load_tiny(None)
        bad.evaluate[field] = value
        with pytest.raises(ValueError, match=message):
            evaluate.EvalSettings.from_config(bad)
    bad = load_tiny(None)
    bad.evaluate.unimodal_workdirs = {"audio": "runs/u_audio", "video": ""}
    with pytest.raises(ValueError, match="but not for \\['video'\\]"):
        evaluate.EvalSettings.from_config(bad).reference_workdirs(["audio", "video"])
    # A config written before the block existed evaluates with the defaults.
    del config["evaluate"]
    assert evaluate.EvalSettings.from_config(config) == evaluate.EvalSettings()


def test_report_formats_a_hand_made_evaluation():
    head = evaluate.head_metrics(np.log(np.array([[0.7, 0.3], [0.4, 0.6]])), np.array([0, 0]))
    assert head["accuracy"] == 0.5 and head["confusion"] == [[1, 1], [0, 0]]
    assert "top5_accuracy" not in head  # K = 2
    result = {
        "method": "mlb",
        "seed": 0,
        "split": "test",
        "num_examples": 2,
        "num_classes": 2,
        "checkpoint": "best",
        "modalities": ["audio", "video"],
        "heads": {"fused": head},
        "subsets": {
            "absent": "zeros",
            "accuracy": {"none": 0.5, "audio": 0.5, "video": 0.5, "audio+video": 0.5},
            "shapley": {"audio": 0.0, "video": 0.0},
            "imbalance_index": None,
        },
    }
    text = evaluate.markdown_report(result)
    # ECE: confidence 0.7 right (gap 0.3), 0.6 wrong (gap 0.6), separate bins: 0.45.
    assert "| fused | 50.0 | 33.3 | 0.000 | 0.450 |" in text
    assert "| audio+video | 50.0 |" in text
    assert "imbalance index — " in text
    assert not math.isnan(head["ece"])
