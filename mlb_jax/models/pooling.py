"""ResNet's 3x3 stride-2 max pooling, with a gradient that avoids XLA's select-and-scatter.

Differentiating `lax.reduce_window(max)` gives XLA's select-and-scatter, which on the CPU costs
20x the pooling itself: value and gradient of the audio stem's [16, 129, 94, 64] map took
207 ms with it and 29 ms here, the video stem's [48, 112, 112, 64] map at 224 607 ms and 123 ms
(2-core AVX-512 EPYC, benchmarks/pool_speed.py). Here the forward pass also records which of
the 9 window positions won (an int8 per output: the first maximum in row-major window order,
the element select-and-scatter with `>=` picks, and PyTorch's `MaxPool2d` too), and the
backward pass routes each output's gradient to that position with elementwise selects, pads
and one interleaving reshape, all of which XLA fuses. Values and gradients equal
`reduce_window`'s (gradients up to the order of the at most 4 additions into one input
element, which overlapping windows share). A custom VJP has no forward mode (`jax.jvp`):
`max_pool_3x3_s2_xla` is the same pooling with XLA's derivatives, used with
`config.model.conv='xla'`.
"""

import functools

import jax
import jax.numpy as jnp

_WINDOW = 3


def _out_size(n: int) -> int:
    """ceil(n / 2): the outputs of a 3-wide, stride-2 window with padding 1 on both sides."""
    return (n - 1) // 2 + 1


def _padded(x: jax.Array) -> jax.Array:
    """The input padded with -inf: 1 before, up to 2 * (out + 1) after, along H and W."""
    h, w = x.shape[1], x.shape[2]
    ho, wo = _out_size(h), _out_size(w)
    pads = ((0, 0), (1, 2 * (ho + 1) - h - 1), (1, 2 * (wo + 1) - w - 1), (0, 0))
    return jnp.pad(x, pads, constant_values=-jnp.inf)


def _views(x: jax.Array) -> list[jax.Array]:
    """The 9 window positions (di, dj) as strided views of the padded input, row-major."""
    ho, wo = _out_size(x.shape[1]), _out_size(x.shape[2])
    xp = _padded(x)
    return [
        xp[:, di : di + 2 * ho : 2, dj : dj + 2 * wo : 2, :]
        for di in range(_WINDOW)
        for dj in range(_WINDOW)
    ]


def max_pool_3x3_s2_xla(x: jax.Array) -> jax.Array:
    """`max_pool_3x3_s2` as XLA's reduce_window, with its own derivatives (forward mode too).

    `config.model.conv='xla'` uses it: XLA's operations only, so `jax.jvp` works (a
    custom-VJP function has no forward mode), at the cost of select-and-scatter's gradient.
    """
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        window_dimensions=(1, 3, 3, 1),
        window_strides=(1, 2, 2, 1),
        padding=((0, 0), (1, 1), (1, 1), (0, 0)),
    )


@jax.custom_vjp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """PyTorch ``MaxPool2d(3, stride=2, padding=1)``: the padding is -inf, so it never wins.

    Args:
        x: [N, H, W, C] floating point.

    Returns:
        [N, ceil(H / 2), ceil(W / 2), C].
    """
    return max_pool_3x3_s2_xla(x)


def _pool_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, tuple[int, ...]]]:
    views = _views(x)
    y = functools.reduce(jnp.maximum, views)
    winner = jnp.full(y.shape, _WINDOW * _WINDOW - 1, jnp.int8)
    for k in range(len(views) - 2, -1, -1):  # last assignment wins: the first maximum
        winner = jnp.where(views[k] == y, jnp.int8(k), winner)
    return y, (_materialised(winner), x.shape)


def _materialised(winner: jax.Array) -> jax.Array:
    """The winner unchanged, as the result of a reduction, so that XLA keeps it as a buffer.

    XLA's CPU compiler fuses elementwise producers into their consumers and removes
    optimisation barriers before fusing: left as computed, the 9 comparisons are fused into
    the gradient's fusion, which evaluates them again for each of the up to 4 windows
    covering an input element, and the padded input stays alive until then. A reduction is
    never fused into its consumer, and the sum of the winner and zeros over a new axis is
    the winner. In the MLB step at 112 the two stems' pooling gradients took 12.4 instead of
    26.7 ms (`jax.profiler`), the step 0.982-0.988 of its time and 562 instead of 566 MiB of
    temporaries (1418 instead of 1436 MiB at 224, the step 0.986; benchmarks/README.md).
    """
    return jnp.sum(jnp.stack([winner, jnp.zeros_like(winner)]), axis=0, dtype=winner.dtype)


def _shift(g: jax.Array, rows: int, cols: int) -> jax.Array:
    """Gradient g [N, Ho, Wo, C] at offset (rows, cols) of [N, Ho + 1, Wo + 1, C], zeros around."""
    return jnp.pad(g, ((0, 0), (rows, 1 - rows), (cols, 1 - cols), (0, 0)))


def _pool_bwd(residuals: tuple[jax.Array, tuple[int, ...]], dy: jax.Array) -> tuple[jax.Array]:
    winner, (n, h, w, c) = residuals
    ho, wo = dy.shape[1], dy.shape[2]
    zero = jnp.zeros((), dy.dtype)
    g = {
        (di, dj): jnp.where(winner == _WINDOW * di + dj, dy, zero)
        for di in range(_WINDOW)
        for dj in range(_WINDOW)
    }
    # Padded input row 2i + di: even rows get di = 0 from output i and di = 2 from output
    # i - 1, odd rows di = 1; the same for columns. One plane per (row, column) parity.
    parity = {0: ((0, 0), (2, 1)), 1: ((1, 0),)}  # parity -> (d, shift) pairs

    def plane(pr: int, pc: int) -> jax.Array:
        return sum(_shift(g[di, dj], si, sj) for di, si in parity[pr] for dj, sj in parity[pc])

    planes = jnp.stack(
        [jnp.stack([plane(pr, pc) for pc in (0, 1)], axis=3) for pr in (0, 1)], axis=2
    )  # [N, Ho + 1, 2, Wo + 1, 2, C]
    dxp = planes.reshape(n, 2 * (ho + 1), 2 * (wo + 1), c)
    return (dxp[:, 1 : 1 + h, 1 : 1 + w, :],)


max_pool_3x3_s2.defvjp(_pool_fwd, _pool_bwd)
