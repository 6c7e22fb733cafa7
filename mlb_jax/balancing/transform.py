"""MLB as an optax gradient transformation: the MLB coefficient rule over the scaling core.

`mlb_gradient_transform` multiplies every leaf selected by modality i's mask by
k_i = mlb_coefficients(scores)[i] and leaves all other leaves (a shared fusion bias, shared
layers) untouched. The scores of the current step arrive as the keyword extra argument
`modality_scores` of `update`, so the transform chains into any optax pipeline:

    tx = optax.chain(mlb_gradient_transform(masks, alpha=0.5, beta_max=10.0),
                     optax.sgd(1e-2, momentum=0.9))
    updates, opt_state = tx.update(grads, opt_state, params, modality_scores=scores)

With per-leaf labels instead of masks (see `modality_labels`), the same transform is
`scale_by_modality(labels, mlb_rule(alpha=..., beta_max=...), modalities=names)`.

Placement is explicit: chained *before* the base optimiser it scales raw gradients, as the
reference PyTorch code does; chained *after* it, it scales the optimiser's update, i.e. it
modulates each modality's learning rate (Eq. 2 of the paper). With plain SGD the two are the
same; with momentum they agree while k is constant over the momentum horizon; Adam normalises
away any constant gradient scale, so only the "after" placement changes Adam's step size.
`chain_with_balancing` builds either order.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import optax

from mlb_jax.balancing.coefficients import mlb_coefficients, validate_hyperparameters
from mlb_jax.balancing.core import (
    BalancingState,
    Rule,
    ScalarOrSchedule,
    modality_values,
    scale_by_modality,
    value_at,
)
from mlb_jax.balancing.masks import MaskOrFn, labels_from_masks


def mlb_rule(
    *, alpha: ScalarOrSchedule, beta_max: ScalarOrSchedule = 2.0, score_ema: float = 0.0
) -> Rule:
    """MLB's coefficient rule: k from the (optionally EMA-smoothed) `modality_scores`.

    Args:
      alpha: tanh steepness (>= 0), a number or an optax schedule of the update count.
      beta_max: cap on the acceleration of a lagging modality (>= 0), a number or a schedule.
      score_ema: decay in [0, 1) of an exponential moving average of the scores (0: each
        step's scores, as the paper). The first update has no history and uses its scores.

    Returns:
      A `Rule` reading the extra argument `modality_scores` (modality -> scalar score), and
      the optional `mlb_alpha` / `mlb_beta_max` (scalars, possibly traced), which replace
      alpha / beta_max for that update: `mlb_jax.sweep` vmaps members with their own values.

    Raises:
      ValueError: alpha < 0 or beta_max < 0 given as numbers, score_ema outside [0, 1).
    """
    validate_hyperparameters(
        0.0 if callable(alpha) else alpha, 0.0 if callable(beta_max) else beta_max
    )
    if not 0.0 <= score_ema < 1.0:
        raise ValueError(f"score_ema must be in [0, 1), got {score_ema}")

    def rule(
        modalities: Sequence[str], state: BalancingState, inputs: Mapping[str, Any]
    ) -> BalancingState:
        scores = modality_values(inputs, "modality_scores", modalities)
        first = state.count == 0
        smoothed = {
            n: jnp.where(first, s, score_ema * state.smoothed_scores[n] + (1 - score_ema) * s)
            for n, s in scores.items()
        }
        coefficients = mlb_coefficients(
            smoothed,
            alpha=inputs.get("mlb_alpha", value_at(alpha, state.count)),
            beta_max=inputs.get("mlb_beta_max", value_at(beta_max, state.count)),
        )
        return state._replace(scores=scores, smoothed_scores=smoothed, coefficients=coefficients)

    return rule


def mlb_gradient_transform(
    modality_masks: Mapping[str, MaskOrFn],
    *,
    alpha: ScalarOrSchedule,
    beta_max: ScalarOrSchedule = 2.0,
    score_ema: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Multi-Loss Balanced gradient modulation (MLB) as an optax transformation.

    Args:
      modality_masks: modality name -> boolean pytree with the structure of the params (or a
        callable params -> such a pytree), selecting the leaves modality i's coefficient
        scales (see `mlb_jax.modality_masks`). At least two modalities; masks must be disjoint.
      alpha: tanh steepness (>= 0), a number or an optax schedule of the update count.
        Works under `optax.inject_hyperparams` (pass masks as a static argument if they are
        callables).
      beta_max: cap on the acceleration of a lagging modality (>= 0; 2 = paper's default
        rule, 1 = no acceleration, < 1 slows it too), a number or a schedule.
      score_ema: decay in [0, 1) of an exponential moving average of the scores before the
        coefficients are computed; 0 (default) uses each step's scores as the paper does.

    Returns:
      An `optax.GradientTransformationExtraArgs` whose `update(updates, state, params=None, *,
      modality_scores, **extra_args)` takes modality name -> scalar score and ignores unknown
      extra arguments but `mlb_alpha` / `mlb_beta_max`, which replace alpha / beta_max for
      that update (see `mlb_rule`). The state is a `BalancingState`.

    Raises:
      ValueError: fewer than two modalities, alpha < 0, beta_max < 0, score_ema outside
        [0, 1); at init, masks that do not match the params or overlap (the parameters are
        named); at update, a score missing for a masked modality or one for an unknown modality.
    """
    names = list(modality_masks)
    if len(names) < 2:
        raise ValueError(
            f"mlb_gradient_transform needs masks for at least two modalities, got {names}"
        )
    rule = mlb_rule(alpha=alpha, beta_max=beta_max, score_ema=score_ema)
    return scale_by_modality(labels_from_masks(modality_masks), rule, modalities=names)
