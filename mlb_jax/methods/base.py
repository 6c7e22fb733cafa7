"""The method interface: what a balancing method supplies to the generic train step.

A method (DESIGN decision 4) is a small frozen object that owns
  * its forward pass (`forward`; default: the model's own, e.g. AGM masks inputs here),
  * its named losses from the model outputs (`losses`) and how they combine (`combine`),
  * how gradients are formed from them (`value_and_grad`; default: gradient of the combined
    loss; MMPareto-like methods combine per-loss gradients here),
  * its per-step inputs to the optimiser (`update_kwargs`, e.g. MLB's modality scores),
  * its gradient transformation (`gradient_transform`, None when it has none) and where it sits
    relative to the base optimiser (`placement`),
  * optional per-epoch state (`init_state`, `end_of_epoch`): arrays kept in the train state,
    so they are checkpointed and restored with it, and updated on the host between epochs.
The train step calls these and never branches on a method's name.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import jax
import jax.numpy as jnp
import optax

PyTree = Any
Losses = dict[str, jax.Array]


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


class EpochContext(Protocol):
    """What `end_of_epoch` may use: the epoch index, predictions of a split, the model."""

    epoch: int

    def predict(self, split: str) -> dict[str, Any]:
        """{'labels', 'logits', 'unimodal_logits', 'features'} of every example of `split`."""
        ...

    def model(self) -> Any:
        """The model with the current parameters and statistics (for eval-mode use)."""
        ...


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

    def init_state(self, modalities: list[str], num_classes: int) -> PyTree:
        """Initial per-epoch method state (a pytree of arrays; empty by default)."""
        del modalities, num_classes
        return {}

    def forward(
        self, model: Any, inputs: Mapping[str, jax.Array], *, train: bool, method_state: PyTree
    ) -> Any:
        """The forward pass used in training and evaluation (default: the model's)."""
        del method_state
        return model(inputs, train=train)

    def losses(self, outputs: Any, labels: jax.Array, method_state: PyTree) -> Losses:
        """Named scalar losses, e.g. {'fused': CE(fused logits)}.

        Args:
          outputs: the forward pass's output (`ModelOutput`: logits [B, K],
            unimodal_logits {m: [B, K]}, features {m: [B, D]}).
          labels: [B] integer labels.
          method_state: the per-epoch method state.
        """
        del method_state
        return {"fused": cross_entropy(outputs.logits, labels)}

    def combine(self, losses: Losses) -> jax.Array:
        """The scalar training loss from the named losses (default: their sum)."""
        return sum(losses.values())

    def value_and_grad(
        self, losses_fn: Callable[[PyTree], tuple[Losses, Any]], params: PyTree
    ) -> tuple[tuple[jax.Array, Losses, Any], PyTree]:
        """((loss, losses, aux), grads) for `losses_fn(params) -> (losses, aux)`.

        The default differentiates `combine(losses)`; override to combine per-loss gradients.
        """

        def total(p):
            losses, aux = losses_fn(p)
            return self.combine(losses), (losses, aux)

        (loss, (losses, aux)), grads = jax.value_and_grad(total, has_aux=True)(params)
        return (loss, losses, aux), grads

    def update_kwargs(self, outputs: Any, labels: jax.Array, method_state: PyTree) -> dict:
        """Extra keyword arguments for the optimiser's `update` (none by default)."""
        del outputs, labels, method_state
        return {}

    def gradient_transform(
        self, params: PyTree, patterns: Mapping[str, list[str]]
    ) -> optax.GradientTransformation | None:
        """The method's gradient transformation, given the params and modality patterns."""
        del params, patterns
        return None

    def end_of_epoch(self, method_state: PyTree, context: EpochContext) -> PyTree:
        """Host-side update of the per-epoch state after each epoch (default: unchanged)."""
        del context
        return method_state
