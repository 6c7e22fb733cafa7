import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mlb_jax.models import winograd

NHWC = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)


def test_one_dimensional_tile_is_the_correlation_by_hand():
    # F(4, 3) on one 6-sample tile: A^T [(G g) * (B^T d)] = [sum_j d[i + j] g[j] for i < 4].
    d = np.arange(6, dtype=np.float64)
    g = np.array([1.0, 2.0, 3.0])
    got = winograd._AT @ ((winograd._G @ g) * (winograd._BT @ d))
    np.testing.assert_allclose(got, [8.0, 14.0, 20.0, 26.0], rtol=1e-6)


def test_ones_through_a_ones_kernel_count_the_window_inside_the_map():
    # Padding 1: a 3x3 box sum of ones is 9 inside, 6 on edges, 4 in corners (times C_in = 2).
    y = winograd.conv3x3(jnp.ones((1, 5, 6, 2)), jnp.ones((3, 3, 2, 1)))
    expected = np.full((5, 6), 9.0)
    expected[[0, -1], :] = 6.0
    expected[:, [0, -1]] = 6.0
    expected[[0, 0, -1, -1], [0, -1, 0, -1]] = 4.0
    np.testing.assert_allclose(y[0, :, :, 0], 2 * expected, rtol=1e-6)


@pytest.mark.parametrize("hw", [(4, 4), (5, 7), (9, 6), (13, 8)])
def test_all_three_passes_equal_lax(hw):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, *hw, 5)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 5, 6)) * 0.3, jnp.float32)
    dy = jnp.asarray(rng.standard_normal((2, *hw, 6)), jnp.float32)
    y, vjp = jax.vjp(_lax_conv, x, kernel)
    dx, dkernel = vjp(dy)
    np.testing.assert_allclose(jax.jit(winograd.conv3x3)(x, kernel), y, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(jax.jit(winograd.conv3x3_input_grad)(dy, kernel), dx, atol=2e-5 * 9)
    np.testing.assert_allclose(jax.jit(winograd.conv3x3_kernel_grad)(x, dy), dkernel, atol=1e-4)


def test_output_transform_transpose_is_the_adjoint():
    # <output_transform(m), y> == <m, output_transform_transpose(y)> for any m and y.
    n, h, w, c = 2, 7, 5, 3
    tiles = n * 2 * 2
    rng = np.random.default_rng(1)
    m = jnp.asarray(rng.standard_normal((36, tiles, c)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
    lhs = jnp.vdot(winograd.output_transform(m, n, h, w), y)
    rhs = jnp.vdot(m, winograd.output_transform_transpose(y))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5)


def test_rows_first_input_transform_equals_columns_first():
    # The kernel gradient's V(x) combines rows first: the same transform, another rounding.
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 9, 6, 3)), jnp.float32)
    cols_first = jax.jit(winograd.input_transform)(x)
    rows_first = jax.jit(lambda x_: winograd.input_transform(x_, rows_first=True))(x)
    assert rows_first.shape == cols_first.shape == (36, 2 * 3 * 2, 3)
    np.testing.assert_allclose(rows_first, cols_first, rtol=1e-6, atol=1e-5)


def test_kernel_gradient_does_not_keep_the_forward_input_transform(monkeypatch):
    # Three planned Winograd layers, differentiated, ordered for memory: with the kernel
    # gradient's V(x) built as the forward pass builds it, XLA computes it once and keeps it
    # through the backward pass, so the program needs more temporaries.
    from mlb_jax.models import conv

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 16, 16, 32)), jnp.float32)
    kernels = jnp.asarray(rng.standard_normal((3, 3, 3, 32, 32)) * 0.1, jnp.float32)

    def loss(x, kernels):
        for kernel in kernels:
            x = jax.nn.relu(
                conv.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), None, None, NHWC)
            )
        return jnp.sum(x**2)

    assert conv.plan(x.shape, kernels.shape[1:], (1, 1), ((1, 1), (1, 1))).kernel_grad == "winograd"
    options = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}

    def temporaries():
        grad = jax.jit(jax.grad(loss, argnums=(0, 1)), compiler_options=options)
        return grad.lower(x, kernels).compile().memory_analysis().temp_size_in_bytes

    rebuilt = temporaries()
    original = winograd.input_transform
    monkeypatch.setattr(winograd, "input_transform", lambda x_, rows_first=False: original(x_))
    shared = temporaries()
    assert rebuilt < shared, (rebuilt, shared)
