"""Winograd F(4x4, 3x3) convolution of stride-1, 3x3 layers with one pixel of zero padding.

The minimal-filtering algorithm of Lavin & Gray (2016, "Fast Algorithms for Convolutional
Neural Networks") computes each 4x4 tile of output from a 6x6 tile of input with 36
element-wise products instead of 144: in matrix form, per channel pair,

    Y = A^T [ (G g G^T) * (B^T d B) ] A

and summed over input channels the element-wise product becomes 36 matrix products
``V[t] @ U[t]`` (t over the 6x6 transformed positions) of shape [tiles, C_in] x [C_in, C_out].
That is 4x fewer multiply-adds than the direct convolution, which on a CPU whose convolution
library is slow on large 64/128-channel maps (XLA's on 2 AVX2 cores: ~2x oneDNN) turns the
forward and input-gradient passes into cheap transforms and well-shaped matrix products.

All three passes of the convolution are Winograd-shaped:

    forward          y  = output_transform(V(x) @ U(k))
    input gradient   dx = the same convolution of dy with the kernel rotated 180 degrees and
                          its channel axes swapped (stride 1, padding 1: sizes match)
    kernel gradient  dk = G^T [ V(x)^T @ output_transform^T(dy) ] G

The transforms are linear combinations of strided views with the constant coefficients below,
written as sums so that XLA fuses each stage into one loop. Each 2-D transform is two
separable 1-D stages, each stage one stacked array, which XLA's CPU compiler keeps apart
rather than fusing 36 outputs that each re-read the input (1.8-1.9x slower, as measured when
the stages were first separated, with optimisation barriers between them). With jax 0.10.2
the barriers changed nothing: the same compiled transform, and the MLB step without them
0.986 and 0.994 of its time at 112 and 1.000 at 224 (same-process A/B, benchmarks/README.md),
so there are none. Float32 rounding differs from the direct convolution by ~1e-5 relative
(the transforms' coefficients reach 8); the function is the same.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

TILE = 4  # output positions per tile side
SPAN = TILE + 2  # input positions per tile side (3x3 kernel)

# Lavin & Gray's F(4, 3) matrices; B^T [6, 6], G [6, 3], A^T [4, 6].
_BT = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    np.float32,
)
_G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    np.float32,
)
_AT = np.array(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    np.float32,
)
# G g G^T of every channel pair as one product: _GG[(a, b), (i, j)] = G[a, i] G[b, j], so
# U[36, C_in * C_out] = _GG @ g[9, C_in * C_out]. A two-sided einsum lets XLA contract the
# 3-long axes one at a time in a [C_in * C_out * 3, 3] layout, which measured 20-30x slower
# (2 GB/s; 5.7 ms vs 0.2 ms for a 256x256 kernel, 220 ms of a 112 train step's thread time).
_GG = np.kron(_G, _G)


def _combine(matrix: np.ndarray, parts: list[jax.Array]) -> list[jax.Array]:
    """``[sum_j matrix[i, j] * parts[j] for i]`` with the zero terms left out."""
    out = []
    for row in matrix:
        terms = []
        for coef, part in zip(row.tolist(), parts, strict=True):
            if coef == 1:
                terms.append(part)
            elif coef == -1:
                terms.append(-part)
            elif coef != 0:
                terms.append(part * coef)
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        out.append(total)
    return out


def _windows(x: jax.Array, axis: int, tiles: int) -> list[jax.Array]:
    """The SPAN views ``x[..., TILE*t + i, ...]`` (t < tiles) of an axis of size TILE*(tiles+1).

    Splitting the axis into (tiles + 1, TILE) makes every view a contiguous slice.
    """
    shape = x.shape
    split = x.reshape((*shape[:axis], tiles + 1, TILE, *shape[axis + 1 :]))
    return [
        lax.index_in_dim(
            lax.slice_in_dim(split, i // TILE, i // TILE + tiles, axis=axis),
            i % TILE,
            axis=axis + 1,
            keepdims=False,
        )
        for i in range(SPAN)
    ]


def _tiles(h: int, w: int) -> tuple[int, int]:
    return -(-h // TILE), -(-w // TILE)


def input_transform(x: jax.Array, rows_first: bool = False) -> jax.Array:
    """``B^T d B`` of every 6x6 input tile of a padding-1 convolution.

    Args:
        x: [N, H, W, C] (unpadded).
        rows_first: combine along rows first, then columns (the default is columns first).
            The same transform up to float32 rounding, and to XLA a different computation:
            the kernel gradient's V(x) uses it so that XLA does not share it with the
            forward pass's and keep it alive in between (see `conv3x3_kernel_grad`).

    Returns:
        [36, N * ceil(H/4) * ceil(W/4), C]; row-major over the 6x6 transformed positions.
    """
    n, h, w, c = x.shape
    th, tw = _tiles(h, w)
    xp = jnp.pad(x, ((0, 0), (1, TILE * (th + 1) - h - 1), (1, TILE * (tw + 1) - w - 1), (0, 0)))
    if rows_first:
        rows = jnp.stack(_combine(_BT, _windows(xp, 1, th)))
        v = jnp.stack(_combine(_BT, _windows(rows, 3, tw)), axis=1)  # [6, 6, N, th, tw, C]
    else:
        cols = jnp.stack(_combine(_BT, _windows(xp, 2, tw)))
        v = jnp.stack(_combine(_BT, _windows(cols, 2, th)))  # [6 rows, 6 cols, N, th, tw, C]
    return v.reshape(SPAN * SPAN, n * th * tw, c)


def kernel_transform(kernel: jax.Array, rotate: bool = False) -> jax.Array:
    """``G g G^T`` of a [3, 3, C_in, C_out] kernel, as [36, C_in, C_out].

    Args:
        kernel: [3, 3, C_in, C_out].
        rotate: transform the kernel rotated by 180 degrees (``kernel[::-1, ::-1]``, the
            input gradient's), by reversing the taps in the transform matrix instead.

    Returns:
        [36, C_in, C_out].
    """
    matrix = _GG[:, ::-1] if rotate else _GG
    u = jnp.asarray(matrix) @ kernel.reshape(9, -1)
    return u.reshape(SPAN * SPAN, *kernel.shape[2:])


def output_transform(m: jax.Array, n: int, h: int, w: int) -> jax.Array:
    """``A^T m A`` of every tile, assembled into the output map.

    Args:
        m: [36, N * ceil(H/4) * ceil(W/4), C_out] products in the transformed domain.
        n: output batch size N.
        h: output map height H.
        w: output map width W.

    Returns:
        [N, H, W, C_out].
    """
    th, tw = _tiles(h, w)
    co = m.shape[-1]
    m = m.reshape(SPAN, SPAN, n, th, tw, co)
    rows = jnp.stack(_combine(_AT, list(m)))  # [4, 6, N, th, tw, Co]
    cols = [jnp.stack(_combine(_AT, list(r)), axis=3) for r in rows]  # [N, th, tw, 4, Co]
    y = jnp.stack(cols, axis=2)  # [N, th, 4 (rows), tw, 4 (cols), Co]
    return y.reshape(n, TILE * th, TILE * tw, co)[:, :h, :w]


def output_transform_transpose(dy: jax.Array) -> jax.Array:
    """The adjoint of `output_transform`: ``A g A^T`` of every 4x4 tile of dy.

    Args:
        dy: [N, H, W, C_out].

    Returns:
        [36, N * ceil(H/4) * ceil(W/4), C_out].
    """
    n, h, w, co = dy.shape
    th, tw = _tiles(h, w)
    dy = jnp.pad(dy, ((0, 0), (0, TILE * th - h), (0, TILE * tw - w), (0, 0)))
    dy = dy.reshape(n, th, TILE, tw, TILE, co)
    a = _AT.T
    cols = _combine(a, [dy[:, :, :, :, q] for q in range(TILE)])  # 6 x [N, th, 4, tw, Co]
    cols = jnp.stack(cols)  # [6 cols, N, th, 4, tw, Co]
    rows = _combine(a, [cols[:, :, :, p] for p in range(TILE)])  # 6 x [6 cols, N, th, tw, Co]
    return jnp.stack(rows).reshape(SPAN * SPAN, n * th * tw, co)


def _batched_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    return lax.dot_general(a, b, (((2,), (1,)), ((0,), (0,))))


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 3x3 convolution with padding ((1, 1), (1, 1)), NHWC / HWIO.

    Args:
        x: [N, H, W, C_in].
        kernel: [3, 3, C_in, C_out].

    Returns:
        [N, H, W, C_out], equal to ``lax.conv_general_dilated`` up to float32 rounding.
    """
    n, h, w, _ = x.shape
    return output_transform(_batched_matmul(input_transform(x), kernel_transform(kernel)), n, h, w)


def conv3x3_input_grad(dy: jax.Array, kernel: jax.Array) -> jax.Array:
    """Input gradient of `conv3x3`: the same convolution of dy with the rotated kernel.

    Args:
        dy: [N, H, W, C_out].
        kernel: [3, 3, C_in, C_out].

    Returns:
        [N, H, W, C_in].
    """
    n, h, w, _ = dy.shape
    # V(dy) [36, tiles, C_out] times the rotated transform's transpose, contracting C_out:
    # the kernel's channel axes are swapped by the product, not by a copy.
    u = kernel_transform(kernel, rotate=True)
    m = lax.dot_general(input_transform(dy), u, (((2,), (2,)), ((0,), (0,))))
    return output_transform(m, n, h, w)


def conv3x3_kernel_grad(x: jax.Array, dy: jax.Array) -> jax.Array:
    """Kernel gradient of `conv3x3`: ``G^T [sum over tiles V^T dM] G``.

    Args:
        x: [N, H, W, C_in].
        dy: [N, H, W, C_out].

    Returns:
        [3, 3, C_in, C_out].
    """
    # Rebuilt rows first: XLA would otherwise compute the forward pass's V(x) once for both and
    # keep it through the backward pass (2.25x each Winograd layer's input; at 112x112 the
    # MLB step's temporaries 1100 MiB against 775 MiB, benchmarks/README.md).
    v = input_transform(x, rows_first=True)
    dm = output_transform_transpose(dy)
    du = lax.dot_general(v, dm, (((1,), (1,)), ((0,), (0,))))  # [36, C_in, C_out]
    # G^T du G per channel pair, as one product with _GG's transpose (see _GG).
    dk = jnp.asarray(_GG.T) @ du.reshape(SPAN * SPAN, -1)
    return dk.reshape(3, 3, *du.shape[1:])
