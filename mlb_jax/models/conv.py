"""2-D convolution with a per-layer choice of algorithm for each pass, for XLA's CPU backend.

XLA's CPU convolution is about 2x PyTorch/oneDNN on large 64/128-channel feature maps in the
forward and input-gradient passes, and slower still in two places (benchmarks/README.md has
the per-layer tables):

* the kernel gradient, which XLA computes as another convolution whose "kernel" is the output
  gradient (as large as the feature map) and whose output is the small k x k kernel: 3-9x
  PyTorch's time on ResNet-18's stem, first stage and 1x1 downsample layers;
* feature maps not larger than the kernel's reach (e.g. 2x2 maps under a padded 3x3 kernel,
  ResNet-18's last stage on 56x56 frames): 10-30x an equivalent matrix product.

:func:`conv_general_dilated` is a drop-in for ``jax.lax.conv_general_dilated``
(``nnx.Conv(conv_general_dilated=...)``) that picks, per layer and per pass, among XLA's
convolution and three other formulations of the same sums (together, "the plan"):

* Winograd F(4x4, 3x3) (`mlb_jax.models.winograd`) for every pass of the stride-1, padding-1
  3x3 layers that make up most of ResNet-18's work: 4x fewer multiply-adds than the direct
  convolution, as cheap transforms and 36 matrix products;
* im2col patches, one row per output position (built by strided slices)::

    patches[n, y, x, (i, j, c)] = xpad[n, s*y + i, s*x + j, c]
    forward:          y  = patches @ W.reshape(k*k*C_in, C_out)
    input gradient:   dx = im2col^T(dy @ W.reshape(k*k*C_in, C_out)^T)  (slices transposed)
    kernel gradient:  dW[i, j] = patches[.., (i, j, :)]^T @ dy, one product per tap
                      (`_tap_kernel_grad`; inputs of <= 4 channels, the stems: one product
                      per output row over that row's patches, built transposed,
                      `_stem_kernel_grad`)

* for stride-1 kernel gradients, no patches at all: each of the k*k taps is one product of
  contiguous row ranges of the flattened padded input and output gradient
  (`_shifted_kernel_grad`).

The choice is static, from the shapes and dtype (`plan`); the custom gradient saves only the
input and kernel (patches and transforms are rebuilt in the backward pass, in another form
than the forward pass's, so that XLA does not compute them once and keep them in between:
the patches kernel gradient takes one tap's slice at a time, and Winograd's kernel gradient
builds its input transform rows first, `winograd.conv3x3_kernel_grad`). The mathematics is
unchanged: same function, same gradients up to float32 rounding (~1e-5 relative for Winograd,
whose transform coefficients reach 8; summation order for the others). Only float32 runs the
plan's algorithms: their error analysis and measurements are float32's, so bfloat16, float16
and float64 convolutions go to ``lax.conv_general_dilated`` unchanged, as do calls other than
2-D NHWC/HWIO with explicit padding, no dilation and one feature group.

The choice per layer and pass is either measured on the machine that runs it
(`mlb_jax.models.conv_tune`, cached on disk per CPU model and generation, SIMD flags, threads
and versions) or read off `plan`'s fixed thresholds. Which one, or XLA's convolution alone, is
a recorded choice, the model config field ``conv`` (``config.model.conv``, see
:data:`CHOICES`), which the model passes to every convolution layer when it is built
(`conv_function`):

* ``auto`` (default): on the CPU backend, ``plan``, ``plan_wide`` or ``xla``, whichever made
  the fastest train step on this machine (the trainer times the three steps once per machine
  and step and caches the times, `mlb_jax.conv_auto`; `resolve`, which sees no step, answers
  ``plan``);
  XLA's convolution on GPUs and TPUs, whose convolution libraries are fast at every pass;
* ``tuned``: per layer and pass, the fastest of XLA's convolution and the algorithms above as
  measured on this machine, XLA's unless another is faster by more than the noise margin (so
  never slower than XLA's convolution beyond that noise); its extra memory is bounded by
  ``config.model.conv_max_scratch``;
* ``plan``: `plan`'s thresholds, measured once on a 2-core AVX2 AMD EPYC, without measuring
  (the environment value ``MLB_JAX_CONV=im2col`` of earlier versions);
* ``plan_wide``: `plan_wide`, the same thresholds but Winograd also for the wide, small maps of
  ResNet's last stage (512 channels on 4x4 to 9x6 at 112x112 inputs), which is faster on some
  CPUs and slower on others;
* ``xla``: ``lax.conv_general_dilated`` everywhere.

`resolve` says what a choice runs on a backend (``'tuned'``, ``'plan'``, ``'plan_wide'`` or
``'xla'``), for the run's records. The environment variable ``MLB_JAX_CONV`` is no longer read
(`resolve` warns if it is set), so that a run's numbers follow from its config alone.

Forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) is not available
through a planned convolution: its gradients are a ``jax.custom_vjp``, which JAX can only
reverse-differentiate. (A ``jax.custom_jvp`` would be transposed by JAX instead of running the
backward algorithms above; measured, that transposed Winograd was 1.2-2x slower in the kernel
gradient.) Where the call is reached eagerly or under ``vmap`` (``jax.jvp``, ``jax.jacfwd``,
``jax.hessian``), the ``TypeError`` names the fix, ``config.model.conv='xla'``; under an inner
``jax.jit`` JAX raises its own "can't apply forward-mode autodiff (jvp) to a custom_vjp
function" when it compiles, and the fix is the same.
"""

import functools
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mlb_jax.models import winograd

_NHWC = ("NHWC", "HWIO", "NHWC")
# Values of config.model.conv, and what `resolve` turns them into (all but 'auto').
CHOICES = ("auto", "tuned", "plan", "plan_wide", "xla")
TUNED = "tuned"
PLANNED = "plan"
PLANNED_WIDE = "plan_wide"
# The environment variable that chose the algorithm in earlier versions; no longer read.
LEGACY_ENV = "MLB_JAX_CONV"
# Algorithms a pass can use (`Plan`).
XLA = "xla"  # lax.conv_general_dilated and its autodiff
PATCHES = "patches"  # matrix products over im2col patches
SHIFTED = "shifted"  # kernel gradient only: products of row-shifted flat views (stride 1)
WINOGRAD = "winograd"  # F(4x4, 3x3), mlb_jax.models.winograd (3x3, stride 1, padding 1)
# Output maps with at most this many positions (8x8) use matrix products in every pass.
SMALL_MAP = 64
# Kernel gradients with this many output channels use the patches product (strided) or the
# shifted rows (stride 1, on maps of at least LARGE_MAP positions, 16x16); those of 1x1
# kernels always do.
LARGE_MAP = 256
WIDE_OUTPUT = 32
# Winograd needs enough channels for its 36 products to beat the transforms and enough map
# for its 4x4 tiles not to waste most of their work; its forward and input-gradient products
# lose to XLA's convolution above 256 channels (the [36, C, C] transformed kernel).
WINOGRAD_MIN_CHANNELS = 32
WINOGRAD_MIN_SIDE = 7
WINOGRAD_MAX_CHANNELS = 256
# `plan_wide`'s bound instead: Winograd in every pass from 4x4 maps up, at any channel count.
# The bounds above hold on the AVX2 EPYC they were measured on, where Winograd's forward pass
# of 16x9x6x512 took 2.4x XLA's time; on a 2-core Zen 4 EPYC (AVX-512 on 256-bit units) the
# MLB step at 112 took 0.85-0.93x the plan's time with Winograd in the 512-channel layers too
# (benchmarks/README.md). Which is faster is the CPU's, so 'auto' times both.
WIDE_WINOGRAD_MIN_SIDE = 4
# Inputs with at most this many channels (the stems') build the patches kernel gradient's
# patches transposed, one output row at a time (`_stem_kernel_grad`).
FEW_CHANNELS = 4
# Revision of the algorithms' implementations, part of the tuner's cache key
# (`mlb_jax.models.conv_tune.machine_key`): bump it when one changes speed, so that timings
# measured with the old code are not reused. 2: Winograd's kernel transforms as one product,
# and the stems' patches kernel gradient from transposed patches. 3: Winograd's kernel
# gradient rebuilds its input transform rows first (other scratch memory). 4: the patches
# kernel gradient of inputs with more than FEW_CHANNELS channels as one product per tap. 5: that
# of inputs with at most FEW_CHANNELS channels one output row at a time.
ALGORITHMS_REVISION = 5
# Iterations of `_stem_kernel_grad`'s loop (one output row each) unrolled into one loop body:
# alone, the video stem's kernel gradient at 112x112 took 20.2, 18.8 and 16.3 ms unrolled 1, 2
# and 4 times (78.7 against 117.4 ms at 224; the audio stem's 9.5 against 11.4 ms),
# benchmarks/README.md.
STEM_ROWS_UNROLL = 4


def _out_hw(x_shape, kernel_shape, strides, padding) -> tuple[int, int]:
    return tuple(
        (x_shape[1 + a] + sum(padding[a]) - kernel_shape[a]) // strides[a] + 1 for a in (0, 1)
    )


class Plan(NamedTuple):
    """Which algorithm (XLA, PATCHES, SHIFTED or WINOGRAD) each pass of one convolution uses."""

    forward: str
    input_grad: str
    kernel_grad: str


# XLA's convolution in every pass: such a call is forwarded to lax.conv_general_dilated as is.
ALL_XLA = Plan(XLA, XLA, XLA)


def plan(
    x_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    padding: Sequence[Sequence[int]],
    dtype: jnp.dtype | type | None = np.float32,
    *,
    wide_winograd: bool = False,
) -> Plan:
    """The per-pass algorithm choice for one convolution, from its static shapes and dtype.

    The thresholds are measured on a 2-core AVX2 CPU (benchmarks/README.md, per-layer tables),
    the strided kernel gradients' on a 2-core AVX-512 one: Winograd F(4x4, 3x3) in every pass
    of stride-1, padding-1 3x3 layers with >= 32 channels on maps of >= 7x7 (forward and input
    gradient only up to 256 channels); otherwise small output maps are faster as matrix
    products in every pass, and the kernel gradient is faster as a patches product for 1x1
    kernels and for strided layers with enough output channels, as a shifted-rows product for
    stride-1 layers on large maps with enough output channels. Any dtype but float32 gets
    `ALL_XLA`: the algorithms' rounding (Winograd's transforms reach 8) and their speed were
    established for float32 only.

    Args:
        x_shape: [N, H, W, C_in].
        kernel_shape: [kh, kw, C_in, C_out].
        strides: (sh, sw).
        padding: ((top, bottom), (left, right)).
        dtype: the dtype of both input and kernel; None when they differ (`ALL_XLA`).
        wide_winograd: Winograd in every pass of stride-1, padding-1 3x3 layers with >= 32
            channels on maps of >= 4x4, whatever their width (`plan_wide`,
            ``config.model.conv='plan_wide'``).

    Returns:
        The plan.
    """
    if dtype is None or jnp.dtype(dtype) != jnp.float32:
        return ALL_XLA
    out_hw = _out_hw(x_shape, kernel_shape, strides, padding)
    channels = kernel_shape[2:]
    min_side, max_channels = (
        (WIDE_WINOGRAD_MIN_SIDE, math.inf)
        if wide_winograd
        else (WINOGRAD_MIN_SIDE, WINOGRAD_MAX_CHANNELS)
    )
    fits_winograd = (
        tuple(kernel_shape[:2]) == (3, 3)
        and tuple(strides) == (1, 1)
        and tuple(map(tuple, padding)) == ((1, 1), (1, 1))
        and min(channels) >= WINOGRAD_MIN_CHANNELS
        and min(out_hw) >= min_side
    )
    small = out_hw[0] * out_hw[1] <= SMALL_MAP
    if fits_winograd and max(channels) <= max_channels:
        forward = WINOGRAD
    else:
        forward = PATCHES if small else XLA
    one_by_one = tuple(kernel_shape[:2]) == (1, 1)
    stride_one = tuple(strides) == (1, 1)
    wide = kernel_shape[3] >= WIDE_OUTPUT
    if fits_winograd:
        kernel_grad = WINOGRAD
    elif small or (not stride_one and (one_by_one or wide)):
        # Strided mid-sized maps too (e.g. 28x28 -> 14x14, 64 -> 128 channels): XLA's kernel
        # gradient transposes its input to channels-major first, a copy that inside the
        # step also recomputes the batch norm before it, 67 of the 83 ms the layer's kernel
        # gradient took in the MLB step at 112 (benchmarks/README.md).
        kernel_grad = PATCHES
    elif one_by_one or (wide and out_hw[0] * out_hw[1] >= LARGE_MAP):
        kernel_grad = SHIFTED
    else:
        kernel_grad = XLA
    return Plan(forward=forward, input_grad=forward, kernel_grad=kernel_grad)


def plan_wide(
    x_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    padding: Sequence[Sequence[int]],
    dtype: jnp.dtype | type | None = np.float32,
) -> Plan:
    """`plan` with Winograd for wide layers on small maps too (``wide_winograd=True``).

    Example: the 512-channel 3x3 layers of ResNet-18's last stage on 4x4 maps get
    ``Plan('winograd', 'winograd', 'winograd')`` here and the patches product from `plan`.
    """
    return plan(x_shape, kernel_shape, strides, padding, dtype, wide_winograd=True)


def resolve(choice: str, backend: str | None = None) -> str:
    """What the convolution choice ``config.model.conv`` runs on a backend.

    Example: ``resolve('auto', 'cpu') == 'plan'``, ``resolve('auto', 'gpu') == 'xla'``.
    This is 'auto' without timing: the trainer (`mlb_jax.trainer.setup`) times the train
    steps of the plan, the wide plan and XLA's convolution on the CPU and builds the fastest
    (`mlb_jax.conv_auto`), and records ``{"conv": choice, "conv_resolved": what it built}``.

    Args:
        choice: one of :data:`CHOICES`: ``'auto'`` (``'plan'`` on the CPU backend untimed,
            XLA's convolution elsewhere), ``'tuned'``, ``'plan'``, ``'plan_wide'`` or ``'xla'``
            on any backend.
        backend: a JAX backend name (``'cpu'``, ``'gpu'``, ``'tpu'``, ...); None means
            ``jax.default_backend()``, the backend the model's arrays live on.

    Returns:
        ``'tuned'`` (per layer, what `mlb_jax.models.conv_tune` measured fastest),
        ``'plan'`` (`conv_general_dilated`, following `plan` per layer), ``'plan_wide'``
        (the same following `plan_wide`) or ``'xla'`` (``lax.conv_general_dilated``
        everywhere).

    Raises:
        ValueError: naming ``config.model.conv`` and the allowed values, for any other choice.
    """
    if choice not in CHOICES:
        hint = (
            f" ('im2col', the old {LEGACY_ENV} value, is now 'plan')" if choice == "im2col" else ""
        )
        raise ValueError(
            f"config.model.conv={choice!r} is not a convolution choice: use 'auto' (the fastest "
            f"step of 'plan', 'plan_wide' and 'xla' on the CPU, XLA's convolution elsewhere), "
            f"'plan', 'plan_wide', 'tuned' or 'xla'{hint}"
        )
    if LEGACY_ENV in os.environ:
        # Warn rather than obey: a choice that changes numbers must come from the config,
        # which is recorded with the run.
        warnings.warn(
            f"{LEGACY_ENV}={os.environ[LEGACY_ENV]!r} is ignored: the convolution algorithm is "
            f"config.model.conv (now {choice!r}); pass "
            "--config.model.conv=xla|plan|plan_wide|tuned|auto",
            stacklevel=2,
        )
    if choice == "auto":
        # Not TUNED: on the CPUs measured, the fixed plan's train step was the faster
        # (README, "Speed"): timed alone, a layer's passes favour XLA's convolution more than
        # the step does.
        return PLANNED if (backend or jax.default_backend()) == "cpu" else XLA
    return choice


def conv_function(
    choice: str, backend: str | None = None, max_scratch: float = math.inf
) -> Callable[..., jax.Array]:
    """The ``conv_general_dilated`` argument of ``nnx.Conv`` for a convolution choice.

    Args:
        choice: ``config.model.conv``, see `resolve`.
        backend: see `resolve`.
        max_scratch: ``config.model.conv_max_scratch``, the memory bound of ``'tuned'``
            (`mlb_jax.models.conv_tune.choose`); unused by the other choices.

    Returns:
        ``'tuned'``: `mlb_jax.models.conv_tune.conv_function` (one object per bound);
        ``'plan'``: `conv_general_dilated`; ``'plan_wide'``: `conv_general_dilated_wide`;
        ``'xla'``: ``jax.lax.conv_general_dilated``.

    Raises:
        ValueError: see `resolve`; naming ``config.model.conv_max_scratch`` when negative.
    """
    resolved = resolve(choice, backend)
    if resolved == TUNED:
        if not max_scratch >= 0:
            raise ValueError(
                f"config.model.conv_max_scratch={max_scratch!r} must be >= 0 (extra scratch "
                "memory over XLA's, in multiples of a layer's input; inf = no bound)"
            )
        from mlb_jax.models import conv_tune  # imports this module

        return conv_tune.conv_function(float(max_scratch))
    return {PLANNED: conv_general_dilated, PLANNED_WIDE: conv_general_dilated_wide}.get(
        resolved, lax.conv_general_dilated
    )


def _tap_views(xp: jax.Array, axes: tuple[int, int], kernel_hw, strides) -> list[jax.Array]:
    """The kh * kw strided views ``xp[.., s*y + i, .., s*x + j, ..]`` of a padded input.

    Args:
        xp: the zero-padded input; its spatial axes are ``axes`` (row, column).
        axes: the positions of the row and column axes in ``xp``.
        kernel_hw: (kh, kw).
        strides: (sh, sw).

    Returns:
        kh * kw arrays shaped like ``xp`` with the spatial axes cut to (H', W'), taps (i, j)
        in row-major order.
    """
    views = []
    for i in range(kernel_hw[0]):
        for j in range(kernel_hw[1]):
            start, limit, step = [0] * xp.ndim, list(xp.shape), [1] * xp.ndim
            for axis, tap, size, stride in zip(axes, (i, j), kernel_hw, strides, strict=True):
                out = (xp.shape[axis] - size) // stride + 1
                start[axis], limit[axis], step[axis] = tap, tap + stride * (out - 1) + 1, stride
            views.append(lax.slice(xp, start, limit, step))
    return views


def im2col(x: jax.Array, kernel_hw: tuple[int, int], strides, padding) -> jax.Array:
    """Patches of a convolution's input, one row per output position.

    Args:
        x: [N, H, W, C] input.
        kernel_hw: (kh, kw).
        strides: (sh, sw).
        padding: ((top, bottom), (left, right)) zero padding.

    Returns:
        [N, H', W', kh * kw * C], the last axis ordered (i, j, c) like an HWIO kernel's
        leading axes, so that ``patches @ kernel.reshape(-1, C_out)`` is the convolution.
    """
    x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    cols = _tap_views(x, (1, 2), kernel_hw, strides)
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def im2col_transposed(x: jax.Array, kernel_hw: tuple[int, int], strides, padding) -> jax.Array:
    """`im2col`'s patches with positions minor: one row per kernel tap and input channel.

    For inputs with few channels (image and spectrogram stems): `im2col` concatenates
    pieces of C floats along its last axis and the kernel gradient's product then needs the
    patches transposed; here each row is one strided slice of a channel-major copy of the
    input, written whole, and ``patches_t @ dy`` is the product as the matrix library takes
    it. Measured on the stems' kernel gradients (benchmarks/README.md): 37 against 45 ms
    (video, 3 channels) and 12 against 25 ms (audio, 1 channel). Arguments as `im2col`.

    Returns:
        [kh * kw * C, N * H' * W'], rows ordered (i, j, c) like an HWIO kernel's leading axes.
    """
    x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0))).transpose(3, 0, 1, 2)
    rows = _tap_views(x, (2, 3), kernel_hw, strides)  # each [C, N, H', W']
    return jnp.stack(rows).reshape(len(rows) * x.shape[0], -1)


def _xla_conv(x: jax.Array, kernel: jax.Array, strides, padding) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC)


def _matmul_conv(x: jax.Array, kernel: jax.Array, strides, padding) -> jax.Array:
    patches = im2col(x, kernel.shape[:2], strides, padding)
    return patches @ kernel.reshape(-1, kernel.shape[3])


def _shifted_kernel_grad(x: jax.Array, dy: jax.Array, kernel_shape, padding) -> jax.Array:
    """Kernel gradient of a stride-1 convolution as k*k products of row-shifted flat views.

    With the padded input flattened to rows [N*Hp*Wp, C] and dy placed at the top-left of a
    padded-size map and flattened the same way, output position (n, y, x) and input position
    (n, y+i, x+j) are exactly i*Wp + j rows apart, so tap (i, j) of the kernel gradient is one
    product of contiguous row ranges: no patches are built.
    """
    kh, kw, c, co = kernel_shape
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    n, hp, wp, _ = xp.shape
    oh, ow = dy.shape[1:3]
    rows = n * hp * wp
    length = rows - ((kh - 1) * wp + kw - 1)
    xf = xp.reshape(rows, c)
    dyt = jnp.pad(dy, ((0, 0), (0, hp - oh), (0, wp - ow), (0, 0))).reshape(rows, co)[:length].T
    taps = [
        dyt @ lax.slice_in_dim(xf, i * wp + j, i * wp + j + length)
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.stack(taps).reshape(kh, kw, co, c).transpose(0, 1, 3, 2)


def _tap_kernel_grad(x: jax.Array, dy: jax.Array, kernel_shape, strides, padding) -> jax.Array:
    """The patches kernel gradient one kernel tap at a time: dW[i, j] = view_ij(x)^T @ dy.

    The same sums as ``im2col(x)^T @ dy``, split by the patches' tap (i, j): each tap's
    [N * H' * W', C_in] strided view is one product with the flattened output gradient, and
    the patches are never concatenated. A different computation from the forward pass's
    `im2col`, so XLA does not keep that one through the backward pass for this product
    (small-map layers run both passes on patches): in the MLB step at 112 the temporaries
    fall from 775 to 678 MiB and the step took 0.987x the time (same-process A/B, 16
    repetitions; 0.973x at 224, benchmarks/README.md).

    Args:
        x: [N, H, W, C_in], the forward input.
        dy: [N, H', W', C_out], the output's gradient.
        kernel_shape: (kh, kw, C_in, C_out).
        strides: (sh, sw).
        padding: ((top, bottom), (left, right)).

    Returns:
        dkernel, ``kernel_shape``.
    """
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    dy_rows = dy.reshape(-1, dy.shape[3])
    taps = [
        view.reshape(-1, view.shape[3]).T @ dy_rows
        for view in _tap_views(xp, (1, 2), kernel_shape[:2], strides)
    ]
    return jnp.stack(taps).reshape(kernel_shape)


def _stem_kernel_grad(x: jax.Array, dy: jax.Array, kernel_shape, strides, padding) -> jax.Array:
    """The patches kernel gradient of a few-channel input, one output row at a time.

    ``im2col_transposed(x) @ dy`` summed over output rows y: each row's patches are
    [kh * kw * C_in, N * W'] (built from the kh input rows under it) and stay in cache for their
    product with that row of dy, where all the patches at once are the largest buffer of the
    step (88 MB for the video stem at 112x112 and 16 clips of 3 frames, 354 MB at 224x224). A
    loop over rows, not over images, so that a batch sharded over devices stays sharded. In
    the MLB step the temporaries fall from 678 to 566 MiB at 112 and from 1909 to 1436 MiB at
    224, and the step took 0.994x and 0.954x the time (same-process A/B, benchmarks/README.md).
    Arguments and result as `_tap_kernel_grad`'s.
    """
    kh, kw, c_in, c_out = kernel_shape
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))

    def add_row(total: jax.Array, y: jax.Array) -> tuple[jax.Array, None]:
        x_rows = lax.dynamic_slice_in_dim(xp, y * strides[0], kh, axis=1)
        dy_row = lax.dynamic_slice_in_dim(dy, y, 1, axis=1)
        patches_t = im2col_transposed(x_rows, (kh, kw), strides, ((0, 0), (0, 0)))
        return total + patches_t @ dy_row.reshape(-1, c_out), None

    total, _ = lax.scan(
        add_row,
        jnp.zeros((kh * kw * c_in, c_out), dy.dtype),
        jnp.arange(dy.shape[1]),
        unroll=STEM_ROWS_UNROLL,
    )
    return total.reshape(kernel_shape)


def candidates(
    x_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    padding: Sequence[Sequence[int]],
) -> Plan:
    """Every algorithm each pass of one float32 convolution can run (tuples, XLA first).

    Winograd needs a 3x3 kernel, stride 1 and padding 1; the shifted-rows kernel gradient
    needs stride 1; XLA's convolution and the patches products run any call `plan` takes.
    `mlb_jax.models.conv_tune` measures these and keeps the fastest.

    Args:
        x_shape: [N, H, W, C_in].
        kernel_shape: [kh, kw, C_in, C_out].
        strides: (sh, sw).
        padding: ((top, bottom), (left, right)).

    Returns:
        A `Plan` whose fields are tuples of algorithm names.
    """
    del x_shape  # every algorithm runs every map size
    stride_one = tuple(strides) == (1, 1)
    winograd_fits = (
        tuple(kernel_shape[:2]) == (3, 3)
        and stride_one
        and tuple(map(tuple, padding)) == ((1, 1), (1, 1))
    )
    both = (XLA, PATCHES) + ((WINOGRAD,) if winograd_fits else ())
    kernel = (XLA, PATCHES) + ((SHIFTED,) if stride_one else ()) + both[2:]
    return Plan(forward=both, input_grad=both, kernel_grad=kernel)


def forward(algorithm: str, x: jax.Array, kernel: jax.Array, strides, padding) -> jax.Array:
    """The convolution computed by one algorithm (XLA, PATCHES or WINOGRAD).

    Args:
        algorithm: one of `candidates(...).forward`.
        x: [N, H, W, C_in] float32.
        kernel: [kh, kw, C_in, C_out] float32.
        strides: (sh, sw).
        padding: ((top, bottom), (left, right)).

    Returns:
        [N, H', W', C_out].
    """
    if algorithm == WINOGRAD:
        return winograd.conv3x3(x, kernel)
    return (_matmul_conv if algorithm == PATCHES else _xla_conv)(x, kernel, strides, padding)


def input_grad(
    algorithm: str, x: jax.Array, kernel: jax.Array, dy: jax.Array, strides, padding
) -> jax.Array:
    """The convolution's gradient with respect to its input, by one algorithm.

    Args:
        algorithm: one of `candidates(...).input_grad` (XLA, PATCHES or WINOGRAD).
        x: [N, H, W, C_in], the forward input (only its shape is used).
        kernel: [kh, kw, C_in, C_out].
        dy: [N, H', W', C_out], the output's gradient.
        strides: (sh, sw).
        padding: ((top, bottom), (left, right)).

    Returns:
        dx, [N, H, W, C_in].
    """
    if algorithm == WINOGRAD:
        return winograd.conv3x3_input_grad(dy, kernel)
    if algorithm == PATCHES:
        _, patches_vjp = jax.vjp(lambda x_: im2col(x_, kernel.shape[:2], strides, padding), x)
        return patches_vjp(dy @ kernel.reshape(-1, kernel.shape[3]).T)[0]
    _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, kernel, strides, padding), x)
    return input_vjp(dy)[0]


def kernel_grad(
    algorithm: str, x: jax.Array, kernel: jax.Array, dy: jax.Array, strides, padding
) -> jax.Array:
    """The convolution's gradient with respect to its kernel, by one algorithm.

    Args:
        algorithm: one of `candidates(...).kernel_grad` (XLA, PATCHES, SHIFTED or WINOGRAD).
        x: [N, H, W, C_in], the forward input.
        kernel: [kh, kw, C_in, C_out] (only its shape is used).
        dy: [N, H', W', C_out], the output's gradient.
        strides: (sh, sw).
        padding: ((top, bottom), (left, right)).

    Returns:
        dkernel, [kh, kw, C_in, C_out].
    """
    if algorithm == WINOGRAD:
        return winograd.conv3x3_kernel_grad(x, dy)
    if algorithm == SHIFTED:
        return _shifted_kernel_grad(x, dy, kernel.shape, padding)
    if algorithm == PATCHES and x.shape[3] <= FEW_CHANNELS:
        return _stem_kernel_grad(x, dy, kernel.shape, strides, padding)
    if algorithm == PATCHES:
        return _tap_kernel_grad(x, dy, kernel.shape, strides, padding)
    _, kernel_vjp = jax.vjp(lambda k_: _xla_conv(x, k_, strides, padding), kernel)
    return kernel_vjp(dy)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x: jax.Array, kernel: jax.Array, strides, padding, chosen: Plan) -> jax.Array:
    return forward(chosen.forward, x, kernel, strides, padding)


def _conv_fwd(x, kernel, strides, padding, chosen):
    return _conv(x, kernel, strides, padding, chosen), (x, kernel)


def _conv_bwd(strides, padding, chosen, residuals, dy):
    x, kernel = residuals
    return (
        input_grad(chosen.input_grad, x, kernel, dy, strides, padding),
        kernel_grad(chosen.kernel_grad, x, kernel, dy, strides, padding),
    )


_conv.defvjp(_conv_fwd, _conv_bwd)


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
    return tuple(dimension_numbers) == _NHWC


_FORWARD_MODE_HELP = (
    "forward-mode differentiation (jax.jvp, jax.jacfwd, jax.hessian) does not pass through "
    "the CPU convolution plan, whose gradients are a jax.custom_vjp: build the model with "
    "config.model.conv='xla' (--config.model.conv=xla) to differentiate it forward"
)


def apply_planner(
    planner: Callable[..., Plan],
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    out_sharding=None,
) -> jax.Array:
    """``lax.conv_general_dilated`` whose plannable calls run the algorithms ``planner`` picks.

    Args:
        planner: ``(x_shape, kernel_shape, strides, padding, dtype) -> Plan``, called at trace
            time with static values: `plan` (thresholds) or a `mlb_jax.models.conv_tune`
            tuner (measured on this machine).
        lhs: input, as ``jax.lax.conv_general_dilated``.
        rhs: kernel, as ``jax.lax.conv_general_dilated``.
        window_strides: as ``jax.lax.conv_general_dilated``.
        padding: as ``jax.lax.conv_general_dilated``.
        lhs_dilation: as ``jax.lax.conv_general_dilated``.
        rhs_dilation: as ``jax.lax.conv_general_dilated``.
        dimension_numbers: as ``jax.lax.conv_general_dilated``.
        feature_group_count: as ``jax.lax.conv_general_dilated``.
        batch_group_count: as ``jax.lax.conv_general_dilated``.
        precision: as ``jax.lax.conv_general_dilated``.
        preferred_element_type: as ``jax.lax.conv_general_dilated``.
        out_sharding: as ``jax.lax.conv_general_dilated``.

    Returns:
        The convolution, as ``jax.lax.conv_general_dilated``.

    Raises:
        TypeError: see `conv_general_dilated`.
    """
    planned = (
        lhs.ndim == 4
        and _is_nhwc(dimension_numbers)
        and not isinstance(padding, str)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and batch_group_count == 1
        and precision is None
        and preferred_element_type is None
        and out_sharding is None
    )
    chosen = ALL_XLA
    if planned:
        padding = tuple(tuple(int(p) for p in pair) for pair in padding)
        window_strides = tuple(int(s) for s in window_strides)
        dtype = lhs.dtype if lhs.dtype == rhs.dtype else None
        if dtype is not None and jnp.dtype(dtype) == jnp.float32:
            chosen = planner(lhs.shape, rhs.shape, window_strides, padding, dtype)
    if chosen == ALL_XLA:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
            out_sharding=out_sharding,
        )
    try:
        return _conv(lhs, rhs, window_strides, padding, chosen)
    except TypeError as error:
        # JAX's own message ("can't apply forward-mode autodiff (jvp) to a custom_vjp
        # function") does not say which function or what to do instead.
        if "forward-mode" in str(error):
            raise TypeError(_FORWARD_MODE_HELP) from error
        raise


# `lax.conv_general_dilated` with `plan`'s per-layer, per-pass algorithms (see module doc):
# 2-D NHWC/HWIO float32 convolutions with explicit padding pairs, no dilation, one group,
# default precision and no output sharding follow `plan`; every other call, and every call
# whose plan is `ALL_XLA`, is `lax.conv_general_dilated` unchanged (the same operation).
# Raises TypeError naming config.model.conv='xla' when a planned call is differentiated in
# forward mode (reached eagerly or under vmap; see the module doc).
conv_general_dilated = functools.partial(apply_planner, plan)
# The same under `plan_wide`: ``config.model.conv='plan_wide'``.
conv_general_dilated_wide = functools.partial(apply_planner, plan_wide)
