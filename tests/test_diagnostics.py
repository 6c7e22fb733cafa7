"""Training diagnostics: norms and cosines equal hand-computed gradients; the update unchanged."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from test_train import load_tiny

from mlb_jax import trainer
from mlb_jax.batch_format import length_key
from mlb_jax.diagnostics import epoch_summary
from mlb_jax.steps import create_train_state, make_train_step

# Two small sequence modalities: temporal convolutions compile in seconds; no dropout, so the
# hand-computed gradients below see exactly the step's forward pass.
MODALITIES = {
    "imu": {"kind": "tcn", "in_features": 3, "width": 4, "depth": 1, "dropout": 0.0},
    "mfcc": {"kind": "tcn", "in_features": 2, "width": 4, "depth": 2, "dropout": 0.0},
}
SHAPES = {"imu": (6, 3), "mfcc": (5, 2)}
B, K = 8, 3


@pytest.fixture(scope="module")
def setup():
    config = load_tiny(pathlib.Path("unused"))
    config.method.name = "multiloss"  # loss = CE(z) + CE(u_imu) + CE(u_mfcc)
    config.model.modalities = MODALITIES
    config.model.fusion = "late_linear"
    graphdef, method, tx, state = create_train_state(config, K, SHAPES, steps_per_epoch=4)
    rng = np.random.default_rng(0)
    inputs = {m: jnp.asarray(rng.standard_normal((B, *s)), jnp.float32) for m, s in SHAPES.items()}
    inputs[length_key("imu")] = jnp.asarray([6, 5, 4, 3, 6, 2, 1, 6], jnp.int32)
    batch = {
        "inputs": inputs,
        "label": jnp.asarray(rng.integers(0, K, B), jnp.int32),
        "mask": jnp.ones(B, bool),
    }
    plain = jax.jit(make_train_step(graphdef, method, tx))
    diagnosed = jax.jit(make_train_step(graphdef, method, tx, diagnostics=True))
    return graphdef, method, state, batch, plain, diagnosed


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_norms_and_cosines_equal_hand_computed_gradients(setup):
    graphdef, _, state, batch, _, diagnosed = setup
    _, metrics = diagnosed(state, batch)
    labels = batch["label"]

    def grad_of(which):
        def loss(params):
            model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, state.rest))
            out = model(batch["inputs"], train=True)
            logits = out.logits if which == "fused" else out.unimodal_logits[which]
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        return jax.grad(loss)(state.params)

    fused = grad_of("fused")
    for m in MODALITIES:
        g_f = _flat(fused["encoders"][m])
        g_u = _flat(grad_of(m)["encoders"][m])
        # multiloss: encoder m gets CE(z) + CE(u_m) (the other head does not reach it).
        assert float(metrics[f"diag/grad_norm/{m}"]) == pytest.approx(
            np.linalg.norm(g_f + g_u), rel=1e-4
        )
        cosine = g_f @ g_u / (np.linalg.norm(g_f) * np.linalg.norm(g_u))
        assert float(metrics[f"diag/cosine/{m}"]) == pytest.approx(cosine, rel=1e-4, abs=1e-6)
        assert -1.0 <= float(metrics[f"diag/cosine/{m}"]) <= 1.0


def test_diagnostics_leave_the_update_and_state_unchanged(setup):
    _, _, state, batch, plain, diagnosed = setup
    copy = jax.tree.map(jnp.copy, state)  # neither step donates, but keep the input pristine
    new_plain, m_plain = plain(copy, batch)
    new_diag, m_diag = diagnosed(copy, batch)
    for a, b in zip(jax.tree.leaves(new_plain), jax.tree.leaves(new_diag), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):  # dropout streams
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert set(m_diag) - set(m_plain) == {
        "diag/grad_norm/imu",
        "diag/grad_norm/mfcc",
        "diag/cosine/imu",
        "diag/cosine/mfcc",
    }


def test_epoch_summary_and_config_check():
    record = {
        "train/diag/grad_norm/audio": 0.4123,
        "train/diag/grad_norm/video": 0.0912,
        "train/diag/cosine/audio": 0.6234,
        "train/diag/cosine/video": -0.051,
    }
    assert (
        epoch_summary(record, ["audio", "video"])
        == "|g| audio 0.412 video 0.0912 | cos(fused, uni) audio +0.62 video -0.05"
    )
    assert epoch_summary({"train/loss": 1.0}, ["audio"]) is None
    config = load_tiny(pathlib.Path("unused"))
    with config.unlocked():
        del config.train["diagnostics"]
        config.train.diagnostics = "yes"  # a typed field refuses this: a hand-built config
    with pytest.raises(ValueError, match=r"config.train.diagnostics must be True or False"):
        trainer.validate_config(config)
