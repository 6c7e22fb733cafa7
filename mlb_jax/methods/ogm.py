"""OGM and OGM-GE: on-the-fly gradient modulation of the dominant modality (docs/METHODS.md (ogm)).

Every step, the fusion-split logits u_m = W_m x_m + b/M of the late-linear fusion (computed in
the same train-mode forward pass) give each modality a score S_m = sum over the batch of the
softmax probability of the true class. The dominant modality's gradients are multiplied by
k = 1 - tanh(alpha * rho), rho = S_dominant / S_other, the other modality's are left alone.
OGM-GE also adds Gaussian noise with std = (unbiased std of the *unscaled* gradient of that
tensor) + 1e-8 to every modulated tensor of *every* modality, including the one with k = 1.
The loss is the cross-entropy of the fused logits only. Modulation is active for
`start_epoch <= epoch <= end_epoch` (inclusive, as `modulation_starts/ends` of the official
code); the epoch is kept in the method state, so it is checkpointed and resumes exactly.

The scaling is the OGM coefficient rule over the balancing core (`ogm_gradient_transform`:
per-leaf labels, `BalancingState` with the noise key in its `extra` field, per-step inputs as
keyword extra arguments, unknown ones ignored), chained before the base optimiser by default.

Which parameters are modulated (`scope`):
  * 'conv' (default, the official GeWu-Lab code): the convolution kernels of each modality's
    encoder only (4-D; the 3-D kernels of a sequence encoder's 1-D convolutions, where the
    official rule would select nothing); BatchNorm scale/bias, heads and fusion are untouched.
  * 'encoder' (MLB's `Bias_Infusion_OGM`): every parameter of the modality's encoder and of its
    unimodal head (`enc_m` in MLB), any shape; the fusion layer is untouched.

Deliberate differences from the references:
  * M > 2 modalities: rho_m = S_m / min_{j != m} S_j and every modality with rho_m > 1 gets
    k_m = 1 - tanh(alpha * rho_m) (BalanceBenchmark's three-modality ratio, but with the
    official score, not its correct-only cosine score). For M = 2 this is exactly the official
    rule, including its tie-break: when all scores are equal the first modality is treated as
    dominant (the official `else` branch scales audio with 1 - tanh(alpha)).
  * OGM-GE on a tensor with a single element uses std 0 (+ 1e-8) where PyTorch's unbiased std
    would be NaN.
  * The noise key is `fold_in(fold_in(base_key, update_count), leaf_index)`: reproducible per
    step and per tensor, unlike PyTorch's global generator.
  * Two bugs of the MLB repository's OGM do not apply: there OGM-GE is unreachable (its
    handler is called with the wrong signature), and the film / gated fusions slice the
    fusion weights wrongly for the split logits. Here OGM-GE is a registry entry of its own,
    and the method runs only with the late-linear fusion and says so for any other.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlb_jax.balancing import (
    BalancingState,
    modality_values,
    scale_by_labels,
    scale_by_modality,
    value_at,
)
from mlb_jax.balancing.core import LabelsOrFn, ScalarOrSchedule
from mlb_jax.methods.base import EpochContext, Method
from mlb_jax.methods.config import method_from_config
from mlb_jax.methods.late_linear import (
    SCOPES,
    SplitOutput,
    check_late_linear_params,
    encoder_labels,
    split_forward,
)
from mlb_jax.methods.space import Dimension, LogUniform

PyTree = Any

# Floor of the denominator of rho: a score that underflowed to 0 gives rho = huge (k -> 0)
# instead of inf / NaN.
_SCORE_FLOOR = 1e-12
# Added to the unbiased std of each gradient tensor, as the official code does.
NOISE_STD_EPS = 1e-8


# ----------------------------------------------------------------------------- scores, k


def ogm_scores(split_logits: Mapping[str, jax.Array], labels: jax.Array) -> dict[str, jax.Array]:
    """S_m: batch *sum* of the softmax probability of the true class (official OGM score).

    Args:
      split_logits: modality -> fusion-split logits [B, K].
      labels: [B] integer labels.

    Returns:
      modality -> float32 [] (gradient-free).
    """
    scores = {}
    for name, logits in split_logits.items():
        probs = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32), axis=-1)
        scores[name] = jnp.sum(jnp.take_along_axis(probs, labels[:, None], axis=-1))
    return scores


def ogm_coefficients(
    scores: Mapping[str, jax.Array | float], *, alpha: float | jax.Array
) -> dict[str, jax.Array]:
    """OGM coefficients k_m from scores S_m (any M >= 2).

    rho_m = S_m / min_{j != m} S_j; k_m = 1 - tanh(alpha * rho_m) if rho_m > 1, else 1. If no
    modality has rho_m > 1 (all scores equal) the first modality gets 1 - tanh(alpha * rho),
    i.e. 1 - tanh(alpha), as the official two-modality code does. Note the use of rho, not
    rho - 1: k jumps from 1 to 1 - tanh(alpha) as rho crosses 1 (docs/METHODS.md (ogm)).

    Args:
      scores: modality -> scalar score (ordered; at least two).
      alpha: modulation strength (>= 0), scalar.

    Returns:
      modality -> float32 [] coefficient in (0, 1].
    """
    names = list(scores)
    if len(names) < 2:
        raise ValueError(f"OGM needs at least two modalities, got {names}")
    s = jnp.stack([jnp.asarray(scores[n], jnp.float32) for n in names])  # [M]
    others = jnp.where(jnp.eye(len(names), dtype=bool), jnp.inf, s[None, :])  # [M, M]
    rho = s / jnp.maximum(jnp.min(others, axis=1), _SCORE_FLOOR)  # [M]
    dominant = rho > 1.0
    dominant = dominant.at[0].set(dominant[0] | ~jnp.any(dominant))
    k = jnp.where(dominant, 1.0 - jnp.tanh(alpha * rho), 1.0)
    return {n: k[i] for i, n in enumerate(names)}


# ----------------------------------------------------------------------------- transform


def _ge_noise(g: jax.Array, key: jax.Array) -> jax.Array:
    """N(0, (std_unbiased(g) + 1e-8)^2) noise shaped like g; std taken of the unscaled g."""
    std = jnp.std(g, ddof=1) if g.size > 1 else jnp.zeros([], g.dtype)
    return (std + NOISE_STD_EPS) * jax.random.normal(key, g.shape, g.dtype)


def ogm_gradient_transform(
    labels: LabelsOrFn,
    *,
    modalities: Sequence[str],
    alpha: ScalarOrSchedule,
    noise: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """OGM (noise=False) or OGM-GE (noise=True) as an optax transformation.

    For every leaf labelled m: g <- k_m g (OGM) or g <- k_m g + eps,
    eps ~ N(0, (std_unbiased(g) + 1e-8)^2) i.i.d. per element (OGM-GE), with k from
    `ogm_coefficients`. Leaves labelled None pass unchanged.

    Args:
      labels: per-leaf modality labels like the params (or a callable params -> labels); see
        `mlb_jax.methods.late_linear.encoder_labels`.
      modalities: the modality names in order (the first one wins a tie; at least two).
      alpha: modulation strength (>= 0), a number or an optax schedule of the update count.
      noise: add OGM-GE's Gaussian noise.
      seed: seed of the base noise key (the key of a step and tensor is derived from it).

    Returns:
      An `optax.GradientTransformationExtraArgs` whose
      `update(updates, state, params=None, *, modality_scores, modulate=True, **extra_args)`
      takes modality -> scalar S_m and a boolean scalar `modulate` (False: the gradients
      pass unchanged and no noise is drawn, e.g. outside the modulation epochs), and an
      optional scalar `ogm_alpha` that replaces alpha for that update (possibly traced: the
      members of a vmapped sweep); unknown extra arguments are ignored. The state is a
      `BalancingState` (scores = smoothed_scores = S_m, coefficients = the k_m applied,
      extra = the uint32 key data of the noise).

    Raises:
      ValueError: fewer than two modalities or alpha < 0; at init, labels that do not match
        the params; at update, missing or unknown modality scores.
    """
    if not callable(alpha) and float(alpha) < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")

    def rule(
        names: Sequence[str], state: BalancingState, inputs: Mapping[str, Any]
    ) -> BalancingState:
        scores = modality_values(inputs, "modality_scores", names)
        on = jnp.asarray(inputs.get("modulate", True), bool)
        k = ogm_coefficients(scores, alpha=inputs.get("ogm_alpha", value_at(alpha, state.count)))
        k = {n: jnp.where(on, v, 1.0) for n, v in k.items()}
        return state._replace(scores=scores, smoothed_scores=dict(scores), coefficients=k)

    def apply(
        updates: PyTree,
        tree_labels: PyTree,
        state: BalancingState,
        new_state: BalancingState,
        inputs: Mapping[str, Any],
    ) -> PyTree:
        scaled = scale_by_labels(updates, tree_labels, new_state.coefficients)
        if not noise:
            return scaled
        treedef = jax.tree.structure(updates)
        leaves, out = treedef.flatten_up_to(updates), treedef.flatten_up_to(scaled)
        modulated = [
            i
            for i, (u, label) in enumerate(zip(leaves, treedef.flatten_up_to(tree_labels)))
            if label is not None and u is not None
        ]
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.extra), state.count)

        def add_noise(selected: list[jax.Array]) -> list[jax.Array]:
            # Noise std from the *unscaled* gradient leaves[i]; key per step and tensor.
            return [
                s + _ge_noise(leaves[i], jax.random.fold_in(step_key, i))
                for s, i in zip(selected, modulated)
            ]

        # One cond for all tensors: outside the window no noise is drawn at all.
        on = jnp.asarray(inputs.get("modulate", True), bool)
        noisy = jax.lax.cond(on, add_noise, lambda s: s, [out[i] for i in modulated])
        for i, x in zip(modulated, noisy):
            out[i] = x
        return treedef.unflatten(out)

    return scale_by_modality(
        labels,
        rule,
        modalities=modalities,
        apply=apply,
        extra=jax.random.key_data(jax.random.key(seed)) if noise else (),
    )


# ----------------------------------------------------------------------------- method


@dataclasses.dataclass(frozen=True)
class OGM(Method):
    """OGM / OGM-GE (docs/METHODS.md (ogm)); works for any M >= 2 (see the module docstring).

    Attributes:
      alpha: modulation strength alpha of k = 1 - tanh(alpha * rho) (>= 0).
      noise: add OGM-GE's Gaussian noise (the 'ogm_ge' registry entry sets it).
      scope: 'conv' (official: conv kernels only) or 'encoder' (MLB: whole encoder + head).
      start_epoch: first modulated epoch (0-based, inclusive; >= 0).
      end_epoch: last modulated epoch (inclusive, >= start_epoch); the official default is
        0 .. 50.
      noise_seed: seed of the OGM-GE noise keys (OGM-GE only).
    """

    name: str = "ogm"
    alpha: float = 0.3
    noise: bool = False
    scope: Literal["conv", "encoder"] = "conv"
    start_epoch: int = 0
    end_epoch: int = 50
    noise_seed: int = 0

    config_block: ClassVar[str | None] = "ogm"
    block_fields: ClassVar[tuple[str, ...]] = (
        "alpha",
        "scope",
        "start_epoch",
        "end_epoch",
        "noise_seed",
    )
    top_level_fields: ClassVar[tuple[str, ...]] = ("placement",)
    search_space: ClassVar[Mapping[str, Dimension]] = {
        **Method.search_space,
        "alpha": LogUniform(0.1, 1.0),
    }
    traced_fields: ClassVar[tuple[str, ...]] = ("alpha",)  # the update argument ogm_alpha
    unread_because: ClassVar[Mapping[str, str]] = {
        **Method.unread_because,
        "unimodal_weight": "its loss is the fused cross-entropy alone",
    }

    def validate(self) -> None:
        """Method's checks plus alpha >= 0, a known scope, a non-empty epoch window."""
        super().validate()
        self.require("alpha", self.alpha >= 0, ">= 0")
        self.require("scope", self.scope in SCOPES, f"one of {list(SCOPES)}")
        self.require("start_epoch", self.start_epoch >= 0, ">= 0")
        self.require(
            "end_epoch", self.end_epoch >= self.start_epoch, f">= start_epoch ({self.start_epoch})"
        )
        if not self.noise:
            self.refuse_unused("noise_seed", OGM.noise_seed, "it adds no noise; OGM-GE does")

    def init_state(self, modalities: list[str], num_classes: int) -> PyTree:
        """{'epoch': int32 []}: the current epoch, for the modulation window."""
        del modalities, num_classes
        return {"epoch": jnp.zeros([], jnp.int32)}

    def forward(
        self, model: Any, inputs: Mapping[str, jax.Array], *, train: bool, method_state: PyTree
    ) -> SplitOutput:
        """The model's outputs plus the fusion-split logits (late-linear fusion only)."""
        del method_state
        return split_forward(model, inputs, train=train, method_name=self.name)

    def update_kwargs(
        self, outputs: SplitOutput, labels: jax.Array, method_state: PyTree
    ) -> dict[str, Any]:
        """The batch's scores S_m, whether this epoch is inside the modulation window, alpha.

        alpha travels as the update argument `ogm_alpha`, so a copy of the method with a traced
        value (`with_settings`) reaches the rule.
        """
        epoch = method_state["epoch"]
        return {
            "modality_scores": ogm_scores(outputs.split_logits, labels),
            "modulate": (epoch >= self.start_epoch) & (epoch <= self.end_epoch),
            "ogm_alpha": self.alpha,
        }

    def gradient_transform(
        self, params: PyTree, patterns: Mapping[str, list[str]]
    ) -> optax.GradientTransformation:
        """`ogm_gradient_transform` over `encoder_labels(params, ..., scope=self.scope)`."""
        modalities = list(patterns)
        check_late_linear_params(params, modalities, self.name)
        return ogm_gradient_transform(
            encoder_labels(params, modalities, scope=self.scope),
            modalities=modalities,
            alpha=self.alpha,
            noise=self.noise,
            seed=self.noise_seed,
        )

    def end_of_epoch(self, method_state: PyTree, context: EpochContext) -> PyTree:
        """Advances the epoch counter to the next epoch."""
        del method_state
        return {"epoch": np.asarray(context.epoch + 1, np.int32)}


def make_ogm(config: Any) -> OGM:
    """Builds OGM from `config.method` (block `ogm`: alpha, scope, start/end_epoch)."""
    return method_from_config(OGM, config, name="ogm", noise=False)


def make_ogm_ge(config: Any) -> OGM:
    """Builds OGM-GE from `config.method` (the same `ogm` block, plus noise_seed)."""
    return method_from_config(OGM, config, name="ogm_ge", noise=True)
