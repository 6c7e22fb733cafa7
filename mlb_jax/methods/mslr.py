"""MSLR: modality-specific learning-rate multipliers from validation accuracy.

See docs/METHODS.md (mslr).

After every epoch the validation accuracy acc_m of each modality's fusion-split logits
u_m = W_m x_m + b/M (late-linear fusion, eval mode) is measured. The next epoch's multiplier of
modality m is k_m = r_m * ilr_m, with the static initial multiplier ilr_m and
r_m = acc_m / mean(last K stored accuracies of m) once K accuracies are stored (before acc_m
is appended), else r_m = 1. So k_m = ilr_m for the first K + 1 epochs. The history, the
multipliers and the last accuracies are the method state: arrays kept in the train state,
checkpointed, restored on resume. Every step a gradient transform (`modality_scale_transform`)
multiplies each modality's encoder and unimodal-head gradients (MLB's `enc_m`) by k_m; the
fusion layer is never scaled. Works for any M >= 2: each modality's multiplier depends only on
its own accuracies.

Deliberate differences from the reference (`Bias_Infusion_MSLR` of kkontras/MLB):
  * The reference's dropped unimodal losses are not copied: it computes the configured
    unimodal losses and then returns CE(fused) alone. Here
    L = CE(fused) + w * sum_m CE(unimodal_m) with w = `unimodal_weight` (default 0, which is
    the loss the reference effectively trains). In the reference MSLR model the unimodal
    outputs `c`/`g` are the fusion-split logits, so `unimodal_logits='split'` (default) puts
    the unimodal losses on u_m; 'heads' uses the separate unimodal heads instead.
  * Only the last K accuracies are stored (fixed shapes for jit and checkpoints); that is all
    the rule reads.
  * The multipliers act where `placement` puts them: 'gradients' (default) scales raw
    gradients like the reference, which Adam almost entirely cancels for an epoch-constant
    multiplier; 'updates' scales the optimiser's step, i.e. the per-modality learning rate
    the paper describes.

`end_of_epoch` needs the model's fusion parameters to compute u_m from the validation features;
it takes the eval model from the epoch context's `model()`. Validation predictions come from
`context.predict(split)` (the trainer serves the epoch's already computed ones).
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlb_jax.balancing import BalancingState, modality_values, scale_by_modality
from mlb_jax.balancing.core import LabelsOrFn
from mlb_jax.methods.base import EpochContext, Losses, Method, cross_entropy
from mlb_jax.methods.config import method_from_config
from mlb_jax.methods.late_linear import (
    SplitOutput,
    check_late_linear_params,
    encoder_labels,
    late_linear_fusion,
    split_forward,
)
from mlb_jax.metrics import accuracy

PyTree = Any


# ----------------------------------------------------------------------------- the rule


def mslr_update(
    state: Mapping[str, Any],
    accuracies: Mapping[str, float],
    *,
    keep_memory: int,
    init_lr: Mapping[str, float],
) -> dict[str, Any]:
    """One epoch of the MSLR rule on the host (numpy).

    Args:
      state: the method state, {'history': {m: float32 [K]} (last K accuracies, newest last),
        'stored': int32 [] (how many of them are valid, <= K), 'multipliers': {m: float32 []},
        'accuracy': {m: float32 []}}.
      accuracies: modality -> this epoch's validation accuracy acc_m.
      keep_memory: K >= 1.
      init_lr: modality -> ilr_m.

    Returns:
      The new state: multipliers k_m = r_m * ilr_m with r_m = acc_m / mean(history_m) if
      `stored == K` (and the mean is > 0) else 1; then acc_m appended to the history.
    """
    stored = int(state["stored"])
    full = stored >= keep_memory
    history, multipliers = {}, {}
    for m, acc in accuracies.items():
        past = np.asarray(state["history"][m], np.float32)
        # Mean of the last K accuracies (all stored, newest last), before acc_m is appended;
        # computed in float64 like the reference's numpy mean, stored as float32. A zero mean
        # (K epochs at 0 % accuracy) gives r = 1 where the reference would divide by zero.
        mean = float(past.astype(np.float64).mean())
        ratio = float(acc) / mean if full and mean > 0 else 1.0
        multipliers[m] = np.asarray(ratio * float(init_lr[m]), np.float32)
        history[m] = np.concatenate([past[1:], np.asarray([acc], np.float32)])
    return {
        "history": history,
        "stored": np.asarray(min(stored + 1, keep_memory), np.int32),
        "multipliers": multipliers,
        "accuracy": {m: np.asarray(a, np.float32) for m, a in accuracies.items()},
    }


# ----------------------------------------------------------------------------- transform


def _multipliers_rule(
    names: Sequence[str], state: BalancingState, inputs: Mapping[str, Any]
) -> BalancingState:
    """k_m = the given `modality_multipliers`; `modality_scores` (optional) only recorded."""
    k = modality_values(inputs, "modality_multipliers", names)
    scores = modality_values(inputs, "modality_scores", names, required=False)
    scores = state.scores if scores is None else scores
    return state._replace(scores=scores, smoothed_scores=dict(scores), coefficients=k)


def modality_scale_transform(
    labels: LabelsOrFn, *, modalities: Sequence[str]
) -> optax.GradientTransformationExtraArgs:
    """Multiplies each modality's labelled leaves by a given per-modality multiplier.

    Args:
      labels: per-leaf modality labels like the params (or a callable params -> labels);
        leaves labelled None pass unchanged.
      modalities: the modality names (at least two).

    Returns:
      An `optax.GradientTransformationExtraArgs` whose `update(updates, state, params=None, *,
      modality_multipliers, modality_scores=None, **extra_args)` scales modality m's leaves by
      `modality_multipliers[m]`; `modality_scores` (optional) is only recorded for logging;
      unknown extra arguments are ignored. The state is a `BalancingState` (coefficients = the
      multipliers applied), so `balancing_metrics` logs `k/<m>`.

    Raises:
      ValueError: at init, labels that do not match the params; at update, missing or unknown
        modality multipliers.
    """
    return scale_by_modality(labels, _multipliers_rule, modalities=modalities)


# ----------------------------------------------------------------------------- method


@dataclasses.dataclass(frozen=True)
class MSLR(Method):
    """Modality-specific learning rates (docs/METHODS.md (mslr)); any M >= 2.

    Attributes:
      init_lr: ((modality, ilr_m), ...) static multipliers (>= 0); a modality not listed
        gets 1. In the config: a mapping modality -> ilr_m.
      keep_memory: K, number of past validation accuracies averaged (>= 1).
      unimodal_weight: w of the unimodal cross-entropies (>= 0; 0 = CE(fused) only, as
        trained by the reference).
      unimodal_logits: 'split' (fusion-split logits, the reference's `c`/`g`) or 'heads';
        read only when unimodal_weight > 0.
      split: the data split whose accuracies drive the rule (config.data.val_split).
    """

    name: str = "mslr"
    init_lr: tuple[tuple[str, float], ...] = ()
    keep_memory: int = 5
    unimodal_weight: float = 0.0
    unimodal_logits: Literal["split", "heads"] = "split"
    split: str = "validation"

    config_block: ClassVar[str | None] = "mslr"
    block_fields: ClassVar[tuple[str, ...]] = (
        "init_lr",
        "keep_memory",
        "unimodal_weight",
        "unimodal_logits",
        "split",
    )
    top_level_fields: ClassVar[tuple[str, ...]] = ("placement",)
    unread_because: ClassVar[Mapping[str, str]] = {
        **Method.unread_because,
        "unimodal_weight": "its unimodal loss weight is config.method.mslr.unimodal_weight",
    }

    def validate(self) -> None:
        """Method's checks plus the ranges of MSLR's settings."""
        super().validate()
        self.require(
            "init_lr", all(v >= 0 for _, v in self.init_lr), "a mapping modality -> value >= 0"
        )
        self.require("keep_memory", self.keep_memory >= 1, ">= 1")
        self.require("unimodal_weight", self.unimodal_weight >= 0, ">= 0")
        self.require(
            "unimodal_logits", self.unimodal_logits in ("split", "heads"), "'split' or 'heads'"
        )
        self.require("split", bool(self.split), "a split name")
        if self.unimodal_weight == 0:
            self.refuse_unused(
                "unimodal_logits", MSLR.unimodal_logits, "unimodal_weight is 0: no unimodal loss"
            )

    def _init_lr(self, modalities: list[str]) -> dict[str, float]:
        given = dict(self.init_lr)
        unknown = sorted(set(given) - set(modalities))
        if unknown:
            raise ValueError(
                f"config.method.mslr.init_lr names unknown modalities {unknown}; "
                f"the model has {modalities}"
            )
        return {m: float(given.get(m, 1.0)) for m in modalities}

    def init_state(self, modalities: list[str], num_classes: int) -> PyTree:
        """Empty history; multipliers ilr_m (r_m = 1 until K accuracies are stored)."""
        del num_classes
        init_lr = self._init_lr(modalities)
        return {
            "history": {m: jnp.zeros([self.keep_memory], jnp.float32) for m in modalities},
            "stored": jnp.zeros([], jnp.int32),
            "multipliers": {m: jnp.asarray(init_lr[m], jnp.float32) for m in modalities},
            "accuracy": {m: jnp.zeros([], jnp.float32) for m in modalities},
        }

    def forward(
        self, model: Any, inputs: Mapping[str, jax.Array], *, train: bool, method_state: PyTree
    ) -> SplitOutput:
        """The model's outputs plus the fusion-split logits (late-linear fusion only)."""
        del method_state
        return split_forward(model, inputs, train=train, method_name=self.name)

    def losses(self, outputs: SplitOutput, labels: jax.Array, method_state: PyTree) -> Losses:
        """{'fused': CE(z)} plus {m: CE(unimodal_m)} when unimodal_weight > 0."""
        del method_state
        losses = {"fused": cross_entropy(outputs.logits, labels)}
        if self.unimodal_weight > 0:
            split = self.unimodal_logits == "split"
            source = outputs.split_logits if split else outputs.unimodal_logits
            for m, logits in source.items():
                losses[m] = cross_entropy(logits, labels)
        return losses

    def combine(self, losses: Losses) -> jax.Array:
        """CE(fused) + w * sum of the unimodal cross-entropies."""
        unimodal = sum(v for k, v in losses.items() if k != "fused")
        return losses["fused"] + self.unimodal_weight * unimodal

    def update_kwargs(self, outputs: Any, labels: jax.Array, method_state: PyTree) -> dict:
        """This epoch's multipliers (and the last validation accuracies, for logging)."""
        del outputs, labels
        return {
            "modality_multipliers": method_state["multipliers"],
            "modality_scores": method_state["accuracy"],
        }

    def gradient_transform(
        self, params: PyTree, patterns: Mapping[str, list[str]]
    ) -> optax.GradientTransformation:
        """`modality_scale_transform` over each modality's encoder and unimodal head."""
        modalities = list(patterns)
        check_late_linear_params(params, modalities, self.name)
        self._init_lr(modalities)
        return modality_scale_transform(
            encoder_labels(params, modalities, scope="encoder"), modalities=modalities
        )

    def end_of_epoch(self, method_state: PyTree, context: EpochContext) -> PyTree:
        """Validation accuracies of the fusion-split logits -> next epoch's multipliers."""
        predictions = context.predict(self.split)
        fusion = late_linear_fusion(context.model(), self.name)
        split_logits = fusion.split_logits(
            {m: jnp.asarray(x) for m, x in predictions["features"].items()}
        )
        labels = np.asarray(predictions["labels"])
        accuracies = {m: accuracy(np.asarray(u), labels) for m, u in split_logits.items()}
        return mslr_update(
            method_state,
            accuracies,
            keep_memory=self.keep_memory,
            init_lr=self._init_lr(list(accuracies)),
        )


def make_mslr(config: Any) -> MSLR:
    """Builds MSLR from `config.method` (block `mslr`: init_lr, keep_memory, ...)."""
    return method_from_config(MSLR, config)
