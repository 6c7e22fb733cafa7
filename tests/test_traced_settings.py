"""Float settings as traced step inputs: one vmapped step equals each member's own step.

`mlb_jax.sweep` vmaps members that differ in the learning rate, the weight decay and the
method's `traced_fields`: the first member's step receives every member's values
(`update_scale`, `update_args`, `settings`). Here, per method, two members with the same
initialisation and batches but their own values train two steps as one vmapped program; the
second must equal its own jitted step built from its own config, and each of its values must
change the result on its own (a setting that never reached the step would not).
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import load_tiny

from mlb_jax import recipes, sweep
from mlb_jax.batch_format import length_key
from mlb_jax.methods import BUILT_ON_UNIMODAL, METHODS, make_method
from mlb_jax.steps import create_train_state, make_train_step

# Small sequence modalities: temporal convolutions compile in about a second.
MODALITIES = {
    "imu": {"kind": "tcn", "in_features": 3, "width": 4, "depth": 1, "dropout": 0.0},
    "mfcc": {"kind": "tcn", "in_features": 2, "width": 4, "depth": 1, "dropout": 0.0},
}
SHAPES = {"imu": (6, 3), "mfcc": (5, 2)}
B, K = 8, 3
# Member a's and b's values of every traced method field (config paths), per method.
SETTINGS = {
    "mlb": {
        "method.alpha": (0.5, 2.0),
        "method.beta_max": (4.0, 1.5),
        "method.unimodal_weight": (1.0, 0.5),
    },
    "multiloss": {"method.unimodal_weight": (1.0, 0.25)},
    "ogm_ge": {"method.ogm.alpha": (0.3, 0.9)},
    "agm": {"method.agm.alpha": (1.0, 3.0), "method.agm.max_exponent": (10.0, 1e-5)},
    "pmr": {"method.pmr.alpha": (1.0, 4.0)},
    "mmpareto": {"method.mmpareto.alpha": (1.5, 0.5)},
    "mmcosine": {"method.mmcosine.scaling": (10.0, 3.0)},
    "reconboost": {
        "method.reconboost.alpha": (0.5, 2.0),
        "method.reconboost.w1": (5.0, 2.0),
        "method.reconboost.w2": (1.0, 3.0),
    },
}
# The optimiser's: every method's members may also differ in these.
OPTIMISER = {"train.lr": (0.05, 0.02), "train.weight_decay": (1e-3, 2e-2)}


def member_config(method: str, which: int):
    config = load_tiny(pathlib.Path("unused"))
    config.method.name = method
    config.model.modalities = MODALITIES
    config.model.fusion = "late_linear"  # OGM and MMCosine need it; the others accept it
    config.train.optimizer = "sgd"  # Adam would normalise away a modality's gradient scale
    for path, values in {**SETTINGS.get(method, {}), **OPTIMISER}.items():
        recipes.set_field(config, path, values[which])
    return config


def batches():
    rng = np.random.default_rng(0)
    out = []
    for _ in range(2):
        inputs = {m: rng.standard_normal((B, *s)).astype(np.float32) for m, s in SHAPES.items()}
        inputs[length_key("imu")] = np.asarray([6, 5, 4, 3, 6, 2, 1, 6], np.int32)
        out.append(
            {
                "inputs": inputs,
                "label": rng.integers(0, K, B).astype(np.int32),
                "mask": np.ones(B, bool),
            }
        )
    return out


def with_prototypes(state):
    """PMR's prototypes start invalid (no prototype loss before epoch 2): make them valid."""
    if "prototypes" not in state.method_state:
        return state
    rng = np.random.default_rng(1)
    protos = {
        m: jnp.asarray(rng.standard_normal(p.shape), jnp.float32)
        for m, p in state.method_state["prototypes"].items()
    }
    return state._replace(method_state={"prototypes": protos, "valid": jnp.ones(K, bool)})


def train_two_steps(step, states, scales, args, fields):
    """Two steps of the members; `step` gets the settings as traced inputs (one compile)."""
    for batch in batches():
        states, metrics = step(
            states, jax.tree.map(lambda x: np.stack([x, x]), batch), scales, args, fields
        )
    return states, metrics


@pytest.mark.parametrize("method", list(SETTINGS))
def test_members_settings_reach_the_one_vmapped_step(method):
    setups = [create_train_state(member_config(method, i), K, SHAPES) for i in range(2)]
    methods = [s[1] for s in setups]
    # Every field the method declares traced is exercised here.
    assert set(sweep.traced_paths(methods[0])) == set(SETTINGS[method]) | set(OPTIMISER)
    states = [with_prototypes(s[3]) for s in setups]
    steps = [make_train_step(g, m, tx) for g, m, tx, _ in setups]
    fields = [
        f for f in methods[0].traced_fields if getattr(methods[0], f) != getattr(methods[1], f)
    ]
    assert len(fields) == len(SETTINGS[method])
    lr, wd = OPTIMISER["train.lr"], OPTIMISER["train.weight_decay"]
    scales = np.asarray([1.0, lr[1] / lr[0]], np.float32)
    args = {"weight_decay": np.asarray(wd, np.float32)}
    values = {f: np.asarray([getattr(m, f) for m in methods], np.float32) for f in fields}
    vmapped = jax.jit(jax.vmap(steps[0]))  # as `sweep.member_step` runs it
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    swept, metrics = train_two_steps(vmapped, stacked, scales, args, values)
    # Member b, whose values reach member a's step as inputs, equals its own step built from
    # its config (member a runs the step's own values; tests/test_sweep.py checks vmapped
    # members against their own programs end to end).
    own, state = jax.jit(steps[1]), states[1]
    for batch in batches():
        state, own_metrics = own(state, batch)
    np.testing.assert_allclose(metrics["loss"][1], own_metrics["loss"], rtol=1e-5)
    jax.tree.map(
        lambda s, o: np.testing.assert_allclose(s[1], o, rtol=2e-4, atol=1e-6),
        swept.params,
        state.params,
    )
    # Each field on its own reaches the step: member b with that one field at a's value ends
    # elsewhere (an ignored field would leave it bit-for-bit where it is).
    for field in fields:
        partial = {**values, field: np.full(2, values[field][0], np.float32)}
        moved, _ = train_two_steps(vmapped, stacked, scales, args, partial)
        gap = max(
            float(np.abs(a[1] - b[1]).max())
            for a, b in zip(jax.tree.leaves(moved.params), jax.tree.leaves(swept.params))
        )
        assert gap > 1e-6, (method, field)


def test_every_method_with_traced_fields_is_tested_above():
    config = load_tiny(pathlib.Path("unused"))
    traced = set()
    for name in set(METHODS) - set(BUILT_ON_UNIMODAL):  # those train nothing or one modality
        config.method.name = name
        config.method.modality = "imu" if name == "unimodal" else ""  # read by it alone
        if make_method(config.method).traced_fields:
            traced.add(name)
    assert traced - set(SETTINGS) == {"ogm"}  # the same class as ogm_ge, tested with noise
    assert set(SETTINGS) <= traced


def test_fields_that_shape_the_step_are_refused_with_their_config_path():
    config = member_config("ogm_ge", 0)
    ogm = make_method(config.method)
    with pytest.raises(ValueError, match=r"config.method.ogm.end_epoch of method 'ogm_ge'"):
        ogm.with_settings({"end_epoch": jnp.asarray(3.0)})
    with pytest.raises(ValueError, match="members may differ by seed and .*method.ogm.alpha"):
        sweep.resolve_program("vmap", {"method.ogm.end_epoch"}, traced=sweep.traced_paths(ogm))
    assert sweep.traced_paths(ogm) == ("train.lr", "train.weight_decay", "method.ogm.alpha")
    assert sweep.traced_paths(make_method(member_config("mslr", 0).method)) == sweep.TRACED
