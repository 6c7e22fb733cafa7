import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from mlb_jax.models import conv
from mlb_jax.models.resnet import AudioEncoder

NHWC = ("NHWC", "HWIO", "NHWC")

X, P, S, W = conv.XLA, conv.PATCHES, conv.SHIFTED, conv.WINOGRAD
# (kernel, stride, padding, C_in, C_out, (H, W)) -> the plan each one must get.
CASES = [
    # large map, wide output, stride 1, too few channels for Winograd: shifted-rows kernel grad
    ((3, 1, 1, 4, 32, (17, 16)), conv.Plan(X, X, S)),
    # large map, 7x7 stride-2 stem with a wide output: patches kernel grad
    ((7, 2, 3, 3, 32, (33, 40)), conv.Plan(X, X, P)),
    # large map, narrow output: XLA everywhere
    ((7, 2, 3, 3, 8, (33, 40)), conv.Plan(X, X, X)),
    # mid-sized map (10x9 = 90 positions), 3x3, narrow: XLA everywhere
    ((3, 1, 1, 8, 8, (10, 9)), conv.Plan(X, X, X)),
    # 1x1 stride-2 downsample on a mid-sized map: patches kernel grad only
    ((1, 2, 0, 8, 16, (20, 18)), conv.Plan(X, X, P)),
    # 2x2 map under a padded 3x3 kernel: matrix products in every pass
    ((3, 1, 1, 16, 16, (2, 2)), conv.Plan(P, P, P)),
    # strided 3x3 on a small map (odd sizes)
    ((3, 2, 1, 8, 8, (7, 5)), conv.Plan(P, P, P)),
    # stride-1 3x3 with 32 channels: Winograd, map sides not multiples of the 4x4 tile
    ((3, 1, 1, 32, 32, (9, 7)), conv.Plan(W, W, W)),
    ((3, 1, 1, 32, 48, (13, 10)), conv.Plan(W, W, W)),
]


def _conv_fn(x, kernel, stride, pad):
    return conv.conv_general_dilated(
        x, kernel, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=NHWC
    )


def _lax_fn(x, kernel, stride, pad):
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=NHWC
    )


@pytest.mark.parametrize(("case", "expected"), CASES)
def test_plan_and_values_and_gradients_equal_lax(case, expected, monkeypatch):
    k, stride, pad, cin, cout, hw = case
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, *hw, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)) * 0.1, jnp.float32)
    out_hw = tuple((hw[a] + 2 * pad - k) // stride + 1 for a in (0, 1))
    assert conv.plan(x.shape, kernel.shape, (stride,) * 2, ((pad, pad),) * 2) == expected
    weights = jnp.asarray(rng.standard_normal((2, *out_hw, cout)), jnp.float32)

    def loss(fn):
        return lambda x_, k_: jnp.sum(jnp.tanh(fn(x_, k_, stride, pad)) * weights)

    monkeypatch.setenv(conv.ENV, "im2col")
    got = jax.jit(jax.value_and_grad(loss(_conv_fn), argnums=(0, 1)))(x, kernel)
    want = jax.value_and_grad(loss(_lax_fn), argnums=(0, 1))(x, kernel)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1][0], want[1][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1][1], want[1][1], rtol=1e-4, atol=1e-4)


def test_plan_on_resnet18_layers():
    def plan(x_shape, kernel_shape, stride, pad):
        return conv.plan(x_shape, kernel_shape, (stride,) * 2, ((pad, pad),) * 2)

    # ResNet-18 on 112x112 frames: stem 56x56 out, stage 1 at 28x28, last stage at 4x4.
    assert plan((48, 112, 112, 3), (7, 7, 3, 64), 2, 3) == conv.Plan(X, X, P)
    assert plan((48, 28, 28, 64), (3, 3, 64, 64), 1, 1) == conv.Plan(W, W, W)
    assert plan((48, 28, 28, 64), (3, 3, 64, 128), 2, 1) == conv.Plan(X, X, X)
    assert plan((48, 14, 14, 128), (3, 3, 128, 128), 1, 1) == conv.Plan(W, W, W)
    assert plan((48, 4, 4, 512), (3, 3, 512, 512), 1, 1) == conv.Plan(P, P, P)
    # 224x224 frames: the last stage at 7x7 keeps Winograd for the kernel gradient only.
    assert plan((48, 7, 7, 512), (3, 3, 512, 512), 1, 1) == conv.Plan(P, P, W)


def test_xla_mode_and_unsupported_calls_are_lax_bit_for_bit(monkeypatch):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 4)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 4, 8)), jnp.float32)

    def grads(fn, **kw):
        return jax.grad(lambda x_, k_: jnp.sum(fn(x_, k_, (1, 1), **kw) ** 2), (0, 1))(x, kernel)

    monkeypatch.setenv(conv.ENV, "xla")
    pad = ((1, 1), (1, 1))
    for a, b in zip(
        grads(conv.conv_general_dilated, padding=pad, dimension_numbers=NHWC),
        grads(lax.conv_general_dilated, padding=pad, dimension_numbers=NHWC),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    monkeypatch.setenv(conv.ENV, "im2col")
    for kw in ({"padding": "SAME"}, {"padding": pad, "rhs_dilation": (2, 2)}):
        for a, b in zip(
            grads(conv.conv_general_dilated, dimension_numbers=NHWC, **kw),
            grads(lax.conv_general_dilated, dimension_numbers=NHWC, **kw),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)


def test_planned_calls_use_the_custom_gradient_and_xla_mode_does_not(monkeypatch):
    x = jnp.zeros((1, 8, 8, 2))
    kernel = jnp.zeros((3, 3, 2, 4))

    def jaxpr():
        return str(jax.make_jaxpr(lambda a, b: _conv_fn(a, b, 1, 1))(x, kernel))

    monkeypatch.setenv(conv.ENV, "im2col")
    assert "custom_vjp_call" in jaxpr()
    monkeypatch.setenv(conv.ENV, "xla")
    assert "custom_vjp_call" not in jaxpr()


def test_auto_follows_the_backend(monkeypatch):
    monkeypatch.setenv(conv.ENV, "auto")
    assert conv.enabled() is (jax.default_backend() == "cpu")
    monkeypatch.setenv(conv.ENV, "xla")
    assert conv.enabled() is False


def test_bad_mode_names_the_variable(monkeypatch):
    monkeypatch.setenv(conv.ENV, "fast")
    with pytest.raises(ValueError, match=r"MLB_JAX_CONV='fast': use auto, im2col or xla"):
        conv.enabled()


def test_encoder_gradients_match_xla_convolutions(monkeypatch):
    # Width 8 on 112x100: stage 3 (32 channels, 7x7) takes Winograd, stages 1-2 XLA or
    # shifted rows, the strided and 1x1 layers patches, stage 4 (4x4) matrix products.
    encoder = AudioEncoder(base_width=8, rngs=nnx.Rngs(0))
    spec = jnp.asarray(np.random.default_rng(2).standard_normal((2, 112, 100)), jnp.float32)

    def loss(model):
        return jnp.sum(model(spec, train=True) ** 2)

    grads = {}
    for mode in ("xla", "im2col"):
        monkeypatch.setenv(conv.ENV, mode)
        # A fresh jit per mode: the mode is read when the step is traced.
        grads[mode] = jax.tree.leaves(nnx.jit(lambda m: nnx.grad(loss)(m))(encoder))
    for a, b in zip(grads["xla"], grads["im2col"], strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("index", [0, 5, 7])  # shifted rows, patches everywhere, Winograd
def test_batch_sharded_over_eight_devices_equals_one_device(index, monkeypatch):
    # The plan reshapes the batch axis into matrix rows (and Winograd into tiles); with the
    # batch sharded over the trainer's ('data',) mesh the results must not change.
    (k, stride, pad, cin, cout, hw), expected = CASES[index]
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((8, *hw, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)) * 0.1, jnp.float32)
    assert conv.plan(x.shape, kernel.shape, (stride,) * 2, ((pad, pad),) * 2) == expected

    def loss(x_, k_):
        return jnp.sum(jnp.tanh(_conv_fn(x_, k_, stride, pad)) ** 2)

    monkeypatch.setenv(conv.ENV, "im2col")
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put(x, jax.NamedSharding(mesh, jax.P("data")))
    assert len(sharded.sharding.device_set) == 8
    one = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, kernel)
    eight = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(sharded, kernel)
    # Only the order of the batch sums differs (per device, then across devices): float32
    # rounding relative to each result's scale.
    for got, want in zip(jax.tree.leaves(eight), jax.tree.leaves(one), strict=True):
        scale = float(jnp.max(jnp.abs(want)))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)
