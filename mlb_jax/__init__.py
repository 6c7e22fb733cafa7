"""mlb_jax: modality-balanced multimodal learning in JAX, Flax NNX and optax.

The balancing API is re-exported here (the optax transform `mlb_gradient_transform`, the
coefficients `mlb_coefficients`, the scores `modality_scores`, parameter ownership
`modality_masks` / `modality_labels`, the scaling core `scale_by_modality` and its state
`BalancingState`); it needs only jax, optax and numpy, so ``import mlb_jax`` stays light.
`MLBState` is a deprecated alias of `BalancingState`.
"""

from mlb_jax.balancing import (
    BalancingState,
    MLBState,
    balancing_metrics,
    balancing_state,
    mlb_coefficients,
    mlb_gradient_transform,
    modality_labels,
    modality_masks,
    modality_scores,
    scale_by_modality,
)

__version__ = "0.1.0"

__all__ = [
    "BalancingState",
    "MLBState",
    "balancing_metrics",
    "balancing_state",
    "mlb_coefficients",
    "mlb_gradient_transform",
    "modality_labels",
    "modality_masks",
    "modality_scores",
    "scale_by_modality",
]
