"""mlb_jax: modality-balanced multimodal learning in JAX, Flax NNX and optax.

The public contract (see DESIGN.md) is re-exported here: the balancing core needs only jax,
optax and numpy, so ``import mlb_jax`` stays light.
"""

from mlb_jax.balancing import (
    MLBState,
    balancing_state,
    mlb_coefficients,
    mlb_gradient_transform,
    modality_masks,
    modality_scores,
)

__version__ = "0.1.0"

__all__ = [
    "MLBState",
    "balancing_state",
    "mlb_coefficients",
    "mlb_gradient_transform",
    "modality_masks",
    "modality_scores",
]
