"""Multi-loss training: fused cross-entropy plus one per unimodal head (METHODS.md §3.2)."""

import dataclasses
from typing import Any

import jax

from mlb_jax.methods.base import Method, cross_entropy


@dataclasses.dataclass(frozen=True)
class MultiLoss(Method):
    """L = CE(fused) + w * sum_m CE(unimodal head m).

    Attributes:
      unimodal_weight: w, the weight of every unimodal cross-entropy (1 in the paper).
    """

    name: str = "multiloss"
    unimodal_weight: float = 1.0

    def loss(self, outputs: Any, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Fused plus weighted unimodal cross-entropies; parts reported per modality."""
        fused = cross_entropy(outputs.logits, labels)
        parts = {"loss/fused": fused}
        total = fused
        for name, logits in outputs.unimodal_logits.items():
            parts[f"loss/{name}"] = cross_entropy(logits, labels)
            total = total + self.unimodal_weight * parts[f"loss/{name}"]
        return total, parts


def make_multiloss(config) -> MultiLoss:
    """Builds multi-loss from `config.method` (field: unimodal_weight)."""
    return MultiLoss(unimodal_weight=float(config.get("unimodal_weight", 1.0)))
