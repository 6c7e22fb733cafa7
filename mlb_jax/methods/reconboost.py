"""ReconBoost: alternating per-epoch boosting of one modality at a time.

See docs/METHODS.md (reconboost).

The model is the ensemble of the unimodal heads, z = sum_m u_m (MLB's `Base_Ensemble_Model`;
the fusion head is unused). Epochs follow a cycle of M * (E + S) stages: for each modality m
in the config's order, E epochs boost m, then S ensemble epochs (M = 2: [E boost audio]
[S ensemble] [E boost video] [S ensemble], MLB's cycle of 2E + 2S).

* Boosting epoch for m (p_m = softmax(u_m), q = stop_gradient(softmax(z)), K classes):
      L = mean_i (w1 - w2 q_i[y_i]) / K * (-ln p_m[i, y_i]) + alpha * GA_m,
      GA_m = mean_{j != m} MSE(p_m, stop_gradient(p_j)),
  and only m's parameters (encoder, head) move: `freeze_transform` zeroes every other
  update after the base optimiser.
* Ensemble epoch: L = CE(z), all parameters move.

The stage is per-epoch state (`init_state`: {'stage': int32, 'slot': {m: int32}}), advanced in
`end_of_epoch` and checkpointed with the train state; a resumed run continues the cycle.

Generalises to M > 2: yes (the cycle visits every modality; GA averages over the others).

Deliberate differences from the reference:
* GA has a gradient: only the other modalities' side is detached, so it pulls p_m towards
  their predictions. In MLB and BalanceBenchmark both sides are detached and the term is a
  no-op; alpha = 0 reproduces that behaviour exactly.
* Freezing acts on the optimiser's output (placement 'updates', always: a different
  `config.method.placement` is refused), so frozen parameters do not move at all, weight
  decay included; the base optimiser's moments still see their (weight-decay-only)
  gradients, where PyTorch skips frozen tensors entirely.
* The logged loss `loss/fused` is CE(z) in every stage (a comparable monitor); `loss` is the
  stage's objective.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlb_jax.balancing import modality_labels
from mlb_jax.methods.base import EpochContext, Losses, Method, cross_entropy
from mlb_jax.methods.config import method_from_config
from mlb_jax.methods.space import Dimension, LogUniform
from mlb_jax.models.multimodal import ModelOutput

PyTree = Any
BOOST_PREFIX = "boost_"


def stage_flags(
    stage: jax.Array, slot: Mapping[str, jax.Array], boost_epochs: int, ensemble_epochs: int
) -> tuple[dict[str, jax.Array], jax.Array]:
    """Which modality a stage boosts, and whether it is an ensemble stage.

    Args:
      stage: int scalar position in the cycle [0, M * (E + S)).
      slot: modality -> its position in the cycle order.
      boost_epochs: E.
      ensemble_epochs: S.

    Returns:
      ({m: float32 1.0 if the stage boosts m else 0.0}, float32 1.0 if ensemble stage).
    """
    period = boost_epochs + ensemble_epochs
    block, offset = stage // period, stage % period
    boosting = offset < boost_epochs
    active = {m: (boosting & (block == s)).astype(jnp.float32) for m, s in slot.items()}
    return active, 1.0 - boosting.astype(jnp.float32)


def boosting_loss(
    logits: jax.Array, ensemble_logits: jax.Array, labels: jax.Array, *, w1: float, w2: float
) -> jax.Array:
    """mean_i (w1 - w2 q_i[y_i]) / K * (-ln softmax(logits)_i[y_i]), q = softmax(ensemble).

    This is MLB's -w1 mean_k(t_k ln p_k) + w2 mean_k(t_k q_k ln p_k) with one-hot t.

    Args:
      logits: [B, K] of the boosted modality.
      ensemble_logits: [B, K] (gradient-stopped here).
      labels: [B].
      w1: weight of the plain log-likelihood.
      w2: weight of the ensemble-confidence discount.

    Returns:
      Scalar float32.
    """
    num_classes = logits.shape[-1]
    idx = labels[:, None].astype(jnp.int32)
    q = jax.nn.softmax(jax.lax.stop_gradient(ensemble_logits).astype(jnp.float32), axis=-1)
    q_true = jnp.take_along_axis(q, idx, axis=-1)[:, 0]
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_p, idx, axis=-1)[:, 0]
    return jnp.mean((w1 - w2 * q_true) / num_classes * nll)


def agreement_loss(logits: Mapping[str, jax.Array], name: str) -> jax.Array:
    """GA_m = mean_{j != m} mean((softmax(u_m) - stop_gradient(softmax(u_j)))^2).

    Unlike the references (both sides detached: no gradient, the term is a no-op), the boosted
    modality's side keeps its gradient.
    """
    p = jax.nn.softmax(logits[name].astype(jnp.float32), axis=-1)
    terms = [
        jnp.mean(jnp.square(p - jax.lax.stop_gradient(jax.nn.softmax(o.astype(jnp.float32), -1))))
        for other, o in logits.items()
        if other != name
    ]
    return sum(terms) / len(terms)


def freeze_transform(labels: PyTree) -> optax.GradientTransformationExtraArgs:
    """Zeroes the updates of frozen modalities, driven by per-step flags.

    `update(updates, state, params=None, *, modality_trainable, shared_trainable, **extra)`:
    leaves labelled m are kept where `modality_trainable[m]` > 0 and zeroed otherwise; leaves
    labelled None (no modality) follow `shared_trainable`. Stateless.

    Args:
      labels: per-leaf modality labels like the params (see
        `mlb_jax.balancing.modality_labels`).

    Returns:
      The transformation.
    """

    def init_fn(params: PyTree) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(
        updates: PyTree,
        state: optax.EmptyState,
        params: PyTree | None = None,
        *,
        modality_trainable: Mapping[str, jax.Array],
        shared_trainable: jax.Array,
        **extra_args: Any,
    ) -> tuple[PyTree, optax.EmptyState]:
        del params, extra_args
        treedef = jax.tree.structure(updates)
        out = []
        for u, owner in zip(treedef.flatten_up_to(updates), treedef.flatten_up_to(labels)):
            keep = shared_trainable if owner is None else modality_trainable[owner]
            out.append(jnp.where(keep > 0, u, jnp.zeros_like(u)))
        return treedef.unflatten(out), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@dataclasses.dataclass(frozen=True)
class ReconBoost(Method):
    """Alternating boosting of one modality at a time (see the module docstring).

    Attributes:
      alpha: weight of the agreement term GA (>= 0).
      w1: weight of the boosted modality's log-likelihood.
      w2: weight of the ensemble-confidence discount.
      boost_epochs: E >= 1, consecutive boosting epochs per modality.
      ensemble_epochs: S >= 0, ensemble epochs after each modality's boosting.
    """

    name: str = "reconboost"
    placement: Literal["gradients", "updates"] = "updates"
    alpha: float = 0.5
    w1: float = 5.0
    w2: float = 1.0
    boost_epochs: int = 1
    ensemble_epochs: int = 1

    config_block: ClassVar[str | None] = "reconboost"
    block_fields: ClassVar[tuple[str, ...]] = (
        "alpha",
        "w1",
        "w2",
        "boost_epochs",
        "ensemble_epochs",
    )
    search_space: ClassVar[Mapping[str, Dimension]] = {
        **Method.search_space,
        "alpha": LogUniform(0.1, 2.0),
    }
    traced_fields: ClassVar[tuple[str, ...]] = ("alpha", "w1", "w2")
    unread_because: ClassVar[Mapping[str, str]] = {
        **Method.unread_because,
        "placement": "its freezing always acts on the optimiser's updates",
        "unimodal_weight": "its losses are the stage's boosting or ensemble loss",
    }

    def validate(self) -> None:
        """Method's checks plus the ranges of ReconBoost's settings; placement 'updates'."""
        super().validate()
        self.require("placement", self.placement == "updates", "'updates' (frozen = no step)")
        self.require("alpha", self.alpha >= 0, ">= 0")
        self.require("boost_epochs", self.boost_epochs >= 1, ">= 1")
        self.require("ensemble_epochs", self.ensemble_epochs >= 0, ">= 0")

    def init_state(self, modalities: Sequence[str], num_classes: int) -> dict[str, Any]:
        """Stage 0 (boost the first modality); each modality's slot in the cycle order."""
        del num_classes
        return {
            "stage": np.zeros([], np.int32),
            "slot": {m: np.asarray(i, np.int32) for i, m in enumerate(modalities)},
        }

    def end_of_epoch(self, method_state: PyTree, context: EpochContext) -> dict[str, Any]:
        """Advances the stage by one epoch, cyclically over M * (E + S) stages."""
        del context
        period = len(method_state["slot"]) * (self.boost_epochs + self.ensemble_epochs)
        stage = (int(method_state["stage"]) + 1) % period
        return {"stage": np.asarray(stage, np.int32), "slot": method_state["slot"]}

    def forward(
        self, model: Any, inputs: Mapping[str, jax.Array], *, train: bool, method_state: PyTree
    ) -> ModelOutput:
        """Encoders and unimodal heads; logits z = sum_m u_m (the fusion head is not run).

        Returns:
          `ModelOutput(logits=z [B, K], unimodal_logits={m: u_m}, features={m: [B, D_m]})`.
        """
        del method_state
        names = list(model.modality_names)
        features = model.encode(inputs, train=train)
        logits = {n: model.heads[n](features[n]) for n in names}
        return ModelOutput(sum(logits.values()), logits, features)

    def fuse(
        self, model: Any, features: Mapping[str, jax.Array], *, method_state: PyTree
    ) -> jax.Array:
        """Fused logits sum_m u_m, the unimodal heads' logits summed (as `forward`)."""
        del method_state
        return sum(model.heads[n](x) for n, x in features.items())

    def losses(self, outputs: ModelOutput, labels: jax.Array, method_state: PyTree) -> Losses:
        """The monitor, the ensemble loss and one boosting loss per modality.

        Returns:
          {'fused': CE(z) (monitor, not trained on), 'ensemble': [ensemble stage] * CE(z),
          'boost_<m>': [stage boosts m] * (boosting loss + alpha * GA_m)}.
        """
        active, ensemble = stage_flags(
            method_state["stage"], method_state["slot"], self.boost_epochs, self.ensemble_epochs
        )
        fused = cross_entropy(outputs.logits, labels)
        losses = {"fused": fused, "ensemble": ensemble * fused}
        for name, u in outputs.unimodal_logits.items():
            boost = boosting_loss(u, outputs.logits, labels, w1=self.w1, w2=self.w2)
            ga = agreement_loss(outputs.unimodal_logits, name)
            losses[BOOST_PREFIX + name] = active[name] * (boost + self.alpha * ga)
        return losses

    def combine(self, losses: Losses) -> jax.Array:
        """The stage's objective: everything but the 'fused' monitor."""
        return sum(v for k, v in losses.items() if k != "fused")

    def update_kwargs(
        self, outputs: ModelOutput, labels: jax.Array, method_state: PyTree
    ) -> dict[str, Any]:
        """Which parameters may move this step (from the stage)."""
        del outputs, labels
        active, ensemble = stage_flags(
            method_state["stage"], method_state["slot"], self.boost_epochs, self.ensemble_epochs
        )
        return {
            "modality_trainable": {m: jnp.maximum(a, ensemble) for m, a in active.items()},
            "shared_trainable": ensemble,
        }

    def gradient_transform(
        self, params: PyTree, patterns: Mapping[str, list[str]]
    ) -> optax.GradientTransformation:
        """`freeze_transform` over the model's modality labels."""
        return freeze_transform(modality_labels(params, patterns))


def make_reconboost(config: Any) -> ReconBoost:
    """Builds ReconBoost from `config.method` (block `reconboost`: alpha, w1, w2, epochs)."""
    return method_from_config(ReconBoost, config)
