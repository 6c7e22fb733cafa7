"""ResNet-18 backbone and the audio and video encoders built on it.

Layout is NHWC throughout. The backbone is torchvision's BasicBlock ResNet-18 without the final
average pool and fully connected layer, the encoder that the MLB (kkontras/MLB), OGM-GE and
BalanceBenchmark reference repositories all use, with every detail that changes numbers kept as
in their code: explicit (symmetric) padding instead of Flax ``"SAME"`` (which pads
asymmetrically and moves the sampling grid), a max-pool padded with -inf, BatchNorm momentum
0.9 (PyTorch 0.1) and epsilon 1e-5, and the MLB / BalanceBenchmark initialisation:

* conv kernels: Kaiming-normal, fan_out, ReLU gain, i.e. N(0, 2 / (kh * kw * C_out)), untruncated
  as in ``torch.nn.init.kaiming_normal_``; convolutions have no bias;
* BatchNorm: scale (gamma) ~ N(1, 0.02), bias (beta) = 0; no zero-init of residual branches.

The convolution algorithm is the ``conv`` argument (``config.model.conv``: ``auto``,
``tuned``, ``plan``, ``plan_wide`` or ``xla``; see :mod:`mlb_jax.models.conv`), resolved once
when the network is built and handed to every layer, so that the choice is the config's and
not something read while tracing.

Encoders validate their input and raise one ``ValueError`` naming the modality and the expected
shape, because a wrongly shaped array would otherwise fail deep inside a convolution.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mlb_jax.models.conv import XLA, conv_function, resolve
from mlb_jax.models.pooling import max_pool_3x3_s2, max_pool_3x3_s2_xla

# PyTorch BatchNorm momentum 0.1 weights the new batch; Flax's momentum weights the running value.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
STAGE_WIDTHS = (1, 2, 4, 8)  # multiples of base_width: 64-128-256-512 for base_width=64
BLOCKS_PER_STAGE = 2

_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _bn_scale_init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    """Draws BatchNorm gamma ~ N(1, 0.02) as in the MLB and BalanceBenchmark ResNets."""
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class _RunningStatistic(nnx.BatchStat):
    """A BatchNorm running statistic whose traced whole update ``v[...] = x`` skips a slow check.

    Before replacing a variable's whole value, flax's ``Variable.__setitem__`` compares the old
    and new values' shardings with ``getattr(value, 'sharding', None)``. On a tracer that read
    raises, after building an error message that walks every equation traced so far to find
    the value's origin, so the cost grows with what was traced before it: tracing the
    full-width 112x112 benchmark step a second time in a process took 1.65-1.74 s with those
    reads and 1.12-1.14 s without, and they were 12% of the profile of the suite's longest
    test (tiny models).
    Both shardings read None there, and flax replaces the value whole; this does the same
    without asking. Anything else, concrete arrays included, goes to flax.
    """

    def __setitem__(self, key, value) -> None:
        current = self.get_value()
        if (
            key is Ellipsis
            and isinstance(value, jax.core.Tracer)
            and isinstance(current, jax.core.Tracer)
            and value.shape == current.shape
            and value.dtype == current.dtype
        ):
            self.set_value(value)
        else:
            super().__setitem__(key, value)


class _BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` with :class:`_RunningStatistic` running statistics (faster to trace)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.mean = _RunningStatistic(self.mean.get_value())
        self.var = _RunningStatistic(self.var.get_value())


class ConvBN(nnx.Module):
    """Bias-free convolution with explicit symmetric padding, followed by BatchNorm.

    Parameters: ``conv/kernel`` [k, k, C_in, C_out], ``bn/scale`` and ``bn/bias`` [C_out];
    batch statistics ``bn/mean`` and ``bn/var``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int,
        padding: int,
        conv: str = "auto",
        conv_max_scratch: float = math.inf,
        rngs: nnx.Rngs,
    ):
        """Builds the layer.

        Args:
            in_channels: input channels C_in.
            out_channels: output channels C_out.
            kernel_size: square kernel size k.
            stride: spatial stride.
            padding: zero padding on each side of both spatial axes (PyTorch semantics).
            conv: convolution algorithm, ``config.model.conv`` (see `mlb_jax.models.conv`).
            conv_max_scratch: ``config.model.conv_max_scratch``, the memory bound of ``'tuned'``
                (`mlb_jax.models.conv_tune.choose`).
            rngs: parameter random streams.
        """
        self.conv = nnx.Conv(
            in_channels,
            out_channels,
            kernel_size=(kernel_size, kernel_size),
            strides=(stride, stride),
            padding=((padding, padding), (padding, padding)),
            use_bias=False,
            kernel_init=_conv_init,
            conv_general_dilated=conv_function(conv, max_scratch=conv_max_scratch),
            rngs=rngs,
        )
        self.bn = _BatchNorm(
            out_channels,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            scale_init=_bn_scale_init,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Applies conv then BatchNorm.

        Args:
            x: [N, H, W, C_in].
            train: batch statistics (and a running-statistics update) if True, running
                statistics otherwise.

        Returns:
            [N, H', W', C_out].
        """
        return self.bn(self.conv(x), use_running_average=not train)


class BasicBlock(nnx.Module):
    """ResNet BasicBlock: two 3x3 ConvBN with a residual connection (1x1 ConvBN when reshaping)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int,
        conv: str = "auto",
        conv_max_scratch: float = math.inf,
        rngs: nnx.Rngs,
    ):
        """Builds the block.

        Args:
            in_channels: input channels.
            out_channels: output channels.
            stride: stride of the first 3x3 convolution and of the downsample.
            conv: convolution algorithm, see :class:`ConvBN`.
            conv_max_scratch: memory bound of ``'tuned'``, see :class:`ConvBN`.
            rngs: parameter random streams.
        """
        layer = {"conv": conv, "conv_max_scratch": conv_max_scratch, "rngs": rngs}
        self.conv1 = ConvBN(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=1, **layer
        )
        self.conv2 = ConvBN(out_channels, out_channels, kernel_size=3, stride=1, padding=1, **layer)
        self.downsample = (
            ConvBN(in_channels, out_channels, kernel_size=1, stride=stride, padding=0, **layer)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Applies the block.

        Args:
            x: [N, H, W, C_in].
            train: see :class:`ConvBN`.

        Returns:
            [N, H / stride, W / stride, C_out] (rounded up).
        """
        y = jax.nn.relu(self.conv1(x, train=train))
        y = self.conv2(y, train=train)
        shortcut = x if self.downsample is None else self.downsample(x, train=train)
        return jax.nn.relu(y + shortcut)


class ResNet18(nnx.Module):
    """ResNet-18 feature extractor (no pooling, no classifier) on NHWC images.

    Parameter paths: ``stem/{conv,bn}/...``, ``stages/<s>/<b>/{conv1,conv2,downsample}/...`` with
    stage s in 0..3 and block b in 0..1. With ``base_width=64`` and 3 input channels it has
    11,176,512 parameters, exactly torchvision's ``resnet18`` without ``fc``.

    Attributes:
        conv_algorithm: what the ``conv`` choice resolved to when built: ``'tuned'``, ``'plan'``,
            ``'plan_wide'`` or ``'xla'``.
        out_features: channels of the final feature map, 8 * base_width.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        base_width: int = 64,
        conv: str = "auto",
        conv_max_scratch: float = math.inf,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
            in_channels: image channels (1 for spectrograms, 3 for RGB, 2 for optical flow).
            base_width: width of the first stage; stages have 1x, 2x, 4x, 8x this width.
            conv: convolution algorithm, ``config.model.conv``: ``'auto'`` (the plan on the
                CPU backend, XLA's convolution elsewhere), ``'plan'``, ``'plan_wide'``,
                ``'tuned'`` (measured per layer) or ``'xla'``.
            conv_max_scratch: the memory bound of ``'tuned'``, see :class:`ConvBN`.
            rngs: parameter random streams.

        Raises:
            ValueError: naming ``config.model.conv``, for an unknown ``conv``.
        """
        # Resolved once, against the backend the model is built on, for every layer alike.
        self.conv_algorithm = resolve(conv)
        layer = {"conv": self.conv_algorithm, "conv_max_scratch": conv_max_scratch, "rngs": rngs}
        self.stem = ConvBN(in_channels, base_width, kernel_size=7, stride=2, padding=3, **layer)
        stages = []
        width = base_width
        for stage, multiple in enumerate(STAGE_WIDTHS):
            out_width = base_width * multiple
            blocks = []
            for block in range(BLOCKS_PER_STAGE):
                # Stages 2-4 halve the resolution in their first block.
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(width, out_width, stride=stride, **layer))
                width = out_width
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.out_features = width

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Computes the final feature map.

        Args:
            x: [N, H, W, C_in].
            train: see :class:`ConvBN`.

        Returns:
            [N, H / 32, W / 32, 8 * base_width] (each halving rounds up).
        """
        # XLA's choice stays XLA's operations throughout (forward-mode autodiff works).
        pool = max_pool_3x3_s2_xla if self.conv_algorithm == XLA else max_pool_3x3_s2
        x = pool(jax.nn.relu(self.stem(x, train=train)))
        for stage in self.stages:
            for block in stage:
                x = block(x, train=train)
        return x


class _PooledResNet(nnx.Module):
    """A ResNet-18 trunk with the input checks and pooling left to the subclass."""

    DEFAULT_NAME = ""
    DEFAULT_IN_CHANNELS = 1

    def __init__(
        self,
        in_channels: int | None = None,
        *,
        base_width: int = 64,
        conv: str = "auto",
        conv_max_scratch: float = math.inf,
        name: str = "",
        rngs: nnx.Rngs,
    ):
        """Builds the encoder.

        Args:
            in_channels: input channels (1 for a spectrogram, 3 for RGB, 2 for optical flow);
                None: the class's ``DEFAULT_IN_CHANNELS``.
            base_width: ResNet base width; the feature width is ``8 * base_width``.
            conv: convolution algorithm, see :class:`ResNet18`.
            conv_max_scratch: memory bound of ``'tuned'``, see :class:`ResNet18`.
            name: modality name, used in error messages.
            rngs: parameter random streams.
        """
        if in_channels is None:
            in_channels = self.DEFAULT_IN_CHANNELS
        self.resnet = ResNet18(
            in_channels,
            base_width=base_width,
            conv=conv,
            conv_max_scratch=conv_max_scratch,
            rngs=rngs,
        )
        self.in_channels = in_channels
        self.name = name or self.DEFAULT_NAME

    @property
    def out_features(self) -> int:
        """Feature width D = 8 * base_width."""
        return self.resnet.out_features


class AudioEncoder(_PooledResNet):
    """Spectrogram encoder: ResNet-18 then global average pooling over frequency and time.

    As in the reference code, the spectrogram's frequency axis is the image height and time the
    width, with one channel: a [B, 257, T] spectrogram is a [B, 257, T, 1] image.
    """

    DEFAULT_NAME = "audio"
    DEFAULT_IN_CHANNELS = 1  # a magnitude spectrogram

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Encodes a batch of spectrograms.

        Args:
            x: [B, F, T] (single-channel only) or [B, F, T, C] with C = ``in_channels``.
            train: see :class:`ConvBN`.

        Returns:
            Pooled features [B, D].

        Raises:
            ValueError: if the rank or channel count is wrong.
        """
        if x.ndim == 3 and self.in_channels == 1:
            x = x[..., None]
        if x.ndim != 4:
            expected = (
                "3 [B, F, T] or 4 [B, F, T, C]" if self.in_channels == 1 else "4 [B, F, T, C]"
            )
            raise ValueError(
                f"{self.name} input must have rank {expected}, got shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.in_channels:
            raise ValueError(
                f"{self.name} input must have {self.in_channels} channel(s) in its last axis "
                f"[B, F, T, C], got shape {tuple(x.shape)}"
            )
        return jnp.mean(self.resnet(x, train=train), axis=(1, 2))


class VideoEncoder(_PooledResNet):
    """Frame encoder: frames folded into the batch, ResNet-18, mean over time and space.

    As in the reference code, every frame goes through the 2-D ResNet independently, so
    BatchNorm statistics are taken over all B*T frames, and there is no temporal modelling.
    """

    DEFAULT_NAME = "video"
    DEFAULT_IN_CHANNELS = 3  # RGB; 2 for optical flow

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Encodes a batch of clips.

        Args:
            x: [B, T, H, W, C] with C = ``in_channels``.
            train: see :class:`ConvBN`.

        Returns:
            Pooled features [B, D].

        Raises:
            ValueError: if the rank or channel count is wrong.
        """
        if x.ndim != 5:
            raise ValueError(
                f"{self.name} input must have rank 5 [B, T, H, W, C], got shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.in_channels:
            raise ValueError(
                f"{self.name} input must have {self.in_channels} channel(s) in its last axis "
                f"[B, T, H, W, C], got shape {tuple(x.shape)}"
            )
        batch, frames = x.shape[:2]
        maps = self.resnet(x.reshape(batch * frames, *x.shape[2:]), train=train)
        maps = maps.reshape(batch, frames, *maps.shape[1:])
        return jnp.mean(maps, axis=(1, 2, 3))
