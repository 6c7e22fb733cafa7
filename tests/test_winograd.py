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
