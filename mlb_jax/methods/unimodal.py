"""Unimodal training: one modality's encoder and classifier alone (the paper's unimodal rows).

The model is built with that modality only; its classifier is the modality's unimodal head
(one linear layer on the encoder's pooled feature), trained with cross-entropy; the other
modalities are neither built nor decoded. See docs/METHODS.md
(unimodal-ensemble-and-pretrained-fusion).
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax

from mlb_jax.methods.base import Method
from mlb_jax.methods.config import method_from_config


@dataclasses.dataclass(frozen=True)
class Unimodal(Method):
    """Joint training of a one-modality model.

    Attributes:
      modality: the modality trained (a key of config.model.modalities), set with
        `--config.method.modality=audio`.
    """

    name: str = "unimodal"
    modality: str = ""

    top_level_fields: ClassVar[tuple[str, ...]] = ("modality",)

    def validate(self) -> None:
        """Method's checks and a non-empty modality name."""
        super().validate()
        self.require(
            "modality",
            isinstance(self.modality, str) and bool(self.modality),
            "the modality to train, e.g. --config.method.modality=audio",
        )

    def used_modalities(self, available: Sequence[str]) -> list[str]:
        """[modality], after checking that the model config has it."""
        if self.modality not in available:
            raise ValueError(
                f"config.method.modality={self.modality!r} is not one of the modalities "
                f"{list(available)} (config.model.modalities)"
            )
        return [self.modality]

    def forward(
        self, model: Any, inputs: Mapping[str, jax.Array], *, train: bool, method_state: Any
    ) -> Any:
        """The model's outputs with the modality's unimodal head as the classifier.

        The head (`heads/<m>`) is trained and reported as the run's logits, so the encoder
        and head that pretrained fusion copies from this run are both trained, as the
        reference's unimodal encoders carry their own classifier; the one-modality fusion
        layer is built but unused.
        """
        del method_state
        outputs = model(inputs, train=train)
        return outputs._replace(logits=outputs.unimodal_logits[self.modality])

    def fuse(self, model: Any, features: Mapping[str, jax.Array], *, method_state: Any) -> Any:
        """The modality's head on its feature, as `forward` computes the logits."""
        del method_state
        return model.heads[self.modality](features[self.modality])


def make_unimodal(config: Any) -> Unimodal:
    """Builds unimodal training from `config.method` (top-level field: modality)."""
    return method_from_config(Unimodal, config)
