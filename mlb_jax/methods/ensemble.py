"""The ensemble of unimodal runs: no training, the sum of their (standardised) logits.

The reference's `ens` configs build `Base_Ensemble_Model` from the unimodal checkpoints and
train for 0 epochs: z = n(u_audio) + n(u_video) with `norm_decision: "standardization"`.
The evaluation itself lives in mlb_jax/ensemble.py; this class holds and checks the settings.
See docs/METHODS.md (unimodal-ensemble-and-pretrained-fusion).
"""

import dataclasses
from typing import Any, ClassVar, Literal

from mlb_jax.methods.base import Method
from mlb_jax.methods.config import method_from_config


@dataclasses.dataclass(frozen=True)
class Ensemble(Method):
    """Settings of the ensemble of finished unimodal runs.

    Attributes:
      workdirs: modality -> run directory of a finished `unimodal` run of that modality
        (`config.method.ensemble.workdirs`; the compare runner fills it).
      norm: 'standardization' (the reference's `norm_decision`): each member's logits minus
        their mean, over their standard deviation (one scalar each, over the whole split's
        N x K logits), then summed; 'none': the plain sum.
    """

    name: str = "ensemble"
    workdirs: tuple[tuple[str, str], ...] = ()
    norm: Literal["standardization", "none"] = "standardization"

    config_block: ClassVar[str | None] = "ensemble"
    block_fields: ClassVar[tuple[str, ...]] = ("workdirs", "norm")
    trains: ClassVar[bool] = False

    def validate(self) -> None:
        """Method's checks, two or more members and a known norm."""
        super().validate()
        self.require(
            "workdirs",
            len(self.workdirs) >= 2 and all(isinstance(d, str) and d for _, d in self.workdirs),
            "a mapping modality -> finished unimodal run directory, for two or more modalities",
        )
        self.require("norm", self.norm in ("standardization", "none"), "standardization or none")


def make_ensemble(config: Any) -> Ensemble:
    """Builds the ensemble's settings from `config.method.ensemble`."""
    return method_from_config(Ensemble, config)
