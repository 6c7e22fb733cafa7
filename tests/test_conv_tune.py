"""Tests of the measured convolution plan (mlb_jax.models.conv_tune): every algorithm it can
choose equals XLA's convolution, the choice rule, the per-machine cache and its failures."""

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from mlb_jax import trainer
from mlb_jax.models import conv, conv_tune
from mlb_jax.models.resnet import AudioEncoder

NHWC = ("NHWC", "HWIO", "NHWC")
X, P, S, W = conv.XLA, conv.PATCHES, conv.SHIFTED, conv.WINOGRAD
# (x shape, kernel shape, stride, padding): Winograd-shaped, strided 3x3, 1x1 strided, stem.
LAYERS = [
    ((2, 9, 7, 4), (3, 3, 4, 6), 1, 1),
    ((2, 9, 8, 3), (3, 3, 3, 5), 2, 1),
    ((2, 8, 6, 4), (1, 1, 4, 6), 2, 0),
    ((2, 13, 11, 3), (7, 7, 3, 4), 2, 3),
]


def _normal(seed: int, shape, scale: float = 1.0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, jnp.float32)


def _args(layer):
    x_shape, kernel_shape, stride, pad = layer
    return x_shape, kernel_shape, (stride, stride), ((pad, pad), (pad, pad))


def test_candidates_by_layer_kind():
    assert conv.candidates(*_args(LAYERS[0])) == conv.Plan((X, P, W), (X, P, W), (X, P, S, W))
    assert conv.candidates(*_args(LAYERS[1])) == conv.Plan((X, P), (X, P), (X, P))
    assert conv.candidates(*_args(LAYERS[2])) == conv.Plan((X, P), (X, P), (X, P))
    # 1x1 at stride 1: the shifted-rows kernel gradient, no Winograd.
    one = ((2, 5, 5, 4), (1, 1, 4, 6), (1, 1), ((0, 0), (0, 0)))
    assert conv.candidates(*one) == conv.Plan((X, P), (X, P), (X, P, S))


@pytest.mark.parametrize("layer", LAYERS)
def test_every_candidate_equals_xla_in_its_pass(layer):
    x_shape, kernel_shape, strides, padding = _args(layer)
    x, kernel = _normal(0, x_shape), _normal(1, kernel_shape, 0.1)

    def reference(x_, k_):
        return lax.conv_general_dilated(x_, k_, strides, padding, dimension_numbers=NHWC)

    y, vjp = jax.vjp(reference, x, kernel)
    dy = _normal(2, y.shape)
    want = {"forward": y, **dict(zip(("input_grad", "kernel_grad"), vjp(dy), strict=True))}
    choices = conv.candidates(x_shape, kernel_shape, strides, padding)
    for name, function in (
        ("forward", lambda a: conv.forward(a, x, kernel, strides, padding)),
        ("input_grad", lambda a: conv.input_grad(a, x, kernel, dy, strides, padding)),
        ("kernel_grad", lambda a: conv.kernel_grad(a, x, kernel, dy, strides, padding)),
    ):
        for algorithm in getattr(choices, name):
            got = jax.jit(function, static_argnums=0)(algorithm)
            scale = float(jnp.max(jnp.abs(want[name])))
            np.testing.assert_allclose(got, want[name], rtol=0, atol=2e-5 * scale)


@pytest.mark.parametrize("chosen", [conv.Plan(W, P, S), conv.Plan(P, W, W), conv.Plan(X, P, P)])
def test_mixed_plans_give_xla_values_and_both_gradients(chosen):
    # Any per-pass combination the tuner may return runs through the custom gradient.
    strides, padding = (1, 1), ((1, 1), (1, 1))
    x, kernel = _normal(3, (2, 9, 7, 4)), _normal(4, (3, 3, 4, 6), 0.1)
    weights = _normal(5, (2, 9, 7, 6))

    def loss(planner):
        def f(x_, k_):
            y = conv.apply_planner(planner, x_, k_, strides, padding, dimension_numbers=NHWC)
            return jnp.sum(jnp.tanh(y) * weights)

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, kernel)

    got = loss(lambda *_: chosen)
    want = loss(lambda *_: conv.ALL_XLA)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _entry(ms: float, scratch: int = 0) -> dict:
    return {"ms": ms, "scratch_bytes": scratch}


def _measured(forward: dict, input_grad: dict | None = None, kernel_grad: dict | None = None):
    xla_only = {X: _entry(10.0)}
    return {
        "forward": forward,
        "input_grad": input_grad or xla_only,
        "kernel_grad": kernel_grad or xla_only,
    }


def test_choose_keeps_xla_within_the_noise_margin():
    # 4 % faster is within the 5 % margin: XLA kept; 10 % faster wins.
    near = _measured({X: _entry(10.0), P: _entry(9.6)})
    assert conv_tune.choose(near, 100) == conv.ALL_XLA
    far = _measured(
        {X: _entry(10.0), P: _entry(9.0), W: _entry(9.4)},
        kernel_grad={X: _entry(10.0), S: _entry(3.0), P: _entry(2.0)},
    )
    assert conv_tune.choose(far, 100) == conv.Plan(P, X, P)
    assert conv_tune.choose(far, 100, margin=0.0) == conv.Plan(P, X, P)
    assert conv_tune.choose(near, 100, margin=0.0) == conv.Plan(P, X, X)


def test_choose_respects_the_scratch_bound():
    # Input of 100 bytes; XLA's own scratch 50. Patches needs 950 (extra 900 = 9x the input),
    # shifted rows 250 (extra 2x), Winograd 300 (extra 2.5x).
    measured = _measured(
        {X: _entry(10.0, 50), W: _entry(2.0, 300)},
        kernel_grad={X: _entry(10.0, 50), P: _entry(1.0, 950), S: _entry(3.0, 250)},
    )
    assert conv_tune.choose(measured, 100) == conv.Plan(W, X, P)  # inf: speed alone
    assert conv_tune.choose(measured, 100, max_scratch=9) == conv.Plan(W, X, P)
    assert conv_tune.choose(measured, 100, max_scratch=8.99) == conv.Plan(W, X, S)
    assert conv_tune.choose(measured, 100, max_scratch=2) == conv.Plan(X, X, S)
    assert conv_tune.choose(measured, 100, max_scratch=0) == conv.ALL_XLA


def _no_measuring(*args, **kwargs):
    raise AssertionError("measured although the cache holds the layer")


def test_tuner_measures_once_then_reads_the_cache(tmp_path, monkeypatch):
    args = _args(LAYERS[0])
    lines = []
    first = conv_tune.Tuner(cache_dir=tmp_path, reps=1, log=lines.append)
    chosen = first(*args)
    name = conv_tune.layer_name(*args)
    assert name == "x2x9x7x4 k3x3x4x6 s1x1 p1,1,1,1"
    assert len(lines) == 1 and lines[0].startswith(f"convolution {name}: measured in ")
    (path,) = tmp_path.glob("*.json")
    assert path == first.path and not list(tmp_path.glob("*.tmp"))  # renamed into place
    data = json.loads(path.read_text())
    assert data["key"] == conv_tune.machine_key() and data["format"] == conv_tune.FORMAT
    measured = data["layers"][name]
    assert set(measured["kernel_grad"]) == {X, P, S, W}
    assert all(v["ms"] > 0 for p in conv_tune.PASSES for v in measured[p].values())
    assert chosen == conv_tune.choose(measured, 4 * math.prod(args[0]))
    assert first.decisions() == [{"layer": name, **chosen._asdict()}]

    # Another process (a new tuner) reads the cache: the same plan, nothing measured; and the
    # choice follows the cache, not a new measurement.
    monkeypatch.setattr(conv_tune, "measure", _no_measuring)
    assert conv_tune.Tuner(cache_dir=tmp_path)(*args) == chosen
    forced = _measured({X: _entry(10.0), P: _entry(1.0)}, kernel_grad={X: _entry(1.0)})
    data["layers"][name] = forced
    path.write_text(json.dumps(data))
    assert conv_tune.Tuner(cache_dir=tmp_path)(*args) == conv.Plan(P, X, X)
    # Not float32: XLA's convolution, nothing looked up.
    assert conv_tune.Tuner(cache_dir=tmp_path)(*args, jnp.bfloat16) == conv.ALL_XLA


def _bad_caches(key: dict, name: str) -> dict[str, str]:
    good = {X: _entry(1.0)}
    layer = {p: good for p in conv_tune.PASSES}
    return {
        "not JSON": "{ half a file",
        "another machine": json.dumps(
            {"format": 1, "key": {**key, "cpu": "Intel Xeon"}, "layers": {name: layer}}
        ),
        # Timings of the algorithms' previous code (the key names their revision).
        "older algorithms": json.dumps(
            {
                "format": 1,
                "key": {**key, "algorithms": conv.ALGORITHMS_REVISION - 1},
                "layers": {name: layer},
            }
        ),
        "another format": json.dumps({"format": 0, "key": key, "layers": {name: layer}}),
        "entry without times": json.dumps(
            {"format": 1, "key": key, "layers": {name: {**layer, "forward": {X: {}}}}}
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["not JSON", "another machine", "older algorithms", "another format", "entry without times"],
)
def test_corrupt_or_foreign_cache_is_ignored_with_a_warning(tmp_path, case):
    args = _args(LAYERS[2])
    tuner = conv_tune.Tuner(cache_dir=tmp_path, reps=1)
    name = conv_tune.layer_name(*args)
    tuner.path.parent.mkdir(parents=True, exist_ok=True)
    tuner.path.write_text(_bad_caches(conv_tune.machine_key(), name)[case])
    message = re.escape(f"convolution plan cache {tuner.path} ignored (")
    with pytest.warns(UserWarning) as caught:
        chosen = tuner(*args)
    assert len(caught) == 1  # once, although the file is read again before the rewrite
    assert re.match(message + r".*measured again and the file is rewritten", str(caught[0].message))
    # Measured here and the file rewritten whole, for this machine.
    data = json.loads(tuner.path.read_text())
    assert data["key"] == conv_tune.machine_key() and list(data["layers"]) == [name]
    assert conv_tune.choose(data["layers"][name], 4 * math.prod(args[0])) == chosen


@pytest.fixture
def fresh_tuners(tmp_path, monkeypatch):
    """The process's tuners emptied and their cache in a temporary XDG_CACHE_HOME."""
    monkeypatch.delenv(conv_tune.CACHE_ENV)  # conftest's
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # One timed call per candidate: this test is about wiring, not about the choice.
    monkeypatch.setattr(conv_tune, "_TUNERS", {math.inf: conv_tune.Tuner(reps=1, budget_s=0.0)})
    monkeypatch.setattr(conv_tune, "_FUNCTIONS", {})
    return tmp_path / "mlb_jax" / "conv_plans"


def test_tuned_encoder_equals_xla_and_records_its_layers(fresh_tuners):
    encoders = {}
    for choice in ("xla", "tuned"):
        encoder = AudioEncoder(base_width=2, conv=choice, rngs=nnx.Rngs(0))
        assert encoder.resnet.conv_algorithm == choice
        encoders[choice] = nnx.split(encoder, nnx.Param, ...)
    layer = nnx.merge(*encoders["tuned"]).resnet.stages[1][0].conv1.conv
    assert layer.conv_general_dilated is conv.conv_function("tuned") is conv_tune.conv_function()

    def loss(graphdef, params, rest, x):
        # Running statistics: batch statistics over 1x1 maps of 2 examples would amplify
        # float32 rounding differences far beyond the convolutions' own.
        return jnp.sum(nnx.merge(graphdef, params, rest)(x, train=False) ** 2)

    grad = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
    spec = _normal(2, (2, 20, 16))
    got, want = grad(*encoders["tuned"], spec), grad(*encoders["xla"], spec)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)

    # Every distinct convolution of the encoder was measured and planned, and is recorded.
    decisions = conv_tune.decisions()
    assert len(decisions) == len({d["layer"] for d in decisions}) >= 8
    assert {d["max_scratch"] for d in decisions} == {None}
    assert "x2x20x16x1 k7x7x1x2 s2x2 p3,3,3,3" in {d["layer"] for d in decisions}
    (path,) = fresh_tuners.glob("*.json")
    assert set(json.loads(path.read_text())["layers"]) == {d["layer"] for d in decisions}
    config = trainer.ml_collections.ConfigDict({"model": {"conv": "tuned"}, "data": {}})
    assert trainer.recorded_choices(config)["conv_plan"] == decisions
    config.model.conv = "xla"
    assert trainer.recorded_choices(config)["conv_plan"] == []


def test_negative_scratch_bound_names_the_config_field():
    message = "config.model.conv_max_scratch=-1.0 must be >= 0"
    with pytest.raises(ValueError, match=re.escape(message)):
        AudioEncoder(base_width=1, conv="tuned", conv_max_scratch=-1.0, rngs=nnx.Rngs(0))
