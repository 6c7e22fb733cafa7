"""Fusion heads: map a dict of per-modality features {name: [B, D_m]} to fused logits [B, K].

Five heads follow the fusion heads of the MLB reference code (kkontras/MLB, selected there by
``model.args.cls_type``), generalised from two to any M >= 2 modalities (keyed by name, ordered
as given; "first" means the first key):

* ``late_linear``: z = sum_m W_m x_m + b, equal to one Linear on the concatenated features;
* ``mid_mlp``: h = sum_m P_m x_m + b, z = Linear(Drop(ReLU(Linear(Drop(ReLU(h))))));
* ``film``: the first modality conditions the element-wise product of the others;
* ``gated``: the first modality's sigmoid gate multiplies the product of the others' projections;
* ``transformer``: pre-norm transformer over one token per modality plus a CLS token.

Parameter ownership is part of each head's contract, because balancing methods scale gradients
per modality and find each modality's parameters by path: parameters that read only modality m
live under ``<block>/<m>/...`` where ``<block>`` is one of the head's ``modality_blocks``;
everything else (shared biases, layers after the modalities meet) lives elsewhere and is never
claimed by a modality. :meth:`Fusion.modality_blocks_of` reports, per modality, which blocks
hold its parameters.

Linear layers use PyTorch's default initialisation (see :mod:`mlb_jax.models.heads`). Dropout
streams are forked from the ``rngs`` given at construction and stored in the module; dropout is
active only when ``train=True``.
"""

import re
from collections.abc import Mapping
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from mlb_jax.models.heads import torch_linear, torch_uniform_init

# Modality names become attribute names and parameter-path segments, so they must be identifiers.
_MODALITY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def check_modality_names(names: list[str] | tuple[str, ...], minimum: int = 2) -> None:
    """Checks that there are at least `minimum` modalities and that every name is an identifier.

    Args:
        names: modality names in order.
        minimum: 2 for a fusion that mixes modalities; 1 where one modality is a model (the
            late linear classifier of method 'unimodal').

    Raises:
        ValueError: naming the offending modality, or if fewer than `minimum` are given.
    """
    if len(names) < minimum:
        raise ValueError(
            f"this fusion needs at least {minimum} modalities, got {len(names)}: {list(names)} "
            "(a one-modality model, as method 'unimodal' trains, uses late_linear)"
        )
    for name in names:
        if not isinstance(name, str) or not _MODALITY_NAME.match(name):
            raise ValueError(
                f"modality name {name!r} must be a letter followed by letters, digits or "
                "underscores (it becomes a parameter-path segment)"
            )


def _check_equal_dims(fusion: str, feature_dims: Mapping[str, int]) -> int:
    """Returns the common feature width, or raises if the modalities' widths differ."""
    dims = set(feature_dims.values())
    if len(dims) != 1:
        raise ValueError(
            f"fusion {fusion!r} multiplies features element-wise, so every modality needs the "
            f"same feature width; got {dict(feature_dims)}"
        )
    return dims.pop()


def _product(arrays: list[jax.Array]) -> jax.Array:
    """Element-wise product of a non-empty list of equally shaped arrays."""
    out = arrays[0]
    for array in arrays[1:]:
        out = out * array
    return out


class Fusion(nnx.Module):
    """Base class of the fusion heads.

    Subclasses set ``name`` (the registry key), ``modality_blocks`` (attribute names of the
    ``nnx.Dict`` blocks keyed by modality) and ``options`` (the keyword options of
    :func:`build_fusion` that their constructor takes), and store ``self.modalities``, the
    ordered tuple of modality names.
    """

    name: ClassVar[str]
    modality_blocks: ClassVar[tuple[str, ...]]
    options: ClassVar[tuple[str, ...]] = ()
    modalities: tuple[str, ...]

    def modality_blocks_of(self) -> dict[str, list[str]]:
        """Lists, per modality, the blocks that hold parameters reading only that modality.

        Returns:
            modality name -> block attribute names; the modality's parameters are at
            ``<block>/<modality>/...`` relative to this module. A modality that owns no fusion
            parameter (e.g. the conditioned modalities of ``film``) maps to an empty list.
        """
        return {
            name: [block for block in self.modality_blocks if name in getattr(self, block)]
            for name in self.modalities
        }

    def __call__(self, features: Mapping[str, jax.Array], *, train: bool) -> jax.Array:
        """Fuses features into logits.

        Args:
            features: modality name -> [B, D_m].
            train: whether dropout (where the head has any) is active.

        Returns:
            Fused logits [B, K].
        """
        raise NotImplementedError


class LateLinearFusion(Fusion):
    """Late (concatenation) fusion: z = sum_m W_m x_m + b.

    This is MLB's split form of one Linear(sum_m D_m -> K) on the concatenation [x_1; ...; x_M]
    (MLB's default ``cls_type: linear``): the kernel block of modality m is
    ``linear/<m>/kernel`` [D_m, K] and the single shared ``bias`` [K] belongs to no modality.
    Initialisation as MLB's two PyTorch Linears: W_m ~ U(+-1/sqrt(D_m)), and the bias as the
    first modality's Linear bias, U(+-1/sqrt(D_first)).
    """

    name = "late_linear"
    modality_blocks = ("linear",)

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int, *, rngs: nnx.Rngs):
        """Builds the head.

        Args:
            feature_dims: modality name -> D_m, in order.
            num_classes: K.
            rngs: parameter random streams.
        """
        check_modality_names(tuple(feature_dims), minimum=1)
        self.modalities = tuple(feature_dims)
        self.linear = nnx.Dict(
            {
                name: torch_linear(dim, num_classes, use_bias=False, rngs=rngs)
                for name, dim in feature_dims.items()
            }
        )
        first_dim = feature_dims[self.modalities[0]]
        self.bias = nnx.Param(torch_uniform_init(first_dim)(rngs.params(), (num_classes,)))

    def split_logits(self, features: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Fusion-split logits u_m = W_m x_m + b / M, which sum to the fused logits.

        OGM, OGM-GE and MSLR score modalities with these (docs/METHODS.md (OGM), (MSLR));
        BalanceBenchmark's concatenation fusion splits the bias evenly over the M modalities in
        the same way.

        Args:
            features: modality name -> [B, D_m].

        Returns:
            modality name -> [B, K].
        """
        share = self.bias[...] / len(self.modalities)
        return {name: self.linear[name](features[name]) + share for name in self.modalities}

    def __call__(self, features: Mapping[str, jax.Array], *, train: bool) -> jax.Array:
        """See :meth:`Fusion.__call__`; ``train`` is unused (no dropout)."""
        del train
        return sum(self.linear[name](features[name]) for name in self.modalities) + self.bias[...]


class MidMLPFusion(Fusion):
    """Mid (MLP) fusion, MLB's ``cls_type: nonlinear``.

    h = sum_m P_m x_m + b with bias-free input projections ``proj/<m>/kernel`` [D_m, H] and one
    shared ``bias`` [H] (MLB puts it on the first projection, which is the same function); then
    z = out(Drop(ReLU(hidden(Drop(ReLU(h)))))). ``hidden`` and ``out`` are shared.
    """

    name = "mid_mlp"
    modality_blocks = ("proj",)
    options = ("hidden", "dropout")

    def __init__(
        self,
        feature_dims: Mapping[str, int],
        num_classes: int,
        *,
        hidden: int = 64,
        dropout: float = 0.1,
        rngs: nnx.Rngs,
    ):
        """Builds the head.

        Args:
            feature_dims: modality name -> D_m, in order.
            num_classes: K.
            hidden: hidden width H.
            dropout: dropout rate after each ReLU.
            rngs: parameter and dropout random streams.
        """
        check_modality_names(tuple(feature_dims))
        self.modalities = tuple(feature_dims)
        self.proj = nnx.Dict(
            {
                name: torch_linear(dim, hidden, use_bias=False, rngs=rngs)
                for name, dim in feature_dims.items()
            }
        )
        first_dim = feature_dims[self.modalities[0]]
        self.bias = nnx.Param(torch_uniform_init(first_dim)(rngs.params(), (hidden,)))
        self.hidden = torch_linear(hidden, hidden, rngs=rngs)
        self.out = torch_linear(hidden, num_classes, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, features: Mapping[str, jax.Array], *, train: bool) -> jax.Array:
        """See :meth:`Fusion.__call__`."""
        h = sum(self.proj[name](features[name]) for name in self.modalities) + self.bias[...]
        h = self.dropout(jax.nn.relu(h), deterministic=not train)
        h = self.dropout(jax.nn.relu(self.hidden(h)), deterministic=not train)
        return self.out(h)


class FiLMFusion(Fusion):
    """FiLM fusion: the first modality conditions the others (MLB's ``cls_type: film``).

    [gamma, beta] = split(film_first(x_first)); z = out(gamma * prod_{m > first} x_m + beta).
    For M = 2 this is exactly the reference, z = Linear(gamma * x_v + beta) with audio
    conditioning video. For M >= 3 the conditioned signal is the element-wise product of the
    other modalities' features (a multiplicative interaction, like FiLM's own), so every
    modality needs the same width D. ``film/<first>/{kernel,bias}`` [D, 2D] reads only the first
    modality and belongs to it; ``out`` [D, K] is shared. (MLB scales only the encoders for FiLM
    because its layer names carry no modality tag; here the conditioning layer is declared as
    the first modality's, and a method that wants MLB's choice can drop fusion blocks from its
    masks.)
    """

    name = "film"
    modality_blocks = ("film",)

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int, *, rngs: nnx.Rngs):
        """Builds the head.

        Args:
            feature_dims: modality name -> D (all equal), in order.
            num_classes: K.
            rngs: parameter random streams.
        """
        check_modality_names(tuple(feature_dims))
        dim = _check_equal_dims(self.name, feature_dims)
        self.modalities = tuple(feature_dims)
        self.film = nnx.Dict({self.modalities[0]: torch_linear(dim, 2 * dim, rngs=rngs)})
        self.out = torch_linear(dim, num_classes, rngs=rngs)

    def __call__(self, features: Mapping[str, jax.Array], *, train: bool) -> jax.Array:
        """See :meth:`Fusion.__call__`; ``train`` is unused (no dropout)."""
        del train
        first, *others = self.modalities
        gamma, beta = jnp.split(self.film[first](features[first]), 2, axis=-1)
        conditioned = _product([features[name] for name in others])
        return self.out(gamma * conditioned + beta)


class GatedFusion(Fusion):
    """Gated fusion (MLB's ``cls_type: gated``).

    o_m = proj_m(x_m) with ``proj/<m>/{kernel,bias}`` [D, D] per modality (MLB's ``fc_mod<i>``,
    scaled with modality i); z = out(sigmoid(o_first) * prod_{m > first} o_m). For M = 2 this is
    exactly the reference z = Linear(sigmoid(o_a) * o_v); for M >= 3 the first modality gates
    the element-wise product of the others' projections, mirroring :class:`FiLMFusion`. All
    modalities need the same width D; ``out`` [D, K] is shared.
    """

    name = "gated"
    modality_blocks = ("proj",)

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int, *, rngs: nnx.Rngs):
        """Builds the head.

        Args:
            feature_dims: modality name -> D (all equal), in order.
            num_classes: K.
            rngs: parameter random streams.
        """
        check_modality_names(tuple(feature_dims))
        dim = _check_equal_dims(self.name, feature_dims)
        self.modalities = tuple(feature_dims)
        self.proj = nnx.Dict({name: torch_linear(dim, dim, rngs=rngs) for name in feature_dims})
        self.out = torch_linear(dim, num_classes, rngs=rngs)

    def __call__(self, features: Mapping[str, jax.Array], *, train: bool) -> jax.Array:
        """See :meth:`Fusion.__call__`; ``train`` is unused (no dropout)."""
        del train
        first, *others = self.modalities
        gate = jax.nn.sigmoid(self.proj[first](features[first]))
        return self.out(gate * _product([self.proj[name](features[name]) for name in others]))


class ModalityToken(nnx.Module):
    """One transformer token from a pooled feature: proj(x) + a learned modality embedding."""

    def __init__(self, in_features: int, width: int, *, rngs: nnx.Rngs):
        """Builds the tokeniser.

        Args:
            in_features: feature width D_m.
            width: token width H.
            rngs: parameter random streams.
        """
        self.proj = torch_linear(in_features, width, rngs=rngs)
        self.embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (width,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps [B, D_m] to [B, H]."""
        return self.proj(x) + self.embedding[...]


class EncoderLayer(nnx.Module):
    """Pre-norm transformer encoder layer: x + Drop(MHA(LN(x))), then x + Drop(MLP(LN(x)))."""

    def __init__(self, width: int, *, num_heads: int, dropout: float, rngs: nnx.Rngs):
        """Builds the layer.

        Args:
            width: token width H (divisible by ``num_heads``).
            num_heads: attention heads.
            dropout: rate on attention weights, residual branches and the MLP hidden layer.
            rngs: parameter and dropout random streams.
        """
        # epsilon 1e-5 as PyTorch's LayerNorm (Flax defaults to 1e-6).
        self.norm1 = nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads, width, dropout_rate=dropout, decode=False, rngs=rngs
        )
        self.norm2 = nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs)
        self.mlp_in = torch_linear(width, 4 * width, rngs=rngs)
        self.mlp_out = torch_linear(4 * width, width, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Maps tokens [B, N, H] to [B, N, H]."""
        deterministic = not train
        x = x + self.dropout(
            self.attn(self.norm1(x), deterministic=deterministic), deterministic=deterministic
        )
        h = self.dropout(jax.nn.relu(self.mlp_in(self.norm2(x))), deterministic=deterministic)
        return x + self.dropout(self.mlp_out(h), deterministic=deterministic)


class TransformerFusion(Fusion):
    """Transformer fusion over one token per modality.

    Tokens are [CLS; t_1; ...; t_M] with t_m = proj_m(x_m) + e_m (``tokens/<m>/proj`` and
    ``tokens/<m>/embedding`` belong to modality m) and a learned ``cls`` token; two pre-norm
    encoder layers, a final LayerNorm and z = out(CLS output). Dropout 0.1 by default.

    This is the light counterpart of MLB's ``tf`` head (newer release), which runs Conformer
    blocks over all non-pooled audio and video positions; here each modality contributes its
    pooled feature, so the head works on any encoder and any M. MLB scales only the encoders for
    ``tf``; the per-modality tokenisers here are declared as their modality's parameters.
    """

    name = "transformer"
    modality_blocks = ("tokens",)
    options = ("hidden", "dropout")
    num_layers: ClassVar[int] = 2

    def __init__(
        self,
        feature_dims: Mapping[str, int],
        num_classes: int,
        *,
        hidden: int = 64,
        dropout: float = 0.1,
        num_heads: int = 4,
        rngs: nnx.Rngs,
    ):
        """Builds the head.

        Args:
            feature_dims: modality name -> D_m, in order.
            num_classes: K.
            hidden: token width H, divisible by ``num_heads``.
            dropout: dropout rate inside the encoder layers.
            num_heads: attention heads.
            rngs: parameter and dropout random streams.

        Raises:
            ValueError: if ``hidden`` is not divisible by ``num_heads``.
        """
        check_modality_names(tuple(feature_dims))
        if hidden % num_heads:
            raise ValueError(
                f"transformer fusion: fusion_hidden={hidden} must be divisible by "
                f"num_heads={num_heads}"
            )
        self.modalities = tuple(feature_dims)
        self.tokens = nnx.Dict(
            {name: ModalityToken(dim, hidden, rngs=rngs) for name, dim in feature_dims.items()}
        )
        self.cls = nnx.Param(0.02 * jax.random.normal(rngs.params(), (hidden,)))
        self.layers = nnx.List(
            [
                EncoderLayer(hidden, num_heads=num_heads, dropout=dropout, rngs=rngs)
                for _ in range(self.num_layers)
            ]
        )
        self.norm = nnx.LayerNorm(hidden, epsilon=1e-5, rngs=rngs)
        self.out = torch_linear(hidden, num_classes, rngs=rngs)

    def __call__(self, features: Mapping[str, jax.Array], *, train: bool) -> jax.Array:
        """See :meth:`Fusion.__call__`."""
        modality_tokens = [self.tokens[name](features[name]) for name in self.modalities]
        batch = modality_tokens[0].shape[0]
        cls = jnp.broadcast_to(self.cls[...], (batch, self.cls.shape[-1]))
        x = jnp.stack([cls, *modality_tokens], axis=1)  # [B, 1 + M, H]
        for layer in self.layers:
            x = layer(x, train=train)
        return self.out(self.norm(x[:, 0]))


FUSIONS: dict[str, type[Fusion]] = {
    cls.name: cls
    for cls in (LateLinearFusion, MidMLPFusion, FiLMFusion, GatedFusion, TransformerFusion)
}


def check_fusion_name(name: str) -> None:
    """Raises ``ValueError`` naming ``name`` and the valid fusions if it is not registered."""
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; valid fusions are {sorted(FUSIONS)}")


def build_fusion(
    name: str,
    feature_dims: Mapping[str, int],
    num_classes: int,
    *,
    hidden: int = 64,
    dropout: float = 0.1,
    rngs: nnx.Rngs,
) -> Fusion:
    """Builds the fusion head registered under ``name`` in :data:`FUSIONS`.

    Args:
        name: registry key, e.g. ``"late_linear"``.
        feature_dims: modality name -> D_m, in order (the first is the conditioning / gating
            modality of ``film`` and ``gated``).
        num_classes: K.
        hidden: hidden / token width, for heads that have one (``mid_mlp``, ``transformer``).
        dropout: dropout rate, for heads that have dropout (``mid_mlp``, ``transformer``).
        rngs: parameter and dropout random streams.

    Returns:
        The fusion module, mapping {name: [B, D_m]} to [B, K].

    Raises:
        ValueError: if ``name`` is not registered (the message lists the valid names).
    """
    check_fusion_name(name)
    cls = FUSIONS[name]
    given = {"hidden": hidden, "dropout": dropout}
    kwargs = {key: value for key, value in given.items() if key in cls.options}
    return cls(feature_dims, num_classes, rngs=rngs, **kwargs)
