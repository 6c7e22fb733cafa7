"""PyTorch-initialised linear layers and the per-modality unimodal heads built from them.

The reference implementations (MLB, BalanceBenchmark) keep PyTorch's default ``nn.Linear``
initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, whereas
Flax defaults to a LeCun-normal kernel and a zero bias. Every linear layer of the model layer is
built through :func:`torch_linear` so that initial logits have the reference's scale.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx


def torch_uniform_init(fan_in: int) -> nnx.Initializer:
    """Returns an initialiser drawing U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's Linear default.

    Args:
        fan_in: the input width of the layer the parameter belongs to. It is passed explicitly
            because a bias (or a bias shared by several per-modality kernels) cannot infer it from
            its own shape.

    Returns:
        An initialiser ``(key, shape, dtype) -> array``.
    """
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_linear(
    in_features: int, out_features: int, *, use_bias: bool = True, rngs: nnx.Rngs
) -> nnx.Linear:
    """Builds ``nnx.Linear(in_features -> out_features)`` initialised like PyTorch's ``nn.Linear``.

    Args:
        in_features: input width (the fan-in of both kernel and bias).
        out_features: output width.
        use_bias: whether the layer has a bias.
        rngs: parameter random streams.

    Returns:
        The layer; parameters ``kernel`` [in_features, out_features] and optionally ``bias``
        [out_features].
    """
    init = torch_uniform_init(in_features)
    return nnx.Linear(
        in_features, out_features, use_bias=use_bias, kernel_init=init, bias_init=init, rngs=rngs
    )


def unimodal_heads(
    feature_dims: Mapping[str, int], num_classes: int, *, rngs: nnx.Rngs
) -> nnx.Dict:
    """Builds one Linear(D_m -> K) with bias per modality, like MLB's per-encoder classifiers.

    Each head reads its modality's pooled encoder feature [B, D_m] and returns logits [B, K].

    Args:
        feature_dims: modality name -> feature width D_m.
        num_classes: number of classes K.
        rngs: parameter random streams.

    Returns:
        ``nnx.Dict`` modality name -> ``nnx.Linear``; parameters ``<modality>/kernel`` and
        ``<modality>/bias``.
    """
    return nnx.Dict(
        {name: torch_linear(dim, num_classes, rngs=rngs) for name, dim in feature_dims.items()}
    )
