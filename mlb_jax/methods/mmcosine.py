"""MMCosine: cosine-normalised late-fusion logits (docs/METHODS.md (mmcosine)).

The forward pass replaces the late-linear fusion by
    u_m[i, k] = s * cos(x_{m,i}, w_{m,k}),   z = sum_m u_m   (no bias),
where x_m is modality m's pooled feature and w_{m,k} the k-th class column of the fusion's
kernel block `fusion/linear/<m>/kernel` [D_m, K]; both are L2-normalised, so every modality's
logits live in [-s, s] and no modality can dominate the sum through feature or weight norms.
The loss is CE(z) (the default `Method.losses`); the unimodal heads and the fusion bias are
unused and receive no gradient.

Generalises to M > 2: yes (one block per modality, summed).

Deliberate differences from the reference:
* The scaling s is `config.method.mmcosine.scaling` and it takes effect (in MLB the command
  line flag is written where the model never reads it, so the scaling is always the default).
* `unimodal_logits` are the per-modality cosine logits u_m (what the method balances), not the
  unused unimodal heads, so per-modality accuracies are those of u_m.
* Requires `model.fusion = 'late_linear'` (MLB's `mmcosine: true` is defined on it too).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from mlb_jax.methods.base import Method
from mlb_jax.methods.config import method_from_config
from mlb_jax.methods.space import Dimension, LogUniform
from mlb_jax.models.fusion import LateLinearFusion
from mlb_jax.models.multimodal import ModelOutput

PyTree = Any
# torch.nn.functional.normalize's floor of the norm.
NORM_EPS = 1e-12


def l2_normalize(x: jax.Array, axis: int) -> jax.Array:
    """Divides x by max(||x||_2, 1e-12) along `axis` (torch.nn.functional.normalize)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, NORM_EPS)


def cosine_logits(
    features: Mapping[str, jax.Array], kernels: Mapping[str, jax.Array], scaling: float
) -> dict[str, jax.Array]:
    """u_m = s * cos(x_m, w_{m,k}) for every modality and class.

    Args:
      features: modality -> [B, D_m].
      kernels: modality -> [D_m, K] (class k's weight vector is column k).
      scaling: s.

    Returns:
      modality -> [B, K] in [-s, s].
    """
    return {
        name: scaling * (l2_normalize(x, axis=-1) @ l2_normalize(kernels[name], axis=0))
        for name, x in features.items()
    }


@dataclasses.dataclass(frozen=True)
class MMCosine(Method):
    """Cosine-normalised late fusion (see the module docstring).

    Attributes:
      scaling: s > 0, the logit scale (MLB configs 10, BalanceBenchmark 15).
    """

    name: str = "mmcosine"
    scaling: float = 10.0

    config_block: ClassVar[str | None] = "mmcosine"
    block_fields: ClassVar[tuple[str, ...]] = ("scaling",)
    search_space: ClassVar[Mapping[str, Dimension]] = {
        **Method.search_space,
        "scaling": LogUniform(2.0, 40.0),
    }
    traced_fields: ClassVar[tuple[str, ...]] = ("scaling",)

    def validate(self) -> None:
        """Method's checks plus scaling > 0."""
        super().validate()
        self.require("scaling", self.scaling > 0, "> 0")

    def forward(
        self, model: Any, inputs: Mapping[str, jax.Array], *, train: bool, method_state: PyTree
    ) -> ModelOutput:
        """Encoders, then cosine logits from the late-linear fusion's kernel blocks.

        Args:
          model: a `MultimodalClassifier` with late_linear fusion.
          inputs: modality -> batch.
          train: BatchNorm batch statistics (and their update) if True.
          method_state: unused.

        Returns:
          `ModelOutput(logits=z [B, K], unimodal_logits={m: u_m [B, K]},
          features={m: [B, D_m]})`.

        Raises:
          ValueError: if the fusion head is not late_linear, or an input is missing.
        """
        del method_state
        if not isinstance(model.fusion, LateLinearFusion):
            raise ValueError(
                "mmcosine needs config.model.fusion='late_linear' (it normalises the late "
                f"fusion's per-modality weights), got {type(model.fusion).__name__}"
            )
        features = model.encode(inputs, train=train)
        u = self._cosine_logits(model, features)
        return ModelOutput(sum(u.values()), u, features)

    def _cosine_logits(self, model: Any, features: Mapping[str, jax.Array]) -> dict:
        kernels = {n: model.fusion.linear[n].kernel[...] for n in features}
        return cosine_logits(features, kernels, self.scaling)

    def fuse(
        self, model: Any, features: Mapping[str, jax.Array], *, method_state: PyTree
    ) -> jax.Array:
        """Fused logits sum_m u_m (the cosine logits of `forward`) from features {m: [B, D_m]}."""
        del method_state
        return sum(self._cosine_logits(model, features).values())


def make_mmcosine(config: Any) -> MMCosine:
    """Builds MMCosine from `config.method` (block `mmcosine`: scaling)."""
    return method_from_config(MMCosine, config)
