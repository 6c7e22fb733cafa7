"""MSLR: modality-specific learning-rate multipliers from validation accuracy (METHODS.md §3.5).

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
  * M-14 is not copied: the reference computes the configured unimodal losses and then returns
    CE(fused) alone. Here L = CE(fused) + w * sum_m CE(unimodal_m) with w = `unimodal_weight`
    (default 0, which is the loss the reference effectively trains). In the reference MSLR
    model the unimodal outputs `c`/`g` are the fusion-split logits (METHODS.md §2.5), so
    `unimodal_logits='split'` (default) puts the unimodal losses on u_m; 'heads' uses the
    separate unimodal heads instead.
  * Only the last K accuracies are stored (fixed shapes for jit and checkpoints); that is all
    the rule reads.
  * The multipliers act where `placement` puts them: 'gradients' (default) scales raw
    gradients like the reference, which Adam almost entirely cancels for an epoch-constant
    multiplier (METHODS.md §7.1); 'updates' scales the optimiser's step, i.e. the per-modality
    learning rate the paper describes.

`end_of_epoch` needs the model's fusion parameters to compute u_m from the validation features;
it takes the eval model from the epoch context's `model()`.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlb_jax.balancing import MLBState
from mlb_jax.balancing.transform import check_disjoint, flat_masks, initial_state, scale_selected
from mlb_jax.methods.base import EpochContext, Losses, Method, cross_entropy
from mlb_jax.methods.ogm import (
    MaskOrFn,
    SplitOutput,
    check_late_linear_params,
    encoder_masks,
    late_linear_fusion,
    split_forward,
)

PyTree = Any
UNIMODAL_LOGITS = ("split", "heads")


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


def modality_scale_transform(
    modality_masks: Mapping[str, MaskOrFn],
) -> optax.GradientTransformationExtraArgs:
    """Multiplies each modality's masked leaves by a given per-modality multiplier.

    Args:
      modality_masks: modality -> bool pytree with the params' structure (or a callable params
        -> such a pytree); disjoint.

    Returns:
      An `optax.GradientTransformationExtraArgs` whose `update(updates, state, params=None, *,
      modality_multipliers, modality_scores=None, **extra_args)` scales modality m's leaves by
      `modality_multipliers[m]` and leaves the others unchanged; `modality_scores` (optional)
      is only recorded for logging; unknown extra arguments are ignored. The state is an
      `MLBState` record (count, scores, coefficients = the multipliers applied), so
      `balancing_metrics` logs `k/<m>`.

    Raises:
      ValueError: at init, masks that do not match the params or overlap; at update, missing or
        unknown modality multipliers.
    """
    names = list(modality_masks)

    def init_fn(params: PyTree) -> MLBState:
        _, flat = flat_masks(modality_masks, params)
        check_disjoint(params, flat)
        return initial_state(names)

    def update_fn(
        updates: PyTree,
        state: MLBState,
        params: PyTree | None = None,
        *,
        modality_multipliers: Mapping[str, jax.Array],
        modality_scores: Mapping[str, jax.Array] | None = None,
        **extra_args: Any,
    ) -> tuple[PyTree, MLBState]:
        del extra_args
        missing = [n for n in names if n not in modality_multipliers]
        unknown = [n for n in modality_multipliers if n not in modality_masks]
        if missing or unknown:
            raise ValueError(
                f"modality_multipliers must have exactly the masked modalities {names}; "
                f"missing {missing}, unknown {unknown}"
            )
        k = {n: jnp.asarray(modality_multipliers[n], jnp.float32) for n in names}
        treedef, flat = flat_masks(modality_masks, params if params is not None else updates)
        out, _ = scale_selected(treedef.flatten_up_to(updates), flat, k)
        scores = (
            state.scores
            if modality_scores is None
            else {n: jnp.asarray(modality_scores[n], jnp.float32) for n in names}
        )
        new_state = MLBState(
            count=optax.safe_increment(state.count),
            scores=scores,
            smoothed_scores=dict(scores),
            coefficients=k,
        )
        return treedef.unflatten(out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------- method


def _epoch_model(context: EpochContext) -> Any:
    """The eval model at the end of the epoch."""
    return context.model()


@dataclasses.dataclass(frozen=True)
class MSLR(Method):
    """Modality-specific learning rates (METHODS.md §3.5); any M >= 2.

    Attributes:
      init_lr: ((modality, ilr_m), ...) static multipliers; a modality not listed gets 1.
      keep_memory: K, number of past validation accuracies averaged (>= 1).
      unimodal_weight: w of the unimodal cross-entropies (0 = CE(fused) only, as trained by
        the reference).
      unimodal_logits: 'split' (fusion-split logits, the reference's `c`/`g`) or 'heads'.
      split: the data split whose accuracies drive the rule (config.data.val_split).
    """

    name: str = "mslr"
    init_lr: tuple[tuple[str, float], ...] = ()
    keep_memory: int = 5
    unimodal_weight: float = 0.0
    unimodal_logits: Literal["split", "heads"] = "split"
    split: str = "validation"

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
        """{'fused': CE(z)} plus {m: CE(unimodal_m)} when unimodal_weight > 0 (not M-14)."""
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
        return modality_scale_transform(encoder_masks(params, modalities, scope="encoder"))

    def end_of_epoch(self, method_state: PyTree, context: EpochContext) -> PyTree:
        """Validation accuracies of the fusion-split logits -> next epoch's multipliers."""
        predictions = context.predict(self.split)
        fusion = late_linear_fusion(_epoch_model(context), self.name)
        split_logits = fusion.split_logits(
            {m: jnp.asarray(x) for m, x in predictions["features"].items()}
        )
        labels = np.asarray(predictions["labels"])
        accuracies = {
            m: float(np.mean(np.argmax(np.asarray(logits), axis=-1) == labels))
            for m, logits in split_logits.items()
        }
        return mslr_update(
            method_state,
            accuracies,
            keep_memory=self.keep_memory,
            init_lr=self._init_lr(list(accuracies)),
        )


MSLR_FIELDS = ("init_lr", "keep_memory", "unimodal_weight", "unimodal_logits", "split")


def make_mslr(config: Any) -> MSLR:
    """Builds MSLR from `config.method` (block `mslr`: init_lr, keep_memory, ...)."""
    block = config.get("mslr", None)
    block = {} if block is None else dict(block)
    unknown = sorted(set(block) - set(MSLR_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown field(s) {unknown} in config.method.mslr; expected {list(MSLR_FIELDS)}"
        )
    keep_memory = int(block.get("keep_memory", MSLR.keep_memory))
    if keep_memory < 1:
        raise ValueError(f"config.method.mslr.keep_memory must be >= 1, got {keep_memory}")
    unimodal_logits = str(block.get("unimodal_logits", MSLR.unimodal_logits))
    if unimodal_logits not in UNIMODAL_LOGITS:
        raise ValueError(
            f"config.method.mslr.unimodal_logits must be one of {list(UNIMODAL_LOGITS)}, "
            f"got {unimodal_logits!r}"
        )
    init_lr = block.get("init_lr", None)
    init_lr = {} if init_lr is None else dict(init_lr)
    return MSLR(
        init_lr=tuple((str(m), float(v)) for m, v in init_lr.items()),
        keep_memory=keep_memory,
        unimodal_weight=float(block.get("unimodal_weight", MSLR.unimodal_weight)),
        unimodal_logits=unimodal_logits,
        split=str(block.get("split", MSLR.split)),
        placement=str(config.get("placement", "gradients")),
    )
