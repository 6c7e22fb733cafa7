"""The method interface: what a balancing method supplies to the generic train step.

A method is a small frozen object, one file per method under mlb_jax/methods/, that owns
  * its forward pass (`forward`; default: the model's own; AGM adds its coalition passes),
  * its named losses from the model outputs (`losses`) and how they combine (`combine`),
  * how gradients are formed from them (`value_and_grad`; default: gradient of the combined
    loss; MMPareto-like methods combine per-loss gradients here),
  * its per-step inputs to the optimiser (`update_kwargs`, e.g. MLB's modality scores),
  * its gradient transformation (`gradient_transform`, None when it has none) and where it sits
    relative to the base optimiser (`placement`),
  * optional per-epoch state (`init_state`, `end_of_epoch`): arrays kept in the train state,
    so they are checkpointed and restored with it, and updated on the host between epochs.
The train step calls these and never branches on a method's name.

Its dataclass fields are its settings: built from `config.method` by
`mlb_jax.methods.config.method_from_config` (the class says which block and which top-level
fields it reads), checked by `validate()` at construction, and `dataclasses.asdict(method)`
is the JSON-serialisable record of every setting it uses.
"""

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Protocol

import jax
import jax.numpy as jnp
import optax

from mlb_jax.methods.space import Dimension, Scaled

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

    def split_size(self, split: str) -> int:
        """The number of examples of `split` (what `indices` of `predict` index into)."""
        ...

    def predict(self, split: str, indices: Any = None) -> dict[str, Any]:
        """Eval-mode predictions of `split`, with the current parameters and statistics.

        Args:
          split: the split's name (e.g. config.data.train_split).
          indices: None for every example, or a sorted int array of positions in the split's
            stored order (0 <= i < `split_size(split)`): only those examples are predicted,
            in that order.

        Returns:
          {'labels': [N], 'logits': [N, K], 'unimodal_logits': {m: [N, K]},
          'features': {m: [N, D_m]}} (host arrays), N = len(indices) or the split's size.
        """
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

    # How `method_from_config` reads the settings (see mlb_jax/methods/config.py):
    # the block config.method.<config_block> holding `block_fields` (None: no block) ...
    config_block: ClassVar[str | None] = None
    block_fields: ClassVar[tuple[str, ...]] = ()
    # ... and the fields read from config.method itself.
    top_level_fields: ClassVar[tuple[str, ...]] = ()
    # False for a method that trains nothing and combines finished runs (mlb_jax/ensemble.py).
    trains: ClassVar[bool] = True
    # Why a shared top-level field the method does not read has no effect (the error text).
    unread_because: ClassVar[Mapping[str, str]] = {
        "placement": "it has no gradient transformation",
        "unimodal_weight": "it has no unimodal cross-entropy losses",
        "modality": "it trains every modality; only method 'unimodal' reads it",
    }
    # What `mlb_jax.tune` searches: a setting of this method (a field it reads) or a config
    # path with a dot (e.g. 'train.lr') -> its dimension (mlb_jax/methods/space.py). Every
    # method tunes the learning rate around the config's; subclasses add their own settings.
    search_space: ClassVar[Mapping[str, Dimension]] = {"train.lr": Scaled(1 / 3, 3.0)}
    # Float settings the train step may receive as traced scalars (`with_settings`): the
    # method only computes with them inside the step (no Python branch, no shape, nothing
    # built once from them), so the members of a vmapped sweep each hold their own.
    traced_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.validate()

    def with_settings(self, values: Mapping[str, jax.Array]) -> "Method":
        """A copy of the method whose `traced_fields` in `values` are the given (traced) scalars.

        The copy is not validated (a tracer has no value to check): the caller holds a
        validated method with every value (`mlb_jax.sweep` builds one per member).

        Args:
          values: field -> float32 [] scalar, each a member of `traced_fields`.

        Raises:
          ValueError: naming the config field, for a field the step cannot take traced.
        """
        unknown = sorted(set(values) - set(self.traced_fields))
        if unknown:
            raise ValueError(
                f"{', '.join(self.setting_path(f) for f in unknown)} of method {self.name!r} "
                "shapes the train step and cannot be traced; traced settings: "
                f"{', '.join(self.setting_path(f) for f in self.traced_fields) or 'none'}"
            )
        out = copy.copy(self)
        for field, value in values.items():
            object.__setattr__(out, field, value)  # frozen: bypass __setattr__, not validate
        return out

    def setting_path(self, field: str) -> str:
        """Where `field` is set in the config, e.g. 'config.method.ogm.alpha'."""
        if field in self.block_fields and self.config_block:
            return f"config.method.{self.config_block}.{field}"
        return f"config.method.{field}"

    def require(self, field: str, ok: bool, requirement: str) -> None:
        """Raises ValueError "<config path> must be <requirement>, got <value>" unless `ok`."""
        if not ok:
            raise ValueError(
                f"{self.setting_path(field)} must be {requirement}, got {getattr(self, field)!r}"
            )

    def refuse_unused(self, field: str, default: Any, reason: str) -> None:
        """Raises ValueError if `field` differs from `default` although `reason` makes it moot."""
        value = getattr(self, field)
        if value != default:
            raise ValueError(
                f"{self.setting_path(field)}={value!r} has no effect with method "
                f"{self.name!r} ({reason}): remove it"
            )

    def validate(self) -> None:
        """Checks every setting; raises ValueError naming the config field (see `require`).

        Subclasses extend it (calling `super().validate()`); it runs at construction.
        """
        self.require(
            "placement",
            self.placement in ("gradients", "updates"),
            "one of ['gradients', 'updates']",
        )
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float):
                self.require(field.name, math.isfinite(value), "a finite number")

    def used_modalities(self, available: Sequence[str]) -> list[str]:
        """The modalities the model is built with and the pipeline decodes (default: all).

        Args:
          available: the modalities of config.model.modalities, in order.

        Raises:
          ValueError: naming the config field, if the method asks for one that is not there.
        """
        return list(available)

    def warm_start(self, params: PyTree, rest: PyTree, num_classes: int) -> tuple[PyTree, PyTree]:
        """Initial (params, rest) replacing the random ones (default: unchanged).

        Called once when a run is set up (a resumed run then restores its checkpoint over it).

        Args:
          params: the model's freshly initialised parameters (an nnx.State).
          rest: the rest of the model's state (BatchNorm statistics, RNG counters).
          num_classes: K.
        """
        del num_classes
        return params, rest

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

    def fuse(
        self, model: Any, features: Mapping[str, jax.Array], *, method_state: PyTree
    ) -> jax.Array:
        """Eval-mode fused logits [B, K] from pooled features {m: [B, D_m]}.

        What `forward` computes from the encoders' features, so that evaluation can swap a
        modality's feature for an absent one without running the other encoders again
        (`mlb_jax.evaluation_passes`). Default: the model's fusion head; a method whose
        `forward` fuses otherwise (MMCosine, ReconBoost) overrides it.
        """
        del method_state
        return model.fusion(features, train=False)

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
