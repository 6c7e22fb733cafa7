"""Tests of the sequence encoders (Conformer, temporal convolution network) and their config.

What matters most is that an example's feature depends on its valid steps only: not on the
values of padded steps, not on how far its batch was padded, and finitely zero when it has
none. Models are tiny, built once per module (building is eager and costs seconds), and run
through one jitted forward keyed by their graph definition, so equal shapes compile once.
Initialisation uses ``rbg`` keys, as tests/test_models.py does, to keep XLA compilation short.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mlb_jax.batch_format import length_key
from mlb_jax.models import EncoderSpec, build_model
from mlb_jax.models.sequence import ConformerEncoder, TemporalConvEncoder

B, L, D = 3, 12, 5
LENGTHS = (9, 7, 4)  # the longest is shorter than L, so trimming the batch is a real change
CONFORMER = {"dim": 16, "depth": 2, "heads": 2, "ff_mult": 2, "conv_kernel": 3}
TCN = {"width": 8, "depth": 2, "kernel": 3}
ATOL = 1e-6  # same shapes, same computation: padded steps must not move anything
ALONE_ATOL = 2e-6  # different lengths: matrix products may sum in another order


def _rngs(seed: int = 0) -> nnx.Rngs:
    return nnx.Rngs(
        params=jax.random.key(seed, impl="rbg"), dropout=jax.random.key(seed + 1, impl="rbg")
    )


def _normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
    # numpy draws: jax.random would compile one program per shape.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _padded_batch(lengths=LENGTHS, steps: int = L, features: int = D, seed: int = 0):
    """Random features, zero after each example's valid steps, and the int32 lengths."""
    x = _normal(seed, (len(lengths), steps, features))
    mask = np.arange(steps)[None, :] < np.asarray(lengths)[:, None]
    return jnp.where(mask[..., None], x, 0.0), jnp.asarray(lengths, jnp.int32)


def _junk_in_padding(x: jax.Array, lengths: jax.Array) -> jax.Array:
    """``x`` with large random values in every padded step and NaN in the last example's."""
    mask = (np.arange(x.shape[1])[None, :] < np.asarray(lengths)[:, None])[..., None]
    junk = 100.0 * _normal(99, x.shape)
    junk = junk.at[-1].set(jnp.nan)
    return jnp.where(mask, x, junk)


@functools.partial(jax.jit, static_argnames=("graphdef", "train"))
def _forward(graphdef, state, x, lengths, *, train):
    module = nnx.merge(graphdef, state)
    out = module(x, lengths=lengths, train=train)
    return out, nnx.state(module, nnx.BatchStat)


def _run(module: nnx.Module, x, lengths=None, *, train: bool, stats: bool = False):
    """Runs the encoder in a jitted function; the module itself is left unchanged.

    Dropout draws from the module's stored RNG counter, which is not advanced, so two runs on
    equally shaped inputs use the same dropout masks.
    """
    graphdef, state = nnx.split(module)
    out, new_stats = _forward(graphdef, state, x, lengths, train=train)
    return (out, new_stats) if stats else out


def _without_dropout(module: nnx.Module) -> nnx.Module:
    """A copy with every dropout rate 0 (same parameters), for comparisons across shapes."""
    copy = nnx.clone(module)
    for _, layer in nnx.iter_graph(copy):
        if isinstance(layer, nnx.Dropout):
            layer.rate = 0.0
    return copy


@pytest.fixture(scope="module")
def encoders() -> dict[str, nnx.Module]:
    """The two encoders with dropout 0.1, and their dropout-free copies (``*_nodrop``)."""
    built = {
        "conformer": ConformerEncoder(D, **CONFORMER, name="seq", rngs=_rngs(0)),
        "tcn": TemporalConvEncoder(D, **TCN, name="imu", rngs=_rngs(1)),
    }
    for name in list(built):
        built[f"{name}_nodrop"] = _without_dropout(built[name])
    return built


# --- masking --------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kind", ["conformer", "tcn"])
def test_padded_values_do_not_change_the_output(encoders, kind, train):
    # With dropout on in training: the same RNG state gives the same masks, so any change
    # would come from the padded values (large, and NaN in one example).
    encoder = encoders[kind]
    x, lengths = _padded_batch()
    out = _run(encoder, x, lengths, train=train)
    junk = _run(encoder, _junk_in_padding(x, lengths), lengths, train=train)
    assert out.shape == (B, encoder.out_features)
    assert np.all(np.isfinite(junk))
    np.testing.assert_allclose(junk, out, rtol=0, atol=ATOL)


@pytest.mark.parametrize("kind", ["conformer", "tcn"])
def test_eval_example_alone_equals_its_padded_row(encoders, kind):
    # Evaluation is a fixed function of each example: padded in a batch of 3 or alone without
    # padding (lengths=None: all steps valid), the feature is the same.
    encoder = encoders[kind]
    x, lengths = _padded_batch()
    out = _run(encoder, x, lengths, train=False)
    for i in (0, 2):  # the longest and the shortest; each length is one more compilation
        length = LENGTHS[i]
        alone = _run(encoder, x[i : i + 1, :length], None, train=False)
        np.testing.assert_allclose(alone[0], out[i], rtol=1e-5, atol=ALONE_ATOL)


@pytest.mark.parametrize("kind", ["conformer", "tcn"])
def test_train_output_does_not_depend_on_padding_length(encoders, kind):
    # In training (dropout off, so masks cannot differ by shape) the Conformer's masked
    # BatchNorm takes statistics over the batch's valid steps: trimming or adding padding
    # changes nothing, for a batch and for one example alone.
    encoder = encoders[f"{kind}_nodrop"]
    x, lengths = _padded_batch()
    out = _run(encoder, x, lengths, train=True)
    trimmed = _run(encoder, x[:, : max(LENGTHS)], lengths, train=True)
    np.testing.assert_allclose(trimmed, out, rtol=1e-5, atol=ALONE_ATOL)
    i, length = 1, LENGTHS[1]
    padded_alone = _run(encoder, x[i : i + 1], lengths[i : i + 1], train=True)
    alone = _run(encoder, x[i : i + 1, :length], None, train=True)
    np.testing.assert_allclose(alone, padded_alone, rtol=1e-5, atol=ALONE_ATOL)
    # What BatchNorm does not promise: alone, the Conformer's statistics are that example's
    # only, so its training feature differs from its row in the batch; the TCN's LayerNorm
    # is per step, so it agrees.
    batch_row_equals_alone = np.allclose(alone[0], out[i], rtol=1e-5, atol=ALONE_ATOL)
    assert batch_row_equals_alone == (kind == "tcn")


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kind", ["conformer", "tcn"])
def test_zero_valid_steps_give_a_finite_zero_feature(encoders, kind, train):
    encoder = encoders[kind]
    x, _ = _padded_batch()
    some = jnp.asarray([0, 6, 0], jnp.int32)
    out = _run(encoder, _junk_in_padding(x, some), some, train=train)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_array_equal(out[2], 0.0)
    assert np.abs(out[1]).max() > 0
    none = jnp.zeros((B,), jnp.int32)
    out, stats = _run(encoder, x, none, train=train, stats=True)
    np.testing.assert_array_equal(out, 0.0)
    # A batch without valid steps leaves the running statistics as they were.
    before = jax.tree.leaves(nnx.state(encoder, nnx.BatchStat))
    assert len(before) == (2 * CONFORMER["depth"] if kind == "conformer" else 0)
    for old, new in zip(before, jax.tree.leaves(stats), strict=True):
        np.testing.assert_array_equal(new, old)


def test_masked_batch_norm_updates_running_statistics_from_valid_steps(
    encoders, tracer_sharding_reads
):
    # The first block's convolution-module BatchNorm, fed its input directly.
    norm = encoders["conformer"].blocks[0].conv.batch_norm
    x, lengths = _padded_batch(steps=L, features=CONFORMER["dim"], seed=5)
    mask = np.arange(L)[None, :] < np.asarray(lengths)[:, None]
    valid = np.asarray(x)[mask]  # [sum(lengths), C]
    graphdef, state = nnx.split(norm)

    @jax.jit
    def train_step(state, x, mask):
        module = nnx.merge(graphdef, state)
        return module(x, mask, train=True), nnx.state(module, nnx.BatchStat)

    y, stats = train_step(state, _junk_in_padding(x, lengths), jnp.asarray(mask))
    mean, var = valid.mean(0), valid.var(0)
    # From the initial running statistics (0, 1), one update with momentum 0.9.
    np.testing.assert_allclose(stats["mean"][...], 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"][...], 0.9 + 0.1 * var, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(y)[mask], (valid - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5
    )
    # set_value, not `[...] =`, which would read them (tests/test_models.py)
    assert tracer_sharding_reads == []


# --- positions ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kernel_one_conformers() -> dict[str, ConformerEncoder]:
    """Conformers whose convolution sees one step: only attention positions can order steps."""
    options = {**CONFORMER, "conv_kernel": 1}
    return {
        positions: ConformerEncoder(D, **options, positions=positions, rngs=_rngs(2))
        for positions in ("none", "rotary")
    }


def test_conformer_without_positions_ignores_the_order_of_valid_steps(kernel_one_conformers):
    # Evaluation mode; in training the masked BatchNorm's statistics are sums over valid
    # steps, as order-blind as the rest.
    x, lengths = _padded_batch()
    shuffled = np.asarray(x).copy()
    rng = np.random.default_rng(7)
    for i, length in enumerate(LENGTHS):
        shuffled[i, :length] = shuffled[i, rng.permutation(length)]
    shuffled = jnp.asarray(shuffled)
    assert not np.allclose(shuffled, x)
    for positions, encoder in kernel_one_conformers.items():
        out = _run(encoder, x, lengths, train=False)
        permuted = _run(encoder, shuffled, lengths, train=False)
        if positions == "none":
            np.testing.assert_allclose(permuted, out, rtol=1e-5, atol=ALONE_ATOL)
        else:  # rotary: attention scores depend on relative positions
            assert np.abs(np.asarray(permuted) - np.asarray(out)).max() > 1e-3


# --- gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["conformer", "tcn"])
def test_every_parameter_gets_a_finite_nonzero_gradient(encoders, kind):
    # Training mode (dropout, masked batch statistics), with an example that has no valid
    # step and NaN in its padding: the gradient stays finite, and every parameter array is
    # used. A random projection, not a plain sum, of the output: the sum of a LayerNorm'd
    # vector is constant.
    encoder = encoders[kind]
    x, _ = _padded_batch()
    lengths = jnp.asarray([9, 0, 4], jnp.int32)
    x = _junk_in_padding(x, lengths)
    weights = _normal(3, (B, encoder.out_features))
    graphdef, params, rest = nnx.split(encoder, nnx.Param, ...)

    def loss(params, rest):
        # Fresh Variables at this trace level, as mlb_jax.steps does: NNX refuses to advance
        # the dropout RNG counters (or BatchNorm statistics) held by the enclosing trace's.
        rest = jax.tree.map(lambda leaf: leaf, rest)
        out = nnx.merge(graphdef, params, rest)(x, lengths=lengths, train=True)
        return jnp.sum(out * weights)

    grads = jax.jit(jax.grad(loss))

    flat = jax.tree_util.tree_leaves_with_path(grads(params, rest))
    assert len(flat) == len(jax.tree.leaves(params))
    for path, grad in flat:
        name = jax.tree_util.keystr(path)
        assert np.all(np.isfinite(grad)), name
        assert np.abs(grad).max() > 0, name


# --- the classifier -------------------------------------------------------------------------


def _model_config(**seq_overrides) -> dict:
    return {
        "modalities": {
            "seq": {"kind": "conformer", "in_features": D, **CONFORMER, **seq_overrides},
            "imu": {"kind": "tcn", "in_features": 6, **TCN},
            "audio": {"kind": "audio", "in_channels": 1},
        },
        # ResNet settings, which the sequence encoders ignore. XLA's convolution because the
        # CPU plan's programs take ~10 s longer to compile, and the ResNet is not under test.
        "base_width": 2,
        "conv": "xla",
        "fusion": "late_linear",
        "num_classes": 4,
    }


def test_build_model_with_sequence_modalities_uses_their_lengths():
    model = build_model(_model_config(depth=1), rngs=_rngs(3))
    assert isinstance(model.encoders["seq"], ConformerEncoder)
    assert isinstance(model.encoders["imu"], TemporalConvEncoder)
    assert model.feature_dims == {"seq": 16, "imu": 8, "audio": 16}
    seq, seq_lengths = _padded_batch((10, 4), steps=10, seed=1)
    imu, imu_lengths = _padded_batch((8, 5), steps=8, features=6, seed=2)
    inputs = {
        "seq": seq,
        length_key("seq"): seq_lengths,
        "imu": imu,
        length_key("imu"): imu_lengths,
        "audio": _normal(3, (2, 16, 12)),
    }
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, inputs: nnx.merge(graphdef, state)(inputs, train=False))
    out = forward(state, inputs)
    assert out.logits.shape == (2, 4)
    assert {n: f.shape for n, f in out.features.items()} == {
        "seq": (2, 16),
        "imu": (2, 8),
        "audio": (2, 16),
    }
    junk = {
        **inputs,
        "seq": _junk_in_padding(seq, seq_lengths),
        "imu": _junk_in_padding(imu, imu_lengths),
    }
    np.testing.assert_allclose(forward(state, junk).logits, out.logits, rtol=0, atol=ATOL)
    for name in ("seq", "imu"):
        shorter = {**inputs, length_key(name): inputs[length_key(name)].at[0].add(-2)}
        changed = forward(state, shorter)
        assert np.abs(np.asarray(changed.logits[0] - out.logits[0])).max() > 1e-4, name
        np.testing.assert_allclose(changed.logits[1], out.logits[1], rtol=0, atol=ATOL)


def test_encoder_spec_keeps_its_positional_fields():
    spec = EncoderSpec("video", 3)
    assert (spec.kind, spec.in_channels) == ("video", 3)
    assert spec.given() == {"in_channels": 3}
    assert EncoderSpec("tcn", in_features=6, width=8).given() == {"in_features": 6, "width": 8}


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "x", "lengths", "match"),
    [
        (
            "conformer",
            jnp.zeros((B, L)),
            None,
            "seq input must have rank 3 [B, L, D] with D = 5, got shape (3, 12)",
        ),
        (
            "tcn",
            jnp.zeros((B, L, 4)),
            None,
            "imu input must have 5 features in its last axis [B, L, D], got shape (3, 12, 4)",
        ),
        (
            "conformer",
            jnp.zeros((B, L, D)),
            jnp.zeros((B + 1,), jnp.int32),
            "seq lengths must be an integer array of shape [B] = (3,), got int32 of shape (4,)",
        ),
        (
            "tcn",
            jnp.zeros((B, L, D)),
            jnp.full((B,), 4.0),
            "imu lengths must be an integer array of shape [B] = (3,), got float32 of shape (3,)",
        ),
    ],
)
def test_bad_inputs_name_the_modality_and_expected_shape(encoders, kind, x, lengths, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        encoders[kind](x, lengths=lengths, train=False)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (
            {"kind": "conformer", "in_features": D, "hidden": 8},
            r"modality 'seq': unknown field\(s\) \['hidden'\]; expected \['kind', 'in_channels'",
        ),
        (
            {"kind": "tcn", "in_features": D, "heads": 2},
            r"modality 'seq': field\(s\) \['heads'\] do not apply to encoder kind 'tcn', which "
            r"takes \['in_features', 'width', 'depth', 'kernel', 'dropout'\]",
        ),
        (
            {"kind": "conformer", "in_channels": 1, "in_features": D},
            r"field\(s\) \['in_channels'\] do not apply to encoder kind 'conformer'",
        ),
        (
            {"kind": "audio", "in_features": D},
            r"field\(s\) \['in_features'\] do not apply to encoder kind 'audio'",
        ),
        ({"kind": "tcn"}, "modality 'seq': encoder kind 'tcn' needs field 'in_features'"),
        (
            {"kind": "lstm", "in_features": D},
            r"unknown encoder kind 'lstm'; expected one of \['audio', 'video'\] .* or "
            r"\['conformer', 'tcn'\]",
        ),
        (
            {"kind": "conformer", "in_features": D, "dim": 10, "heads": 4},
            "seq: dim=10 must be divisible by heads=4",
        ),
        (
            {"kind": "conformer", "in_features": D, "dim": 12, "heads": 4},
            "seq: rotary positions rotate channel pairs, so the head width dim / heads = 3",
        ),
        (
            {"kind": "conformer", "in_features": D, "positions": "absolute"},
            r"seq: positions must be one of \('rotary', 'none'\), got 'absolute'",
        ),
        ({"kind": "conformer", "in_features": D, "conv_kernel": 4}, "seq: conv_kernel must be odd"),
        ({"kind": "tcn", "in_features": 0}, "seq: in_features must be a positive integer"),
        ({"kind": "tcn", "in_features": D, "dropout": 1.0}, r"seq: dropout must be a rate in"),
    ],
)
def test_config_errors(spec, match):
    # One modality (late linear fusion allows it): every error comes before any parameter.
    config = {"modalities": {"seq": spec}, "num_classes": 2}
    with pytest.raises(ValueError, match=match):
        build_model(config, rngs=_rngs())
