"""Sequence encoders: feature sequences [B, L, D] with valid lengths [B] -> features [B, D_m].

A ``sequence`` modality arrives zero-padded after each example's valid steps, with
``lengths`` int32 [B] counting the valid leading steps (``None``: every step is valid; 0: no
valid step, e.g. an absent modality). Both encoders here make their output a function of the
valid steps only, so an example's feature does not depend on how far its batch was padded:

* padded steps are set to zero before every operation that mixes time steps (convolutions),
  so a padded step reads exactly like the zero padding of a convolution on the unpadded
  sequence;
* self-attention masks padded keys, and normalisation statistics taken over time exclude
  padded steps;
* pooling is a masked mean over valid steps; an example with none gives a zero feature (a
  finite one: every division is by max(count, 1) and masked attention scores are finite).

Padding is only ever at the end, so a valid step's position index (used by rotary position
embeddings) is the same padded or not.

* :class:`ConformerEncoder` refines pretrained feature sequences with Conformer blocks (Gulati
  et al., 2020), as the MLB paper (Section 4.2) does with a 5-layer Conformer;
* :class:`TemporalConvEncoder` is a small dilated 1-D convolution network for sensor streams
  (IMU [T, 6], skeleton joints [T, 60]).

Both set ``takes_lengths = True``, which makes ``MultimodalClassifier.encode`` pass
``lengths=inputs[length_key(m)]`` (or ``None``). Linear layers and convolutions keep PyTorch's
default initialisation (U(+-1/sqrt(fan_in)), see :mod:`mlb_jax.models.heads`), LayerNorm and
BatchNorm epsilon are PyTorch's 1e-5. Dropout streams are forked from ``rngs`` at construction
and stored in the module (as the fusion heads do), so a model survives ``nnx.split`` ->
``jax.jit`` -> ``nnx.merge``; dropout is active only when ``train=True``.
"""

from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from mlb_jax.models.heads import torch_linear, torch_uniform_init
from mlb_jax.models.resnet import BN_EPSILON, BN_MOMENTUM

POSITIONS = ("rotary", "none")
ROTARY_BASE = 10_000.0  # RoFormer's wavelength base
LN_EPSILON = 1e-5  # PyTorch's LayerNorm default (Flax's is 1e-6)


def _check_positive(encoder: str, **values: int) -> None:
    """Raises a ``ValueError`` naming the encoder and argument unless each value is an int >= 1."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{encoder}: {key} must be a positive integer, got {value!r}")


def _check_odd(encoder: str, key: str, value: int) -> None:
    """Odd kernels keep 'SAME' padding symmetric: output step t reads steps t-r .. t+r."""
    if value % 2 == 0:
        raise ValueError(f"{encoder}: {key} must be odd (a centred window), got {value}")


def _check_dropout(encoder: str, rate: float) -> None:
    """Raises a ``ValueError`` naming the encoder unless 0 <= rate < 1."""
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{encoder}: dropout must be a rate in [0, 1), got {rate!r}")


def step_mask(x: jax.Array, lengths: jax.Array | None, *, in_features: int, name: str) -> jax.Array:
    """Checks a sequence batch and returns its valid-step mask.

    Args:
        x: [B, L, D] features.
        lengths: integer [B] valid leading steps, or ``None`` (all valid). Values above L count
            as L and values below 0 as 0.
        in_features: the expected D.
        name: the encoder's modality name, for error messages.

    Returns:
        Boolean mask [B, L], True at valid steps.

    Raises:
        ValueError: naming the modality and the expected shape, if ``x`` is not rank 3 with
            D = ``in_features``, or ``lengths`` is not an integer array of shape [B].
    """
    if x.ndim != 3:
        raise ValueError(
            f"{name} input must have rank 3 [B, L, D] with D = {in_features}, "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[-1] != in_features:
        raise ValueError(
            f"{name} input must have {in_features} features in its last axis [B, L, D], "
            f"got shape {tuple(x.shape)}"
        )
    batch, steps = x.shape[:2]
    if lengths is None:
        return jnp.ones((batch, steps), dtype=bool)
    if tuple(lengths.shape) != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(
            f"{name} lengths must be an integer array of shape [B] = ({batch},), got "
            f"{lengths.dtype} of shape {tuple(lengths.shape)}"
        )
    return jnp.arange(steps)[None, :] < lengths[:, None]


def zero_padded(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Sets padded steps of [B, L, C] to zero (``where``, so NaN or inf there cannot leak)."""
    return jnp.where(mask[..., None], x, 0.0)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over valid steps: [B, L, C] -> [B, C]; zero (not NaN) where an example has none."""
    # Counted in float32: a bfloat16 count would be inexact above 256 steps.
    count = jnp.sum(mask, axis=1, dtype=jnp.float32)[:, None]
    return (jnp.sum(zero_padded(x, mask), axis=1) / jnp.maximum(count, 1.0)).astype(x.dtype)


def _torch_conv1d(
    in_features: int,
    out_features: int,
    kernel: int,
    *,
    dilation: int = 1,
    groups: int = 1,
    use_bias: bool = True,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A 1-D 'SAME' convolution over axis 1 of [B, L, C], initialised like ``torch.nn.Conv1d``."""
    init = torch_uniform_init(in_features // groups * kernel)
    return nnx.Conv(
        in_features,
        out_features,
        kernel_size=(kernel,),
        kernel_dilation=(dilation,),
        feature_group_count=groups,
        padding="SAME",
        use_bias=use_bias,
        kernel_init=init,
        bias_init=init,
        rngs=rngs,
    )


class MaskedBatchNorm(nnx.Module):
    """BatchNorm over the channels of [B, L, C] whose batch statistics skip padded steps.

    In training it normalises with the mean and (biased) variance over all valid steps of the
    batch and moves the running statistics towards them (momentum 0.9, PyTorch's 0.1); a batch
    without any valid step leaves the running statistics unchanged. In evaluation it uses the
    running statistics, a per-channel affine map of each step. Parameters ``scale`` (ones) and
    ``bias`` (zeros), PyTorch's ``BatchNorm1d`` initialisation; statistics ``mean`` and ``var``,
    the names ``nnx.BatchNorm`` uses. (``nnx.BatchNorm``'s own ``mask`` would divide by a zero
    count on such a batch and write NaN into the running statistics.)
    """

    def __init__(
        self, features: int, *, momentum: float = BN_MOMENTUM, epsilon: float = BN_EPSILON
    ):
        """Builds the layer.

        Args:
            features: channels C.
            momentum: weight of the old running value in each update.
            epsilon: variance floor.
        """
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((features,), jnp.float32))
        self.momentum = momentum
        self.epsilon = epsilon

    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        """Normalises ``x``.

        Args:
            x: [B, L, C].
            mask: [B, L], True at valid steps.
            train: masked batch statistics and a running-statistics update if True; running
                statistics otherwise.

        Returns:
            [B, L, C]; padded steps hold values that mean nothing.
        """
        if train:
            valid = mask[..., None]
            count = jnp.sum(mask, dtype=jnp.float32)
            denominator = jnp.maximum(count, 1.0)
            mean = jnp.sum(jnp.where(valid, x, 0.0), axis=(0, 1)) / denominator
            # Two-pass variance: E[(x - mean)^2], not E[x^2] - mean^2, which cancels badly.
            var = jnp.sum(jnp.where(valid, jnp.square(x - mean), 0.0), axis=(0, 1)) / denominator
            seen = count > 0
            momentum = self.momentum
            # set_value, not `self.mean[...] = `: see mlb_jax.models.resnet._RunningStatistic.
            self.mean.set_value(
                jax.lax.stop_gradient(
                    jnp.where(
                        seen, momentum * self.mean[...] + (1 - momentum) * mean, self.mean[...]
                    )
                )
            )
            self.var.set_value(
                jax.lax.stop_gradient(
                    jnp.where(seen, momentum * self.var[...] + (1 - momentum) * var, self.var[...])
                )
            )
        else:
            mean, var = self.mean[...], self.var[...]
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]


class FeedForward(nnx.Module):
    """Conformer feed-forward module: Drop(Linear(Drop(Swish(Linear(LN(x)))))), without residual."""

    def __init__(self, dim: int, *, mult: int, dropout: float, rngs: nnx.Rngs):
        """Builds the module.

        Args:
            dim: model width.
            mult: hidden width is ``mult * dim``.
            dropout: rate after the activation and after the output layer.
            rngs: parameter and dropout random streams.
        """
        self.norm = nnx.LayerNorm(dim, epsilon=LN_EPSILON, rngs=rngs)
        self.inner = torch_linear(dim, mult * dim, rngs=rngs)
        self.outer = torch_linear(mult * dim, dim, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Maps [B, L, dim] to [B, L, dim], step by step."""
        h = self.dropout(jax.nn.silu(self.inner(self.norm(x))), deterministic=not train)
        return self.dropout(self.outer(h), deterministic=not train)


def rotary(x: jax.Array) -> jax.Array:
    """Rotary position embedding (Su et al., RoFormer) of [B, L, H, Dh] at positions 0 .. L-1.

    Channel pairs (i, i + Dh/2) are rotated by angle ``position * ROTARY_BASE**(-2i / Dh)``, so
    a query-key product depends on the two positions only through their difference.
    """
    steps, head_dim = x.shape[1], x.shape[-1]
    half = head_dim // 2
    frequencies = ROTARY_BASE ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.arange(steps, dtype=jnp.float32)[:, None] * frequencies[None, :]  # [L, Dh/2]
    cos = jnp.cos(angles)[None, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[None, :, None, :].astype(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return jnp.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)


class SelfAttention(nnx.Module):
    """Conformer attention module: Drop(MHSA(LN(x))) with padded keys masked, without residual.

    Gulati et al. use Transformer-XL relative positional encoding; here the relative position
    information comes from rotary embeddings on queries and keys (``positions='rotary'``), or
    there is none (``'none'``: permutation-equivariant over valid steps).
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        positions: Literal["rotary", "none"],
        dropout: float,
        rngs: nnx.Rngs,
    ):
        """Builds the module.

        Args:
            dim: model width, divisible by ``heads``.
            heads: attention heads.
            positions: ``'rotary'`` or ``'none'``.
            dropout: rate on the attention weights and on the module output.
            rngs: parameter and dropout random streams.
        """
        self.norm = nnx.LayerNorm(dim, epsilon=LN_EPSILON, rngs=rngs)
        self.query = torch_linear(dim, dim, rngs=rngs)
        self.key = torch_linear(dim, dim, rngs=rngs)
        self.value = torch_linear(dim, dim, rngs=rngs)
        self.out = torch_linear(dim, dim, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.heads = heads
        self.positions = positions

    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        """Maps [B, L, dim] to [B, L, dim]; valid steps attend to valid steps only.

        Args:
            x: [B, L, dim].
            mask: [B, L], True at valid steps.
            train: whether dropout is active.
        """
        batch, steps, dim = x.shape
        h = self.norm(x)
        split = (batch, steps, self.heads, dim // self.heads)
        q, k, v = (layer(h).reshape(split) for layer in (self.query, self.key, self.value))
        if self.positions == "rotary":
            q, k = rotary(q), rotary(k)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(split[-1], q.dtype))
        # A finite floor, not -inf: a query whose keys are all padded (0 valid steps) gets
        # uniform weights instead of 0/0, and padded keys of any other query get weight exactly 0.
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        weights = self.dropout(jax.nn.softmax(scores, axis=-1), deterministic=not train)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, steps, dim)
        return self.dropout(self.out(attended), deterministic=not train)


class ConvModule(nnx.Module):
    """Conformer convolution module, without residual.

    LN -> pointwise conv to 2*dim -> GLU -> (padded steps zeroed) depthwise conv over time ->
    masked BatchNorm -> Swish -> pointwise conv -> Drop. The pointwise convolutions are Linear
    layers (a kernel-1 convolution is one); the depthwise convolution has no bias (the BatchNorm
    after it has one), as in the MLB reference's Conformer.

    The normalisation is :class:`MaskedBatchNorm`, the BatchNorm of the paper and of the MLB
    reference, with statistics over valid steps only, because an unmasked BatchNorm would let
    the amount of padding in a batch shift every example's features. Its cost is BatchNorm's
    usual one: in training an example's output depends on the other valid steps of its batch
    (not on padding); in evaluation it is a fixed per-step map.
    """

    def __init__(self, dim: int, *, kernel: int, dropout: float, rngs: nnx.Rngs):
        """Builds the module.

        Args:
            dim: model width.
            kernel: depthwise kernel size over time (odd).
            dropout: rate on the module output.
            rngs: parameter and dropout random streams.
        """
        self.norm = nnx.LayerNorm(dim, epsilon=LN_EPSILON, rngs=rngs)
        self.pointwise_in = torch_linear(dim, 2 * dim, rngs=rngs)
        self.depthwise = _torch_conv1d(dim, dim, kernel, groups=dim, use_bias=False, rngs=rngs)
        self.batch_norm = MaskedBatchNorm(dim)
        self.pointwise_out = torch_linear(dim, dim, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        """Maps [B, L, dim] to [B, L, dim].

        Args:
            x: [B, L, dim].
            mask: [B, L], True at valid steps.
            train: batch statistics and dropout if True.
        """
        h = jax.nn.glu(self.pointwise_in(self.norm(x)), axis=-1)
        # Zeroed padding reads like the convolution's own zero padding of the unpadded sequence.
        h = self.depthwise(zero_padded(h, mask))
        h = jax.nn.silu(self.batch_norm(h, mask, train=train))
        return self.dropout(self.pointwise_out(h), deterministic=not train)


class ConformerBlock(nnx.Module):
    """One Conformer block (Gulati et al., 2020, Fig. 1).

    x = x + 1/2 FF1(x); x = x + MHSA(x); x = x + Conv(x); x = x + 1/2 FF2(x); y = LN(x).
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        ff_mult: int,
        conv_kernel: int,
        positions: Literal["rotary", "none"],
        dropout: float,
        rngs: nnx.Rngs,
    ):
        """Builds the block; arguments as in :class:`ConformerEncoder`."""
        self.ff1 = FeedForward(dim, mult=ff_mult, dropout=dropout, rngs=rngs)
        self.attention = SelfAttention(
            dim, heads=heads, positions=positions, dropout=dropout, rngs=rngs
        )
        self.conv = ConvModule(dim, kernel=conv_kernel, dropout=dropout, rngs=rngs)
        self.ff2 = FeedForward(dim, mult=ff_mult, dropout=dropout, rngs=rngs)
        self.norm = nnx.LayerNorm(dim, epsilon=LN_EPSILON, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        """Maps [B, L, dim] to [B, L, dim]; valid steps never read padded ones."""
        x = x + 0.5 * self.ff1(x, train=train)
        x = x + self.attention(x, mask, train=train)
        x = x + self.conv(x, mask, train=train)
        x = x + 0.5 * self.ff2(x, train=train)
        return self.norm(x)


class ConformerEncoder(nnx.Module):
    """Conformer encoder of feature sequences: Linear, ``depth`` Conformer blocks, masked mean.

    x [B, L, D] -> Drop(Linear(D -> dim)) -> ``depth`` x :class:`ConformerBlock` -> mean over
    valid steps -> [B, dim]. The defaults (dim 144, 4 heads, feed-forward 4x, kernel 31) are
    Conformer-S's width with MLB's 5 layers. Parameter paths: ``input/...``,
    ``blocks/<i>/{ff1,attention,conv,ff2,norm}/...``; the convolution module's normalisation is
    a :class:`MaskedBatchNorm` (``blocks/<i>/conv/batch_norm``), see :class:`ConvModule` for why.

    Attributes:
        takes_lengths: True: ``MultimodalClassifier`` passes the valid lengths.
        out_features: pooled feature width, ``dim``.
    """

    takes_lengths: ClassVar[bool] = True
    DEFAULT_NAME = "conformer"

    def __init__(
        self,
        in_features: int,
        *,
        dim: int = 144,
        depth: int = 5,
        heads: int = 4,
        ff_mult: int = 4,
        conv_kernel: int = 31,
        dropout: float = 0.1,
        positions: Literal["rotary", "none"] = "rotary",
        name: str = "",
        rngs: nnx.Rngs,
    ):
        """Builds the encoder.

        Args:
            in_features: input feature width D.
            dim: model width, divisible by ``heads`` (with rotary positions, into an even head
                width).
            depth: Conformer blocks.
            heads: attention heads.
            ff_mult: feed-forward hidden width is ``ff_mult * dim``.
            conv_kernel: depthwise convolution kernel over time, odd.
            dropout: dropout rate after the input layer and inside every module.
            positions: ``'rotary'`` (rotary embeddings on queries and keys) or ``'none'``.
            name: modality name, used in error messages.
            rngs: parameter and dropout random streams.

        Raises:
            ValueError: naming the encoder and argument, for a bad size, rate or ``positions``.
        """
        self.name = name or self.DEFAULT_NAME
        _check_positive(
            self.name,
            in_features=in_features,
            dim=dim,
            depth=depth,
            heads=heads,
            ff_mult=ff_mult,
            conv_kernel=conv_kernel,
        )
        _check_odd(self.name, "conv_kernel", conv_kernel)
        _check_dropout(self.name, dropout)
        if positions not in POSITIONS:
            raise ValueError(
                f"{self.name}: positions must be one of {POSITIONS}, got {positions!r}"
            )
        if dim % heads:
            raise ValueError(f"{self.name}: dim={dim} must be divisible by heads={heads}")
        if positions == "rotary" and (dim // heads) % 2:
            raise ValueError(
                f"{self.name}: rotary positions rotate channel pairs, so the head width "
                f"dim / heads = {dim // heads} must be even"
            )
        self.in_features = in_features
        self.out_features = dim
        self.input = torch_linear(in_features, dim, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.blocks = nnx.List(
            [
                ConformerBlock(
                    dim,
                    heads=heads,
                    ff_mult=ff_mult,
                    conv_kernel=conv_kernel,
                    positions=positions,
                    dropout=dropout,
                    rngs=rngs,
                )
                for _ in range(depth)
            ]
        )

    def __call__(self, x: jax.Array, *, lengths: jax.Array | None = None, train: bool) -> jax.Array:
        """Encodes a batch of feature sequences.

        Args:
            x: [B, L, D] with D = ``in_features``, zero-padded after each example's valid steps.
            lengths: integer [B] valid leading steps, or ``None`` (all L steps valid).
            train: masked batch statistics (and their running update) and dropout if True.

        Returns:
            Pooled features [B, dim]: the mean over valid steps, zero for an example with none.

        Raises:
            ValueError: if the rank, feature width or ``lengths`` shape is wrong.
        """
        mask = step_mask(x, lengths, in_features=self.in_features, name=self.name)
        h = self.dropout(self.input(zero_padded(x, mask)), deterministic=not train)
        for block in self.blocks:
            h = block(h, mask, train=train)
        return masked_mean(h, mask)


class TemporalConvEncoder(nnx.Module):
    """Dilated 1-D temporal convolution network for sensor streams, then a masked mean.

    Layer i: (padded steps zeroed) Conv1D over time, kernel ``kernel``, dilation 2**i, 'SAME'
    -> LayerNorm over channels -> ReLU -> Drop; then the mean over valid steps. LayerNorm is the
    normalisation because its statistics are per step (over channels): padded steps cannot
    enter them and training and evaluation compute the same function. With the default depth
    3 and kernel 5 each output step sees 1 + 4 * (1 + 2 + 4) = 29 input steps. Parameter paths:
    ``convs/<i>/{kernel,bias}``, ``norms/<i>/{scale,bias}``.

    Attributes:
        takes_lengths: True: ``MultimodalClassifier`` passes the valid lengths.
        out_features: pooled feature width, ``width``.
    """

    takes_lengths: ClassVar[bool] = True
    DEFAULT_NAME = "tcn"

    def __init__(
        self,
        in_features: int,
        *,
        width: int = 64,
        depth: int = 3,
        kernel: int = 5,
        dropout: float = 0.1,
        name: str = "",
        rngs: nnx.Rngs,
    ):
        """Builds the encoder.

        Args:
            in_features: input feature width D (e.g. 6 for a 6-axis IMU).
            width: channels of every layer, the feature width.
            depth: convolution layers; layer i has dilation 2**i.
            kernel: convolution kernel size over time, odd.
            dropout: dropout rate after every layer's ReLU.
            name: modality name, used in error messages.
            rngs: parameter and dropout random streams.

        Raises:
            ValueError: naming the encoder and argument, for a bad size or rate.
        """
        self.name = name or self.DEFAULT_NAME
        _check_positive(self.name, in_features=in_features, width=width, depth=depth, kernel=kernel)
        _check_odd(self.name, "kernel", kernel)
        _check_dropout(self.name, dropout)
        self.in_features = in_features
        self.out_features = width
        self.convs = nnx.List(
            [
                _torch_conv1d(
                    in_features if i == 0 else width, width, kernel, dilation=2**i, rngs=rngs
                )
                for i in range(depth)
            ]
        )
        self.norms = nnx.List(
            [nnx.LayerNorm(width, epsilon=LN_EPSILON, rngs=rngs) for _ in range(depth)]
        )
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array, *, lengths: jax.Array | None = None, train: bool) -> jax.Array:
        """Encodes a batch of sensor sequences.

        Args:
            x: [B, L, D] with D = ``in_features``, zero-padded after each example's valid steps.
            lengths: integer [B] valid leading steps, or ``None`` (all L steps valid).
            train: whether dropout is active.

        Returns:
            Pooled features [B, width]: the mean over valid steps, zero for an example with none.

        Raises:
            ValueError: if the rank, feature width or ``lengths`` shape is wrong.
        """
        mask = step_mask(x, lengths, in_features=self.in_features, name=self.name)
        h = x
        for conv, norm in zip(self.convs, self.norms):
            h = jax.nn.relu(norm(conv(zero_padded(h, mask))))
            h = self.dropout(h, deterministic=not train)
        return masked_mean(h, mask)
