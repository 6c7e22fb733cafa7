"""MMPareto: Pareto combination of the multimodal and unimodal gradients.

See docs/METHODS.md (mmpareto).

The losses are the multi-loss ones, L_mm = CE(fused) and L_m = CE(unimodal head m). One forward
pass and one `jax.vjp` give the gradient of every loss separately. For each modality m, on the
parameters of its encoder (paths 'encoders/<m>/...'; MLB's `enc_m` tensors that receive a
gradient from L_mm, the official code's non-head 'audio'/'visual' tensors):

  1. cos = cos(flatten(g_mm), flatten(g_m)) over all of the encoder's tensors together;
  2. weights (c1, c2) = (1/2, 1/2) if cos > 0, else the min-norm (MGDA) convex combination of
     the two gradients, c1 = clip(((g_m - g_mm) . g_m) / ||g_mm - g_m||^2, 0, 1), c2 = 1 - c1;
  3. per tensor: g_new = 2 c1 g_mm + 2 c2 g_m; if ||g_total|| > ||g_new|| (per-tensor norms,
     g_total = gradient of L_mm + sum_m L_m) g_new is rescaled to norm ||g_total||;
     then g_new is multiplied by gamma = `alpha`.

Every other parameter (unimodal heads, fusion) keeps the plain gradient of the summed loss.
The combined gradients then go through the optimiser chain like any other gradients. Works for
any M >= 2: each modality's rule involves only L_mm and its own L_m.

Deliberate differences from the references:
  * BalanceBenchmark's shortcut is not copied: it does not compute the per-loss gradients
    separately, so its cosine is not a real cosine and the method collapses to a scaled
    multi-loss. Here every loss gets its own backward pass.
  * Degenerate cases are defined instead of producing NaN: a zero ||g_mm - g_m||^2 gives
    c1 = 1/2 (the two gradients are equal, any convex weight gives the same vector), and a
    zero g_new is left at zero instead of being divided by its norm.
  * The min-norm weight is clipped to [0, 1]; the official solver's 0.001/0.999
    endpoints are only reachable for non-conflicting gradients, which take the (1/2, 1/2)
    branch anyway.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from mlb_jax.balancing import parameter_paths
from mlb_jax.methods.base import Losses, Method
from mlb_jax.methods.config import method_from_config
from mlb_jax.methods.multiloss import MultiLoss
from mlb_jax.methods.space import Dimension, LogUniform

PyTree = Any
FUSED = "fused"
# torch.nn.functional.cosine_similarity's eps on the product of the norms.
_COS_EPS = 1e-8


def mmpareto_combine(
    g_mm: Sequence[jax.Array],
    g_uni: Sequence[jax.Array],
    g_total: Sequence[jax.Array],
    *,
    gamma: float | jax.Array,
) -> tuple[list[jax.Array], dict[str, jax.Array]]:
    """The MMPareto rule for one modality's tensors.

    Args:
      g_mm: gradients of the multimodal loss, one array per tensor of the encoder.
      g_uni: gradients of the modality's unimodal loss, same shapes.
      g_total: gradients of the summed loss, same shapes (the reference's "three-loss" grad).
      gamma: final multiplier (the method's alpha).

    Returns:
      (new gradients, one per tensor; {'cos': float32 [], 'weight_mm': c1 float32 []}).
    """
    if not (len(g_mm) == len(g_uni) == len(g_total)):
        raise ValueError("g_mm, g_uni and g_total must have one array per tensor each")

    def dot(a: Sequence[jax.Array], b: Sequence[jax.Array]) -> jax.Array:
        return sum(jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32)) for x, y in zip(a, b))

    mm, uu, mu = dot(g_mm, g_mm), dot(g_uni, g_uni), dot(g_mm, g_uni)
    cos = mu / jnp.maximum(jnp.sqrt(mm) * jnp.sqrt(uu), _COS_EPS)
    # Min-norm point of the segment [g_mm, g_uni]: argmin_c ||c g_mm + (1 - c) g_uni||^2.
    dist = mm + uu - 2.0 * mu  # ||g_mm - g_uni||^2
    pareto = jnp.clip((uu - mu) / jnp.where(dist > 0, dist, 1.0), 0.0, 1.0)
    pareto = jnp.where(dist > 0, pareto, 0.5)
    c1 = jnp.where(cos > 0, 0.5, pareto)
    c2 = 1.0 - c1

    out = []
    for a, b, t in zip(g_mm, g_uni, g_total):
        new = 2.0 * c1.astype(a.dtype) * a + 2.0 * c2.astype(a.dtype) * b
        new_norm = jnp.linalg.norm(new.ravel())
        total_norm = jnp.linalg.norm(t.ravel())
        scale = jnp.where(
            (total_norm > new_norm) & (new_norm > 0), total_norm / jnp.maximum(new_norm, 1e-30), 1
        )
        out.append(new * (scale * gamma).astype(a.dtype))
    return out, {"cos": cos, "weight_mm": c1}


def mmpareto_gradients(
    per_loss: Mapping[str, PyTree], params: PyTree, *, gamma: float | jax.Array
) -> PyTree:
    """Combines per-loss gradients with the MMPareto rule on every modality's encoder.

    Args:
      per_loss: loss name -> gradient pytree (structure of `params`): 'fused' and one entry per
        modality (the modality's unimodal loss).
      params: the parameters (for the structure and the paths 'encoders/<m>/...').
      gamma: the final multiplier.

    Returns:
      The gradient pytree: the rule on the encoder leaves of each modality, the sum of the
      per-loss gradients everywhere else.

    Raises:
      ValueError: no 'fused' gradient, or a modality whose encoder has no parameter.
    """
    if FUSED not in per_loss:
        raise ValueError(f"MMPareto needs the gradient of the {FUSED!r} loss")
    treedef = jax.tree.structure(params)
    paths = parameter_paths(params)
    flat = {name: treedef.flatten_up_to(g) for name, g in per_loss.items()}
    total = [sum(leaves) for leaves in zip(*flat.values())]
    out = list(total)
    for m in (name for name in per_loss if name != FUSED):
        index = [i for i, p in enumerate(paths) if p.startswith(f"encoders/{m}/")]
        if not index:
            raise ValueError(f"MMPareto: no parameter under 'encoders/{m}/' for loss {m!r}")
        new, _ = mmpareto_combine(
            [flat[FUSED][i] for i in index],
            [flat[m][i] for i in index],
            [total[i] for i in index],
            gamma=gamma,
        )
        for i, g in zip(index, new):
            out[i] = g
    return treedef.unflatten(out)


@dataclasses.dataclass(frozen=True)
class MMPareto(MultiLoss):
    """MMPareto: multi-loss with Pareto-combined encoder gradients; any M >= 2.

    The inherited `unimodal_weight` stays 1: the per-loss gradients are combined by the rule,
    which weights every unimodal loss by 1 (a different config value is refused).

    Attributes:
      alpha: gamma >= 0, the final multiplier of the combined encoder gradients (official 1.5).
    """

    name: str = "mmpareto"
    alpha: float = 1.5

    config_block: ClassVar[str | None] = "mmpareto"
    block_fields: ClassVar[tuple[str, ...]] = ("alpha",)
    search_space: ClassVar[Mapping[str, Dimension]] = {
        **Method.search_space,
        "alpha": LogUniform(0.5, 4.0),
    }
    traced_fields: ClassVar[tuple[str, ...]] = ("alpha",)
    top_level_fields: ClassVar[tuple[str, ...]] = ()
    unread_because: ClassVar[Mapping[str, str]] = {
        **Method.unread_because,
        "unimodal_weight": "its Pareto rule combines the unimodal gradients with weight 1",
    }

    def validate(self) -> None:
        """Multi-loss checks plus alpha >= 0 and unimodal_weight 1 (the rule's weight)."""
        super().validate()
        self.require("alpha", self.alpha >= 0, ">= 0")
        self.require("unimodal_weight", self.unimodal_weight == 1.0, "1 (the Pareto rule's)")

    def value_and_grad(
        self, losses_fn: Callable[[PyTree], tuple[Losses, Any]], params: PyTree
    ) -> tuple[tuple[jax.Array, Losses, Any], PyTree]:
        """Per-loss gradients from one forward pass (`jax.vjp`), combined by the rule."""
        losses, vjp_fn, aux = jax.vjp(losses_fn, params, has_aux=True)
        per_loss = {}
        for name in losses:
            # One backward pass per loss: the cotangent selects that loss alone.
            cotangent = {
                k: jnp.ones_like(v) if k == name else jnp.zeros_like(v) for k, v in losses.items()
            }
            (per_loss[name],) = vjp_fn(cotangent)
        grads = mmpareto_gradients(per_loss, params, gamma=self.alpha)
        return (self.combine(losses), losses, aux), grads


def make_mmpareto(config: Any) -> MMPareto:
    """Builds MMPareto from `config.method` (block `mmpareto`: alpha)."""
    return method_from_config(MMPareto, config)
