"""Multi-loss training: fused cross-entropy plus one per unimodal head.

See docs/METHODS.md (joint-and-multiloss).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax

from mlb_jax.methods.base import Losses, Method, cross_entropy
from mlb_jax.methods.config import method_from_config
from mlb_jax.methods.space import Dimension, LogUniform


@dataclasses.dataclass(frozen=True)
class MultiLoss(Method):
    """L = CE(fused) + w * sum_m CE(unimodal head m).

    Attributes:
      unimodal_weight: w, the weight of every unimodal cross-entropy (1 in the paper; >= 0).
    """

    name: str = "multiloss"
    unimodal_weight: float = 1.0

    top_level_fields: ClassVar[tuple[str, ...]] = ("unimodal_weight",)
    search_space: ClassVar[Mapping[str, Dimension]] = {
        **Method.search_space,
        "unimodal_weight": LogUniform(0.25, 4.0),
    }
    traced_fields: ClassVar[tuple[str, ...]] = ("unimodal_weight",)

    def validate(self) -> None:
        """Method's checks and unimodal_weight >= 0."""
        super().validate()
        self.require("unimodal_weight", self.unimodal_weight >= 0, ">= 0")

    def losses(self, outputs: Any, labels: jax.Array, method_state: Any) -> Losses:
        """{'fused': CE(fused), '<m>': CE(unimodal head m) for every modality}."""
        del method_state
        losses = {"fused": cross_entropy(outputs.logits, labels)}
        for name, logits in outputs.unimodal_logits.items():
            losses[name] = cross_entropy(logits, labels)
        return losses

    def combine(self, losses: Losses) -> jax.Array:
        """CE(fused) + w * sum of the unimodal cross-entropies."""
        unimodal = sum(v for k, v in losses.items() if k != "fused")
        return losses["fused"] + self.unimodal_weight * unimodal


def make_multiloss(config: Any) -> MultiLoss:
    """Builds multi-loss from `config.method` (top-level field: unimodal_weight)."""
    return method_from_config(MultiLoss, config)
