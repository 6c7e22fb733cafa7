"""Tests of the CPU convolution plan (mlb_jax.models.conv): the per-layer choice, equality
with lax.conv_general_dilated in every pass, the config choice and its fallbacks."""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from mlb_jax.models import conv, pooling, resnet
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
    # strided 3x3 on a mid-sized map (10x9 out), wide output: patches kernel grad only
    ((3, 2, 1, 8, 32, (20, 18)), conv.Plan(X, X, P)),
    # the same with a narrow output: XLA everywhere
    ((3, 2, 1, 8, 8, (20, 18)), conv.Plan(X, X, X)),
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


def _normal(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, jnp.float32)


@pytest.mark.parametrize(("case", "expected"), CASES)
def test_plan_and_values_and_gradients_equal_lax(case, expected):
    k, stride, pad, cin, cout, hw = case
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, *hw, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)) * 0.1, jnp.float32)
    out_hw = tuple((hw[a] + 2 * pad - k) // stride + 1 for a in (0, 1))
    assert conv.plan(x.shape, kernel.shape, (stride,) * 2, ((pad, pad),) * 2) == expected
    weights = jnp.asarray(rng.standard_normal((2, *out_hw, cout)), jnp.float32)

    def loss(fn):
        return lambda x_, k_: jnp.sum(jnp.tanh(fn(x_, k_, stride, pad)) * weights)

    got = jax.jit(jax.value_and_grad(loss(_conv_fn), argnums=(0, 1)))(x, kernel)
    want = jax.value_and_grad(loss(_lax_fn), argnums=(0, 1))(x, kernel)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1][0], want[1][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1][1], want[1][1], rtol=1e-4, atol=1e-4)


def test_transposed_patches_are_the_patches_transposed():
    # Stride 2, uneven padding, 2 channels: rows (i, j, c), columns (n, y, x) in order.
    x = _normal(5, (2, 7, 6, 2))
    padding = ((3, 2), (1, 3))
    patches = conv.im2col(x, (3, 4), (2, 2), padding)
    got = conv.im2col_transposed(x, (3, 4), (2, 2), padding)
    assert got.shape == (3 * 4 * 2, 2 * 5 * 4) and patches.shape == (2, 5, 4, 24)
    np.testing.assert_array_equal(got, patches.reshape(-1, 24).T)
    # Row (i=1, j=2, c=1) at column (n=1, y=0, x=3) is xpad[1, 1, 8, 1] = x[1, -2, 7, 1], in
    # the padding, so zero; at (n=0, y=2, x=1) it is xpad[0, 5, 4, 1] = x[0, 2, 3, 1].
    row = (1 * 4 + 2) * 2 + 1
    assert got[row, 1 * 20 + 0 * 4 + 3] == 0
    assert got[row, 0 * 20 + 2 * 4 + 1] == x[0, 2, 3, 1]


def test_patches_kernel_gradient_does_not_keep_the_forward_patches(monkeypatch):
    # Three small-map layers on patches in every pass, differentiated, ordered for memory:
    # with the kernel gradient's patches built as the forward pass builds them, XLA computes
    # them once and keeps them through the backward pass (1 050 624 against 387 072 bytes of
    # temporaries here).
    x = _normal(3, (4, 6, 6, 32))
    kernels = _normal(4, (3, 3, 3, 32, 32), 0.1)

    def loss(x, kernels):
        for kernel in kernels:
            x = jax.nn.relu(_conv_fn(x, kernel, 1, 1))
        return jnp.sum(x**2)

    assert conv.plan(x.shape, kernels.shape[1:], (1, 1), ((1, 1),) * 2) == conv.Plan(P, P, P)
    options = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}

    def temporaries():
        grad = jax.jit(jax.grad(loss, argnums=(0, 1)), compiler_options=options)
        return grad.lower(x, kernels).compile().memory_analysis().temp_size_in_bytes

    per_tap = temporaries()

    def shared_patches(x_, dy, kernel_shape, strides, padding):
        patches = conv.im2col(x_, kernel_shape[:2], strides, padding)
        return jnp.einsum("nyxk,nyxo->ko", patches, dy).reshape(kernel_shape)

    monkeypatch.setattr(conv, "_tap_kernel_grad", shared_patches)
    assert per_tap < temporaries() / 2


def test_stem_kernel_gradient_builds_one_output_row_of_patches_at_a_time(monkeypatch):
    # A 7x7 stride-2 stem on 3 channels: all its transposed patches at once are
    # [147, 4 * 32 * 32] floats (2 408 448 bytes); one output row's are 32x fewer.
    x, dy = _normal(6, (4, 64, 64, 3)), _normal(7, (4, 32, 32, 32))
    args = ((7, 7, 3, 32), (2, 2), ((3, 3), (3, 3)))
    assert conv.plan(x.shape, *args).kernel_grad == P

    def temporaries():
        grad = jax.jit(lambda x_, dy_: conv.kernel_grad(P, x_, jnp.zeros(args[0]), dy_, *args[1:]))
        return grad.lower(x, dy).compile().memory_analysis().temp_size_in_bytes

    row_by_row = temporaries()

    def all_patches(x_, dy_, kernel_shape, strides, padding):
        patches_t = conv.im2col_transposed(x_, kernel_shape[:2], strides, padding)
        return (patches_t @ dy_.reshape(-1, dy_.shape[3])).reshape(kernel_shape)

    monkeypatch.setattr(conv, "_stem_kernel_grad", all_patches)
    assert temporaries() >= 2_408_448 > 2 * row_by_row, row_by_row


def test_plan_on_resnet18_layers():
    def plan(x_shape, kernel_shape, stride, pad):
        return conv.plan(x_shape, kernel_shape, (stride,) * 2, ((pad, pad),) * 2)

    # ResNet-18 on 112x112 frames: stem 56x56 out, stage 1 at 28x28, last stage at 4x4.
    assert plan((48, 112, 112, 3), (7, 7, 3, 64), 2, 3) == conv.Plan(X, X, P)
    assert plan((48, 28, 28, 64), (3, 3, 64, 64), 1, 1) == conv.Plan(W, W, W)
    # Strided, 14x14 out: the patches kernel gradient, not XLA's (transposes its input).
    assert plan((48, 28, 28, 64), (3, 3, 64, 128), 2, 1) == conv.Plan(X, X, P)
    assert plan((48, 14, 14, 128), (3, 3, 128, 128), 1, 1) == conv.Plan(W, W, W)
    assert plan((48, 4, 4, 512), (3, 3, 512, 512), 1, 1) == conv.Plan(P, P, P)
    # 224x224 frames: the last stage at 7x7 keeps Winograd for the kernel gradient only.
    assert plan((48, 7, 7, 512), (3, 3, 512, 512), 1, 1) == conv.Plan(P, P, W)


def test_wide_plan_takes_winograd_for_the_last_stage_and_nothing_else():
    def both(x_shape, kernel_shape, stride, pad):
        args = (x_shape, kernel_shape, (stride,) * 2, ((pad, pad),) * 2)
        return conv.plan(*args), conv.plan_wide(*args)

    # ResNet-18's last stage: 4x4 (video, 112x112 frames), 9x6 (audio), 7x7 (224x224 frames).
    assert both((48, 4, 4, 512), (3, 3, 512, 512), 1, 1) == (conv.Plan(P, P, P), conv.Plan(W, W, W))
    assert both((16, 9, 6, 512), (3, 3, 512, 512), 1, 1) == (conv.Plan(P, P, P), conv.Plan(W, W, W))
    assert both((48, 7, 7, 512), (3, 3, 512, 512), 1, 1) == (conv.Plan(P, P, W), conv.Plan(W, W, W))
    # Maps under 4x4, too few channels, strides and other kernels: the plan's choice.
    for args in [
        ((48, 2, 2, 512), (3, 3, 512, 512), 1, 1),
        ((48, 4, 4, 16), (3, 3, 16, 16), 1, 1),
        ((48, 8, 8, 256), (3, 3, 256, 512), 2, 1),
        ((48, 8, 8, 256), (1, 1, 256, 512), 2, 0),
        ((48, 112, 112, 3), (7, 7, 3, 64), 2, 3),
        *(((48, s, s, c), (3, 3, c, c), 1, 1) for s, c in [(28, 64), (14, 128), (7, 256)]),
    ]:
        assert both(*args)[0] == both(*args)[1], args


def test_wide_plan_gives_xla_values_and_both_gradients():
    # 4x4 maps with 32 channels: matrix products under the plan, Winograd under the wide plan.
    x, kernel = _normal(0, (2, 4, 4, 32)), _normal(1, (3, 3, 32, 32), 0.1)
    padding = ((1, 1), (1, 1))
    assert conv.plan_wide(x.shape, kernel.shape, (1, 1), padding) == conv.Plan(W, W, W)
    weights = _normal(2, (2, 4, 4, 32))

    def loss(fn):
        return lambda x_, k_: jnp.sum(
            jnp.tanh(fn(x_, k_, (1, 1), padding, dimension_numbers=NHWC)) * weights
        )

    got = jax.jit(jax.value_and_grad(loss(conv.conv_function("plan_wide")), argnums=(0, 1)))(
        x, kernel
    )
    want = jax.value_and_grad(loss(lax.conv_general_dilated), argnums=(0, 1))(x, kernel)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1][0], want[1][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1][1], want[1][1], rtol=1e-4, atol=1e-4)


def _grads(fn, x, kernel, **kw):
    return jax.value_and_grad(
        lambda x_, k_: jnp.sum(fn(x_, k_, (1, 1), **kw).astype(jnp.float32) ** 2), (0, 1)
    )(x, kernel)


def _assert_same_op(x, kernel, **kw):
    """Value and both gradients bit-for-bit equal to lax's, and no custom gradient traced."""
    for a, b in zip(
        jax.tree.leaves(_grads(conv.conv_general_dilated, x, kernel, **kw)),
        jax.tree.leaves(_grads(lax.conv_general_dilated, x, kernel, **kw)),
        strict=True,
    ):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    jaxpr = jax.make_jaxpr(lambda a, b: conv.conv_general_dilated(a, b, (1, 1), **kw))(x, kernel)
    assert "custom_vjp_call" not in str(jaxpr)


def test_unsupported_calls_are_lax_bit_for_bit():
    # 8x8 output: in float32 with explicit padding this would be planned (patches).
    x, kernel = _normal(3, (2, 8, 8, 4)), _normal(4, (3, 3, 4, 8))
    pad = ((1, 1), (1, 1))
    for kw in ({"padding": "SAME"}, {"padding": pad, "rhs_dilation": (2, 2)}):
        _assert_same_op(x, kernel, dimension_numbers=NHWC, **kw)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_non_float32_falls_back_to_lax(dtype):
    # The patches case in float32; in 16-bit floats the plan is XLA's convolution in every
    # pass, and the call is lax.conv_general_dilated itself.
    shape, kernel_shape, strides, padding = (2, 8, 8, 4), (3, 3, 4, 8), (1, 1), ((1, 1), (1, 1))
    assert conv.plan(shape, kernel_shape, strides, padding) == conv.Plan(P, P, P)
    assert conv.plan(shape, kernel_shape, strides, padding, dtype) == conv.ALL_XLA
    assert conv.plan(shape, kernel_shape, strides, padding, None) == conv.ALL_XLA
    x = _normal(5, shape).astype(dtype)
    kernel = _normal(6, kernel_shape).astype(dtype)
    _assert_same_op(x, kernel, padding=padding, dimension_numbers=NHWC)


def test_planned_calls_use_the_custom_gradient_and_xla_choice_is_lax():
    x = jnp.zeros((1, 8, 8, 2))
    kernel = jnp.zeros((3, 3, 2, 4))

    def jaxpr(fn):
        return str(
            jax.make_jaxpr(lambda a, b: fn(a, b, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC))(
                x, kernel
            )
        )

    assert conv.conv_function("plan") is conv.conv_general_dilated
    assert conv.conv_function("plan_wide") is conv.conv_general_dilated_wide
    assert conv.conv_function("xla") is lax.conv_general_dilated
    assert "custom_vjp_call" in jaxpr(conv.conv_function("plan"))
    assert "custom_vjp_call" not in jaxpr(conv.conv_function("xla"))


def test_resolve_follows_the_backend():
    assert conv.CHOICES == ("auto", "tuned", "plan", "plan_wide", "xla")
    assert conv.resolve("auto", "cpu") == "plan"
    assert conv.resolve("auto", "gpu") == "xla"
    assert conv.resolve("auto", "tpu") == "xla"
    assert conv.resolve("plan", "gpu") == "plan"
    assert conv.resolve("plan_wide", "cpu") == "plan_wide"
    assert conv.resolve("xla", "cpu") == "xla"
    assert conv.resolve("tuned", "gpu") == "tuned"
    assert conv.resolve("auto") == ("plan" if jax.default_backend() == "cpu" else "xla")


OLD_NAME_HINT = " ('im2col', the old MLB_JAX_CONV value, is now 'plan')"


@pytest.mark.parametrize(("choice", "extra"), [("fast", ""), ("im2col", OLD_NAME_HINT), (None, "")])
def test_bad_choice_names_the_config_field(choice, extra):
    message = (
        f"config.model.conv={choice!r} is not a convolution choice: use 'auto' (the fastest "
        "step of 'plan', 'plan_wide' and 'xla' on the CPU, XLA's convolution elsewhere), "
        f"'plan', 'plan_wide', 'tuned' or 'xla'{extra}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        conv.resolve(choice)
    with pytest.raises(ValueError, match=re.escape(message)):
        AudioEncoder(base_width=1, conv=choice, rngs=nnx.Rngs(0))


def test_old_environment_variable_is_ignored_with_a_warning(monkeypatch):
    monkeypatch.setenv("MLB_JAX_CONV", "xla")
    with pytest.warns(UserWarning, match=r"MLB_JAX_CONV='xla' is ignored.*config.model.conv"):
        assert conv.resolve("plan") == "plan"
    monkeypatch.delenv("MLB_JAX_CONV")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conv.resolve("plan")


def test_forward_mode_through_the_plan_names_the_fix():
    x, kernel = _normal(7, (1, 8, 8, 2)), _normal(8, (3, 3, 2, 4))

    def f(x_):
        return _conv_fn(x_, kernel, 1, 1)

    fix = re.escape("config.model.conv='xla'")
    with pytest.raises(TypeError, match=fix):
        jax.jvp(f, (x,), (x,))
    with pytest.raises(TypeError, match=fix):
        jax.jacfwd(f)(x)


def _split_encoders(width: int) -> dict[str, tuple]:
    """choice -> (graphdef, params, rest) of one AudioEncoder per choice, same parameters."""
    out = {}
    for choice in ("xla", "plan"):
        # Same seed for both: the parameters do not depend on the algorithm.
        encoder = AudioEncoder(base_width=width, conv=choice, rngs=nnx.Rngs(0))
        assert encoder.resnet.conv_algorithm == choice
        layer = encoder.resnet.stages[2][1].conv2.conv
        assert layer.conv_general_dilated is conv.conv_function(choice)
        out[choice] = nnx.split(encoder, nnx.Param, ...)
    return out


def _encoder_loss(graphdef, params, rest, x, train=True):
    # Fresh Variables for the batch statistics, which train=True updates: ones made outside
    # this trace (jax.grad's) may not be mutated inside it.
    rest = jax.tree.map(lambda a: a, rest)
    return jnp.sum(nnx.merge(graphdef, params, rest)(x, train=train) ** 2)


def test_encoder_gradients_match_xla_convolutions(monkeypatch):
    # Width 8 on 112x100: stage 3 (32 channels, 7x7) takes Winograd, stages 1-2 XLA or
    # shifted rows, the strided and 1x1 layers patches, stage 4 (4x4) matrix products.
    # Both encoders pool with XLA's reduce_window, so that only the convolutions differ (the
    # plan's pooling gradient is checked on its own in test_models.py).
    monkeypatch.setattr(resnet, "max_pool_3x3_s2", pooling.max_pool_3x3_s2_xla)
    encoders = _split_encoders(8)
    spec = _normal(2, (2, 112, 100))
    grad = jax.jit(jax.grad(_encoder_loss, argnums=1), static_argnums=0)
    grads = {choice: grad(*parts, spec) for choice, parts in encoders.items()}
    for a, b in zip(jax.tree.leaves(grads["xla"]), jax.tree.leaves(grads["plan"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)


def test_xla_choice_differentiates_forward_and_agrees_with_the_plan():
    # d/dt loss(x + t v) at t = 0 by jax.jvp under conv='xla' equals <grad_x loss, v> by
    # reverse mode under conv='plan' (patches and XLA layers at this size). Running
    # statistics (train=False): batch statistics make this loss nearly invariant along v, and
    # the comparison would measure cancellation.
    encoders = _split_encoders(2)
    spec, direction = _normal(2, (2, 16, 12)), _normal(3, (2, 16, 12))

    @jax.jit
    def both(x, v):
        _, tangent = jax.jvp(lambda x_: _encoder_loss(*encoders["xla"], x_, False), (x,), (v,))
        grad_x = jax.grad(lambda x_: _encoder_loss(*encoders["plan"], x_, False))(x)
        return tangent, jnp.vdot(grad_x, v)

    tangent, reverse = both(spec, direction)
    assert abs(float(reverse)) > 1e-2  # a derivative worth comparing
    np.testing.assert_allclose(tangent, reverse, rtol=1e-4)


@pytest.mark.parametrize(
    "wanted",
    [conv.Plan(X, X, S), conv.Plan(X, X, P), conv.Plan(P, P, P), conv.Plan(W, W, W)],
    ids=["shifted-rows", "stem-row-loop", "patches-everywhere", "winograd"],
)
def test_batch_sharded_over_eight_devices_equals_one_device(wanted):
    # The plan reshapes the batch axis into matrix rows (and Winograd into tiles, and the
    # stems' kernel gradient loops over output rows); with the batch sharded over the
    # trainer's ('data',) mesh the results must not change, and no device gathers the batch.
    (k, stride, pad, cin, cout, hw), expected = next(case for case in CASES if case[1] == wanted)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((8, *hw, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)) * 0.1, jnp.float32)
    assert conv.plan(x.shape, kernel.shape, (stride,) * 2, ((pad, pad),) * 2) == expected

    def loss(x_, k_):
        return jnp.sum(jnp.tanh(_conv_fn(x_, k_, stride, pad)) ** 2)

    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put(x, jax.NamedSharding(mesh, jax.P("data")))
    assert len(sharded.sharding.device_set) == 8
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    one = grad(x, kernel)
    eight = grad(sharded, kernel)
    assert "all-gather" not in grad.lower(sharded, kernel).compile().as_text()
    # Only the order of the batch sums differs (per device, then across devices): float32
    # rounding relative to each result's scale.
    for got, want in zip(jax.tree.leaves(eight), jax.tree.leaves(one), strict=True):
        scale = float(jnp.max(jnp.abs(want)))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)
