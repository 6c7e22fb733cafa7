"""Training diagnostics: per-encoder gradient norms and fused-vs-unimodal gradient agreement.

Opt-in (``config.train.diagnostics``), computed inside the jitted train step:

* ``diag/grad_norm/<m>``: the L2 norm of the gradient the optimiser receives for modality m's
  encoder (the method's own gradient, before any balancing transform), per step;
* ``diag/cosine/<m>``: the cosine between the gradient of the fused cross-entropy CE(z) and
  the gradient of m's unimodal cross-entropy CE(u_m), both on m's encoder parameters. Near 1
  the unimodal loss pushes the encoder where the fused loss does; near 0 or negative it pulls
  elsewhere (gradient conflict). It is measured whatever the method trains on, so it shows the
  conflict a multi-loss method would face with the encoders the method produced.

Cost: one more forward pass and M + 1 more backward passes per step (`cost_line`), with
BatchNorm statistics and dropout RNG counters of that pass discarded; the model's parameters
and the method's update are unchanged.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

PREFIX = "diag/"
_EPS = 1e-12


def cost_line(num_modalities: int) -> str:
    """The one line the trainer prints when diagnostics are on."""
    return (
        f"training diagnostics on (config.train.diagnostics): each step runs 1 more forward "
        f"and {num_modalities + 1} more backward passes (fused and per-modality unimodal "
        "losses); logged as train/diag/* and summarised per epoch"
    )


def _encoder_leaves(tree: Any, modality: str) -> list[jax.Array]:
    """The leaves of ``tree['encoders'][modality]`` (params or grads of the model)."""
    return jax.tree.leaves(tree["encoders"][modality])


def _norm(leaves: Sequence[jax.Array]) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))


def _cosine(a: Sequence[jax.Array], b: Sequence[jax.Array]) -> jax.Array:
    dot = sum(jnp.sum(x * y) for x, y in zip(a, b, strict=True))
    return dot / jnp.maximum(_norm(a) * _norm(b), _EPS)


def encoder_grad_norms(grads: Any, modalities: Sequence[str]) -> dict[str, jax.Array]:
    """``{'diag/grad_norm/<m>': float32 []}``: the L2 norm of each encoder's gradient.

    Args:
        grads: gradients with the parameters' structure (``encoders/<m>/...``).
        modalities: the modalities to report.
    """
    return {f"{PREFIX}grad_norm/{m}": _norm(_encoder_leaves(grads, m)) for m in modalities}


def loss_gradient_cosines(
    graphdef: nnx.GraphDef,
    method: Any,
    params: Any,
    rest: Any,
    method_state: Any,
    inputs: Mapping[str, jax.Array],
    labels: jax.Array,
) -> dict[str, jax.Array]:
    """``{'diag/cosine/<m>': float32 []}``: cos(grad CE(z), grad CE(u_m)) on m's encoder.

    Args:
        graphdef: the model's graph definition.
        method: the run's method (its ``forward`` gives the fused and unimodal logits).
        params: the parameters before the update.
        rest: the non-parameter model state (copied: nothing is written back).
        method_state: the method's state.
        inputs: the batch's inputs.
        labels: int32 [B].

    Returns:
        One cosine per modality of the model, in [-1, 1] (0 when a gradient is all zero).
    """

    def heads(p):
        model = nnx.merge(graphdef, p, jax.tree.map(lambda x: x, rest))
        out = method.forward(model, inputs, train=True, method_state=method_state)
        return out.logits, dict(out.unimodal_logits)

    (fused, unimodal), pullback = jax.vjp(heads, params)

    def ce_cotangent(logits):
        return jax.grad(
            lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()
        )(logits)

    zeros = {m: jnp.zeros_like(u) for m, u in unimodal.items()}
    (fused_grad,) = pullback((ce_cotangent(fused), zeros))
    out = {}
    for m, logits in unimodal.items():
        (unimodal_grad,) = pullback((jnp.zeros_like(fused), zeros | {m: ce_cotangent(logits)}))
        out[f"{PREFIX}cosine/{m}"] = _cosine(
            _encoder_leaves(fused_grad, m), _encoder_leaves(unimodal_grad, m)
        )
    return out


def epoch_summary(record: Mapping[str, float], modalities: Sequence[str]) -> str | None:
    """``'grad |g| audio 0.41 video 0.09 | cos(fused, uni) audio +0.62 video +0.05'``.

    Reads the epoch means ``train/diag/...`` of a history record; None without diagnostics.
    """
    norms = [
        f"{m} {record[f'train/{PREFIX}grad_norm/{m}']:.3g}"
        for m in modalities
        if f"train/{PREFIX}grad_norm/{m}" in record
    ]
    if not norms:
        return None
    cosines = [
        f"{m} {record[f'train/{PREFIX}cosine/{m}']:+.2f}"
        for m in modalities
        if f"train/{PREFIX}cosine/{m}" in record
    ]
    return f"|g| {' '.join(norms)} | cos(fused, uni) {' '.join(cosines)}"
