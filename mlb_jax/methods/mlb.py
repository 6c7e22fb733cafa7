"""MLB: multi-loss plus per-modality gradient scaling from unimodal scores (METHODS.md §3.3).

The loss is the multi-loss; every step the unimodal heads' scores (mean true-class
probability, from the same train-mode forward pass) are handed to
`mlb_gradient_transform`, which multiplies each modality's encoder, unimodal head and own
fusion block by k_m. The shared fusion bias is never scaled.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import optax

from mlb_jax.balancing import mlb_gradient_transform, modality_masks, modality_scores
from mlb_jax.methods.multiloss import MultiLoss


@dataclasses.dataclass(frozen=True)
class MLB(MultiLoss):
    """Multi-Loss Balanced gradient modulation.

    Attributes:
      alpha: tanh steepness of the coefficient rule.
      beta_max: acceleration cap (2 = the paper's default rule).
      score: 'probability' (paper) or 'accuracy'.
      score_ema: EMA decay of the scores (0 = per-step scores, as the paper).
    """

    name: str = "mlb"
    alpha: float = 1.0
    beta_max: float = 2.0
    score: str = "probability"
    score_ema: float = 0.0

    def update_kwargs(self, outputs: Any, labels: jax.Array, method_state: Any) -> dict[str, Any]:
        """The step's modality scores from the unimodal heads."""
        del method_state
        return {
            "modality_scores": modality_scores(outputs.unimodal_logits, labels, kind=self.score)
        }

    def gradient_transform(
        self, params: Any, patterns: Mapping[str, list[str]]
    ) -> optax.GradientTransformation:
        """`mlb_gradient_transform` over masks built from the model's modality patterns."""
        return mlb_gradient_transform(
            modality_masks(params, patterns),
            alpha=self.alpha,
            beta_max=self.beta_max,
            score_ema=self.score_ema,
        )


def make_mlb(config) -> MLB:
    """Builds MLB from `config.method` (alpha, beta_max, score, score_ema, placement, ...)."""
    return MLB(
        unimodal_weight=float(config.get("unimodal_weight", 1.0)),
        alpha=float(config.alpha),
        beta_max=float(config.get("beta_max", 2.0)),
        score=str(config.get("score", "probability")),
        score_ema=float(config.get("score_ema", 0.0)),
        placement=str(config.get("placement", "gradients")),
    )
