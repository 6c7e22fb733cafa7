"""The method interface: what a balancing method supplies to the generic train step.

A method (DESIGN decision 4) is a small object that owns
  * its loss from the model outputs (`loss`),
  * its per-step inputs to the optimiser (`update_kwargs`, e.g. MLB's modality scores),
  * its gradient transformation (`gradient_transform`, None when it has none),
  * where that transform sits relative to the base optimiser (`placement`).
The train step calls these and never branches on a method's name.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

PyTree = Any


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy.

    Args:
      logits: [B, K].
      labels: [B] integer labels.

    Returns:
      Scalar float32.
    """
    return jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    )


@dataclasses.dataclass(frozen=True)
class Method:
    """Base method: joint training (cross-entropy of the fused logits only).

    Attributes:
      name: registry name, written to results.json.
      placement: 'gradients' (before the base optimiser) or 'updates' (after it) for the
        method's gradient transformation.
    """

    name: str = "joint"
    placement: Literal["gradients", "updates"] = "gradients"

    def loss(self, outputs: Any, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Training loss and its named parts.

        Args:
          outputs: the model's `ModelOutput` (logits [B, K], unimodal_logits {m: [B, K]}).
          labels: [B] integer labels.

        Returns:
          (scalar loss, {'loss/<part>': scalar}).
        """
        fused = cross_entropy(outputs.logits, labels)
        return fused, {"loss/fused": fused}

    def update_kwargs(self, outputs: Any, labels: jax.Array) -> dict[str, Any]:
        """Extra keyword arguments for the optimiser's `update` (none by default)."""
        del outputs, labels
        return {}

    def gradient_transform(
        self, params: PyTree, patterns: Mapping[str, list[str]]
    ) -> optax.GradientTransformation | None:
        """The method's gradient transformation, given the params and modality patterns."""
        del params, patterns
        return None
