"""MLB: multi-loss plus per-modality gradient scaling from unimodal scores (docs/METHODS.md (mlb)).

The loss is the multi-loss; every step the unimodal heads' scores (mean true-class
probability, from the same train-mode forward pass) are handed to the MLB rule over the
balancing core, which multiplies each modality's encoder, unimodal head and own fusion block
by k_m. The shared fusion bias is never scaled.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import optax

from mlb_jax.balancing import (
    SCORE_FUNCTIONS,
    mlb_rule,
    modality_labels,
    modality_scores,
    scale_by_modality,
)
from mlb_jax.methods.base import Method
from mlb_jax.methods.config import method_from_config
from mlb_jax.methods.multiloss import MultiLoss
from mlb_jax.methods.space import Choice, Dimension, LogUniform


@dataclasses.dataclass(frozen=True)
class MLB(MultiLoss):
    """Multi-Loss Balanced gradient modulation.

    Attributes:
      alpha: tanh steepness of the coefficient rule (>= 0).
      beta_max: acceleration cap (>= 0; 2 = the paper's default rule).
      score: 'probability' (paper) or 'accuracy' (a key of `SCORE_FUNCTIONS`).
      score_ema: EMA decay of the scores in [0, 1) (0 = per-step scores, as the paper).
    """

    name: str = "mlb"
    alpha: float = 1.0
    beta_max: float = 2.0
    score: str = "probability"
    score_ema: float = 0.0

    top_level_fields: ClassVar[tuple[str, ...]] = (
        "unimodal_weight",
        "alpha",
        "beta_max",
        "score",
        "score_ema",
        "placement",
    )
    # The reference tuned alpha in 0.5-5 and beta_max in 0.5-20 (docs/METHODS.md).
    search_space: ClassVar[Mapping[str, Dimension]] = {
        **Method.search_space,
        "alpha": LogUniform(0.5, 5.0),
        "beta_max": Choice((1.0, 2.0, 4.0, 8.0, 20.0)),
        "placement": Choice(("gradients", "updates")),
    }
    # alpha and beta_max reach the rule as the update arguments mlb_alpha / mlb_beta_max.
    traced_fields: ClassVar[tuple[str, ...]] = ("unimodal_weight", "alpha", "beta_max")

    def validate(self) -> None:
        """Multi-loss checks plus the ranges of MLB's hyper-parameters."""
        super().validate()
        self.require("alpha", self.alpha >= 0, ">= 0")
        self.require("beta_max", self.beta_max >= 0, ">= 0")
        self.require("score", self.score in SCORE_FUNCTIONS, f"one of {sorted(SCORE_FUNCTIONS)}")
        self.require("score_ema", 0 <= self.score_ema < 1, "in [0, 1)")

    def update_kwargs(self, outputs: Any, labels: jax.Array, method_state: Any) -> dict[str, Any]:
        """The step's modality scores from the unimodal heads, and alpha and beta_max.

        alpha and beta_max travel as update arguments (`mlb_rule`'s mlb_alpha, mlb_beta_max),
        so a copy of the method with traced values (`with_settings`) reaches the rule.
        """
        del method_state
        return {
            "modality_scores": modality_scores(outputs.unimodal_logits, labels, kind=self.score),
            "mlb_alpha": self.alpha,
            "mlb_beta_max": self.beta_max,
        }

    def gradient_transform(
        self, params: Any, patterns: Mapping[str, list[str]]
    ) -> optax.GradientTransformation:
        """The MLB rule over labels built from the model's modality patterns."""
        return scale_by_modality(
            modality_labels(params, patterns),
            mlb_rule(alpha=self.alpha, beta_max=self.beta_max, score_ema=self.score_ema),
            modalities=list(patterns),
        )


def make_mlb(config: Any) -> MLB:
    """Builds MLB from `config.method` (alpha, beta_max, score, score_ema, placement, ...)."""
    return method_from_config(MLB, config)
