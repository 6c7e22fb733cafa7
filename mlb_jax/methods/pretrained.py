"""Pretrained fusion: encoders initialised from finished unimodal runs, then a fused model.

`pre_frozen` keeps the encoders (and their unimodal heads) fixed and trains only the fusion
classifier; `pre_finetuned` trains everything. Both train the fused cross-entropy alone, as the
reference's `pre_frozen` / `pre_finetuned` configs do (loss weights combined 1, c 0, g 0).
See docs/METHODS.md (unimodal-ensemble-and-pretrained-fusion).
"""

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import optax

from mlb_jax.balancing.masks import modality_masks, parameter_paths
from mlb_jax.methods.base import Method, PyTree
from mlb_jax.methods.config import method_from_config


@dataclasses.dataclass(frozen=True)
class PretrainedFusion(Method):
    """Joint training from unimodal runs' encoders.

    Attributes:
      workdirs: modality -> run directory of a finished `unimodal` run of that modality, one
        per modality of the model (`config.method.pretrained.workdirs`; the compare runner
        fills it with the runs it trained first).
      freeze: keep the pretrained encoders and heads fixed (pre_frozen) or train them
        (pre_finetuned); fixed by the registry name.
    """

    name: str = "pre_finetuned"
    workdirs: tuple[tuple[str, str], ...] = ()
    freeze: bool = False

    config_block: ClassVar[str | None] = "pretrained"
    block_fields: ClassVar[tuple[str, ...]] = ("workdirs",)
    unread_because: ClassVar[Mapping[str, str]] = {
        **Method.unread_because,
        "placement": "its freezing transform sits after the base optimiser",
    }

    def validate(self) -> None:
        """Method's checks and at least one run directory."""
        super().validate()
        self.require(
            "workdirs",
            bool(self.workdirs) and all(isinstance(d, str) and d for _, d in self.workdirs),
            "a mapping modality -> finished unimodal run directory",
        )

    def warm_start(self, params: PyTree, rest: PyTree, num_classes: int) -> tuple[PyTree, PyTree]:
        """Params and statistics with each modality's encoder and head from its unimodal run.

        Raises:
          ValueError, FileNotFoundError: a modality without a run, a run that is missing, not
            a unimodal run of that modality, or trained with another model shape.
        """
        from mlb_jax import finished_runs  # it builds train states, which import the methods

        given = dict(self.workdirs)
        modalities = sorted(
            {p.split("/")[1] for p in parameter_paths(params) if p.startswith("encoders/")}
        )
        missing = [m for m in modalities if m not in given]
        unknown = [m for m in given if m not in modalities]
        if missing or unknown:
            raise ValueError(
                f"{self.setting_path('workdirs')} must name one unimodal run per modality "
                f"{modalities}: missing {missing}, unknown {unknown}"
            )
        for modality in modalities:
            where = f"{self.setting_path('workdirs')}.{modality}"
            weights = finished_runs.modality_weights(given[modality], modality, num_classes, where)
            params = finished_runs.graft(params, "params", weights, where)
            rest = finished_runs.graft(rest, "rest", weights, where)
        return params, rest

    def gradient_transform(
        self, params: PyTree, patterns: Mapping[str, list[str]]
    ) -> optax.GradientTransformation | None:
        """pre_frozen: zero updates for every encoder and unimodal head; else none."""
        if not self.freeze:
            return None
        # The encoders and heads only: each modality's fusion block is trained.
        own = {m: [f"^encoders/{re.escape(m)}/", f"^heads/{re.escape(m)}/"] for m in patterns}
        masks = list(modality_masks(params, own).values())
        frozen = jax.tree.map(lambda *xs: any(xs), *masks)
        return optax.masked(optax.set_to_zero(), frozen)


def make_pre_frozen(config: Any) -> PretrainedFusion:
    """Pretrained encoders, frozen; the transform zeroes their updates after the optimiser."""
    return method_from_config(
        PretrainedFusion, config, name="pre_frozen", freeze=True, placement="updates"
    )


def make_pre_finetuned(config: Any) -> PretrainedFusion:
    """Pretrained encoders, fine-tuned with the fusion classifier."""
    return method_from_config(PretrainedFusion, config, name="pre_finetuned")
