"""Balancing core: scores, coefficient rules, parameter labels and the optax transforms.

Imports only jax, optax and numpy, so it can be used in any optax pipeline.
"""

from mlb_jax.balancing.coefficients import SCORE_EPS, mlb_coefficients, mlb_ratios
from mlb_jax.balancing.core import (
    BalancingState,
    MLBState,
    balancing_metrics,
    balancing_state,
    chain_with_balancing,
    init_state,
    modality_values,
    scale_by_labels,
    scale_by_modality,
    value_at,
)
from mlb_jax.balancing.masks import (
    labels_from_masks,
    modality_labels,
    modality_masks,
    parameter_paths,
    path_string,
    unclaimed_parameters,
)
from mlb_jax.balancing.scores import SCORE_FUNCTIONS, modality_scores, top1_accuracy
from mlb_jax.balancing.transform import mlb_gradient_transform, mlb_rule

__all__ = [
    "SCORE_EPS",
    "SCORE_FUNCTIONS",
    "BalancingState",
    "MLBState",
    "balancing_metrics",
    "balancing_state",
    "chain_with_balancing",
    "init_state",
    "labels_from_masks",
    "mlb_coefficients",
    "mlb_gradient_transform",
    "mlb_ratios",
    "mlb_rule",
    "modality_labels",
    "modality_masks",
    "modality_scores",
    "modality_values",
    "parameter_paths",
    "path_string",
    "scale_by_labels",
    "scale_by_modality",
    "top1_accuracy",
    "unclaimed_parameters",
    "value_at",
]
