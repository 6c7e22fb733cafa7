"""Balancing core: scores, MLB coefficients, parameter masks and the optax transform.

Imports only jax, optax and numpy, so it can be used in any optax pipeline.
"""

from mlb_jax.balancing.coefficients import SCORE_EPS, mlb_coefficients, mlb_ratios
from mlb_jax.balancing.masks import (
    modality_masks,
    parameter_paths,
    path_string,
    unclaimed_parameters,
)
from mlb_jax.balancing.scores import SCORE_FUNCTIONS, modality_scores
from mlb_jax.balancing.transform import (
    MLBState,
    balancing_metrics,
    balancing_state,
    chain_with_balancing,
    mlb_gradient_transform,
)

__all__ = [
    "SCORE_EPS",
    "SCORE_FUNCTIONS",
    "MLBState",
    "balancing_metrics",
    "balancing_state",
    "chain_with_balancing",
    "mlb_coefficients",
    "mlb_gradient_transform",
    "mlb_ratios",
    "modality_masks",
    "modality_scores",
    "parameter_paths",
    "path_string",
    "unclaimed_parameters",
]
