"""AGM: adaptive gradient modulation from Shapley-style modality contributions.

See docs/METHODS.md (agm). Every step (MLB's two-modality AGM, generalised to any M >= 2):

1. Forward: the ordinary (train-mode) pass gives features x_m and fused logits f; every
   modality's encoder is also run on an all-zero input in eval mode (running BatchNorm
   statistics, nothing written), and the fusion head is evaluated in eval mode on every
   non-empty proper coalition S of modalities, the absent ones replaced by their zero-input
   features. The Shapley-style logits are
       o_m = phi_m + F(empty) / M,   phi_m = sum_{S not containing m} w(|S|) [F(S + m) - F(S)],
   w(s) = s! (M - s - 1)! / M!, F(all) = f. F(empty) has weight 0 in o_m, so it is never
   computed; for M = 2 this is exactly MLB's o_a = (f - F(v) + F(a)) / 2, and sum_m o_m = f.
2. Score s_m = mean_i -ln max(softmax(o_m)_i[y_i], 1e-8); ratios
   r_m = exp(M / (M - 1) * (mean_j s_j - s_m)) (MLB: r_a = exp(s_v - s_a) for M = 2, the
   1.5 of AGM_3mod for M = 3), r^_m the same from the running means S^_m of the scores, which
   are cumulative averages over all steps since step 0 (not an EMA, never reset), updated after
   k is computed. k_m = exp(alpha * min(r^_m - r_m, max_exponent)): the ORIGINAL sign
   (mean - s_m); BalanceBenchmark's AGM reverses it (it speeds up the modality that is
   already ahead), we do not.
3. The loss is CE(sum_m o_m) (= CE(f)); each o_m passes an "identity forward, gradient x k_m"
   node (MLB's backward hook on an identity module). The running means that k needs are
   per-step state, kept in the optimiser state (a `BalancingState`, so the trainer logs k/,
   score/ and smoothed_score/ like MLB's), which the forward pass cannot read. So the hook is
   applied by linearity instead of inside the graph: the gradient with the hooks is
   sum_m k_m G_m, where G_m is the gradient that flows through o_m alone (the VJP of
   CE(o_m + stop_gradient(sum_{j != m} o_j))). `AGM.value_and_grad` computes the M path
   gradients G_m (one forward, M backward passes) and hands them with the scores to
   `agm_gradient_transform` (the AGM rule over the balancing core), which returns
   sum_m k_m G_m. This equals the stop_gradient-arithmetic hook exactly (tested).
4. Conditional clipping: if any element of the (scaled) fusion-kernel gradients exceeds
   +-clip_threshold, the global norm of all gradients is clipped to clip_norm (MLB: 1 and 1 for
   two modalities, 5 and 5 for three).

Generalises to M > 2: yes (exact Shapley weights over all coalitions). MLB's own
three-modality variant is not copied: its padded passes carry no gradient, so its scaling is
not per modality, and it leaves the model in eval mode. Here the padded passes carry
gradients and the model's mode is never changed.

Deliberate differences from the reference:
* The present modalities' features in a padded coalition are the main pass's (train-mode)
  features; only the absent modality's encoder runs again, in eval mode on one zero example
  whose feature is broadcast over the batch (it is the same for every example). MLB reruns the
  whole model in eval mode per padded pass; reusing the features is cheaper and makes the
  gradient of a modality's features exact: dL/dx_m = k_m W_m^T g for late-linear fusion.
* `unimodal_logits` are the Shapley-style logits o_m (as MLB's `c`, `g` outputs), so the
  per-modality accuracies of an AGM run are those of the contributions, not of the unused
  unimodal heads.
* The method's transform needs raw gradients, so its placement is always 'gradients'
  (`config.method.placement='updates'` is refused). Leave `train.grad_clip_norm` at 0 with
  AGM: that clip runs first and would scale the summed gradient but not the path gradients;
  AGM's own conditional clipping replaces it.
"""

import dataclasses
import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mlb_jax.balancing import (
    BalancingState,
    modality_values,
    parameter_paths,
    path_string,
    scale_by_modality,
)
from mlb_jax.methods.base import Losses, Method, cross_entropy
from mlb_jax.methods.config import method_from_config
from mlb_jax.methods.space import Dimension, LogUniform

PyTree = Any
Coalition = frozenset[str]
# Floor of the true-class probability inside the log of the score (MLB's 1e-8).
PROBABILITY_FLOOR = 1e-8
# Added to the global norm before dividing, as torch.nn.utils.clip_grad_norm_ does.
CLIP_EPS = 1e-6
PATH_PREFIX = "path_"


class AGMOutput(NamedTuple):
    """AGM's forward output: a `ModelOutput` plus the per-path gradients of the step.

    Attributes:
      logits: fused logits f [B, K] of the ordinary pass.
      unimodal_logits: modality -> Shapley-style logits o_m [B, K] (sum_m o_m = f).
      features: modality -> pooled feature [B, D_m] of the ordinary pass.
      path_gradients: modality -> gradient pytree G_m (like the params); None out of the
        forward pass, filled in by `AGM.value_and_grad` for `update_kwargs`.
    """

    logits: jax.Array
    unimodal_logits: dict[str, jax.Array]
    features: dict[str, jax.Array]
    path_gradients: dict[str, PyTree] | None = None


# ----------------------------------------------------------------------------- Shapley maths


def shapley_weight(size: int, num_modalities: int) -> float:
    """w(s) = s! (M - s - 1)! / M!, the weight of a coalition of `size` others."""
    m = num_modalities
    return math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)


def _others_subsets(name: str, modalities: Sequence[str]) -> list[Coalition]:
    others = [n for n in modalities if n != name]
    return [
        frozenset(c)
        for size in range(len(others) + 1)
        for c in itertools.combinations(others, size)
    ]


def agm_logits(
    values: Mapping[Coalition, jax.Array], modalities: Sequence[str]
) -> dict[str, jax.Array]:
    """AGM's per-modality logits o_m = phi_m + v(empty) / M, which sum to v(all).

    v(empty) enters o_m with weight 1/M - w(0) = 0, so it is not needed (nor read).
    For M = 2: o_a = (v(a, v) - v(v) + v(a)) / 2, MLB's formula.

    Args:
      values: coalition -> value for every non-empty coalition.
      modalities: the players (M >= 2).

    Returns:
      modality -> o_m.
    """
    m = len(modalities)
    out = {}
    for name in modalities:
        total = 0.0
        for s in _others_subsets(name, modalities):
            w = shapley_weight(len(s), m)
            total = total + w * values[s | {name}]
            if s:  # the empty coalition's term cancels against v(empty) / M
                total = total - w * values[s]
        out[name] = total
    return out


def shapley_scores(logits: Mapping[str, jax.Array], labels: jax.Array) -> dict[str, jax.Array]:
    """s_m = mean_i -ln max(softmax(o_m)_i[y_i], 1e-8), gradient-stopped.

    Args:
      logits: modality -> o_m [B, K].
      labels: [B] integer labels.

    Returns:
      modality -> float32 scalar (lower = the modality explains the labels better).
    """
    out = {}
    for name, o in logits.items():
        probs = jax.nn.softmax(jax.lax.stop_gradient(o).astype(jnp.float32), axis=-1)
        picked = jnp.take_along_axis(probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
        out[name] = jnp.mean(-jnp.log(jnp.maximum(picked, PROBABILITY_FLOOR)))
    return out


def agm_coefficients(
    scores: Mapping[str, jax.Array],
    running_means: Mapping[str, jax.Array],
    *,
    alpha: float | jax.Array,
    max_exponent: float = 10.0,
) -> dict[str, jax.Array]:
    """k_m = exp(alpha * min(r^_m - r_m, max_exponent)).

    r_m = exp(M / (M - 1) * (mean_j s_j - s_m)) from this step's scores and r^_m the same from
    the running means: a modality whose current advantage exceeds its historical one is
    slowed (k < 1), one that fell behind its history is sped up (k > 1).

    Args:
      scores: modality -> s_m of this step.
      running_means: modality -> S^_m over the previous steps (0 before the first step).
      alpha: modulation strength (>= 0).
      max_exponent: cap of r^ - r (MLB: 10 for two modalities, 7 for three).

    Returns:
      modality -> float32 scalar k_m.
    """
    names = list(scores)
    gain = len(names) / (len(names) - 1)
    s = jnp.stack([jnp.asarray(scores[n], jnp.float32) for n in names])
    mean_s = jnp.stack([jnp.asarray(running_means[n], jnp.float32) for n in names])
    r = jnp.exp(gain * (jnp.mean(s) - s))
    r_hat = jnp.exp(gain * (jnp.mean(mean_s) - mean_s))
    k = jnp.exp(alpha * jnp.minimum(r_hat - r, max_exponent))
    return {n: k[i] for i, n in enumerate(names)}


def cumulative_mean(mean: jax.Array, value: jax.Array, count: jax.Array) -> jax.Array:
    """Running mean over all values so far: mean * t / (t + 1) + value / (t + 1), t = count."""
    t = jnp.asarray(count, jnp.float32)
    return mean * (t / (t + 1.0)) + value / (t + 1.0)


# ----------------------------------------------------------------------------- optax transforms


def agm_gradient_transform(
    modalities: Sequence[str], *, alpha: float, max_exponent: float = 10.0
) -> optax.GradientTransformationExtraArgs:
    """AGM's gradient modulation: sum_m k_m G_m from per-path gradients and Shapley scores.

    `update(updates, state, params=None, *, agm_scores, path_gradients, **extra_args)`:
    `agm_scores` maps modality -> s_m of this step, `path_gradients` modality -> G_m (pytrees
    like `updates`, with sum_m G_m = `updates`). It returns updates + sum_m (k_m - 1) G_m,
    i.e. sum_m k_m G_m, and then adds s_m to the running means. Chain it first (it expects raw
    gradients). Optional scalars `agm_alpha` / `agm_max_exponent` replace alpha / max_exponent
    for that update (possibly traced: the members of a vmapped sweep). Unknown extra arguments
    are ignored.

    The state is a `BalancingState`: `count` = steps t so far, `scores` = this step's s_m,
    `smoothed_scores` = running means S^_m after this step, `coefficients` = this step's k_m.

    Args:
      modalities: modality names (M >= 2).
      alpha: modulation strength (>= 0).
      max_exponent: cap of r^ - r (> 0).

    Returns:
      The transformation.

    Raises:
      ValueError: fewer than two modalities, alpha < 0 or max_exponent <= 0; at update, scores
        or path gradients missing for a modality.
    """
    if alpha < 0:
        raise ValueError(f"AGM alpha must be >= 0 (config.method.agm.alpha), got {alpha}")
    if max_exponent <= 0:
        raise ValueError(
            f"AGM max_exponent must be > 0 (config.method.agm.max_exponent), got {max_exponent}"
        )

    def rule(
        names: Sequence[str], state: BalancingState, inputs: Mapping[str, Any]
    ) -> BalancingState:
        scores = modality_values(inputs, "agm_scores", names)
        k = agm_coefficients(
            scores,
            state.smoothed_scores,
            alpha=inputs.get("agm_alpha", alpha),
            max_exponent=inputs.get("agm_max_exponent", max_exponent),
        )
        means = {
            n: cumulative_mean(state.smoothed_scores[n], scores[n], state.count) for n in names
        }
        return state._replace(scores=scores, smoothed_scores=means, coefficients=k)

    def apply(
        updates: PyTree,
        labels: None,
        state: BalancingState,
        new_state: BalancingState,
        inputs: Mapping[str, Any],
    ) -> PyTree:
        del labels, state
        path_gradients = inputs.get("path_gradients")
        if path_gradients is None:
            raise ValueError("path_gradients is None: AGM.value_and_grad must fill them in")
        missing = [n for n in new_state.coefficients if n not in path_gradients]
        if missing:
            raise ValueError(f"path_gradients lack modalities {missing}")
        for n, k in new_state.coefficients.items():
            updates = jax.tree.map(
                lambda u, g, k=k: u + (k - 1.0).astype(u.dtype) * g, updates, path_gradients[n]
            )
        return updates

    return scale_by_modality(None, rule, modalities=modalities, apply=apply)


def conditional_clip_by_global_norm(
    watch: PyTree | Callable[[PyTree], PyTree], *, threshold: float, max_norm: float
) -> optax.GradientTransformationExtraArgs:
    """Clips the global norm of all updates to `max_norm` only if a watched element is large.

    AGM's rule (docs/METHODS.md (agm)): if any element of a watched leaf (the fusion kernels) is
    > threshold or < -threshold, every leaf is multiplied by min(1, max_norm / (norm + 1e-6)),
    norm = global norm of all leaves (torch's clip_grad_norm_); otherwise nothing changes.

    Args:
      watch: bool pytree like the params (or params -> such a pytree) marking watched leaves.
      threshold: element magnitude that triggers clipping (> 0).
      max_norm: global norm after clipping (> 0).

    Returns:
      A stateless transformation; extra arguments are ignored.
    """
    if threshold <= 0 or max_norm <= 0:
        raise ValueError(
            f"clip threshold and norm must be > 0, got threshold={threshold}, max_norm={max_norm}"
        )

    def init_fn(params: PyTree) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(
        updates: PyTree, state: optax.EmptyState, params: PyTree | None = None, **extra_args: Any
    ) -> tuple[PyTree, optax.EmptyState]:
        del extra_args
        tree = params if params is not None else updates
        mask = watch(tree) if callable(watch) else watch
        treedef = jax.tree.structure(updates)
        watched = [
            jnp.max(jnp.abs(u))
            for u, w in zip(treedef.flatten_up_to(updates), treedef.flatten_up_to(mask))
            if w
        ]
        if not watched:
            raise ValueError("conditional_clip_by_global_norm: the watch mask selects no leaf")
        exceeds = jnp.max(jnp.stack(watched)) > threshold
        norm = optax.tree.norm(updates)
        factor = jnp.where(exceeds, jnp.minimum(1.0, max_norm / (norm + CLIP_EPS)), 1.0)
        return jax.tree.map(lambda u: u * factor.astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def regex_mask(params: PyTree, pattern: str) -> PyTree:
    """Bool pytree like `params`: True where the parameter path matches `pattern` (re.search).

    Raises:
      ValueError: if the pattern is invalid or matches no parameter.
    """
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"invalid parameter pattern {pattern!r}: {err}") from err
    mask = jax.tree_util.tree_map_with_path(lambda p, _: bool(regex.search(path_string(p))), params)
    if not any(jax.tree.leaves(mask)):
        examples = parameter_paths(params)[:3]
        raise ValueError(f"pattern {pattern!r} matches no parameter; paths look like {examples}")
    return mask


# ----------------------------------------------------------------------------- the method


@dataclasses.dataclass(frozen=True)
class AGM(Method):
    """Adaptive gradient modulation (see the module docstring).

    Attributes:
      alpha: modulation strength of k_m = exp(alpha * min(r^ - r, max_exponent)) (>= 0).
      max_exponent: cap of r^ - r (> 0; MLB: 10 for two modalities, 7 for three).
      clip_threshold: a fusion-kernel gradient element beyond +-this triggers clipping
        (>= 0; 0 = never clip). MLB: 1 (two modalities), 5 (three).
      clip_norm: global norm after a triggered clipping (> 0). MLB: 1 (two modalities),
        5 (three).
      clip_pattern: regex (re.search on parameter paths) of the watched fusion parameters.
    """

    name: str = "agm"
    placement: Literal["gradients", "updates"] = "gradients"
    alpha: float = 1.0
    max_exponent: float = 10.0
    clip_threshold: float = 1.0
    clip_norm: float = 1.0
    clip_pattern: str = r"^fusion/.*kernel$"

    config_block: ClassVar[str | None] = "agm"
    block_fields: ClassVar[tuple[str, ...]] = (
        "alpha",
        "max_exponent",
        "clip_threshold",
        "clip_norm",
        "clip_pattern",
    )
    search_space: ClassVar[Mapping[str, Dimension]] = {
        **Method.search_space,
        "alpha": LogUniform(0.1, 4.0),
    }
    # The update arguments agm_alpha / agm_max_exponent of `agm_gradient_transform`.
    traced_fields: ClassVar[tuple[str, ...]] = ("alpha", "max_exponent")
    unread_because: ClassVar[Mapping[str, str]] = {
        **Method.unread_because,
        "placement": "it needs raw gradients: its transform always runs before the optimiser",
    }

    def validate(self) -> None:
        """Method's checks plus the ranges of AGM's settings; placement must be 'gradients'."""
        super().validate()
        self.require("placement", self.placement == "gradients", "'gradients' (raw gradients)")
        self.require("alpha", self.alpha >= 0, ">= 0")
        self.require("max_exponent", self.max_exponent > 0, "> 0")
        self.require("clip_threshold", self.clip_threshold >= 0, ">= 0 (0 = never clip)")
        self.require("clip_norm", self.clip_norm > 0, "> 0")
        try:
            re.compile(self.clip_pattern)
        except re.error as err:
            self.require("clip_pattern", False, f"a valid regular expression ({err})")
        if self.clip_threshold == 0:
            for field in ("clip_norm", "clip_pattern"):
                self.refuse_unused(field, getattr(AGM, field), "clip_threshold is 0: no clipping")

    def forward(
        self, model: Any, inputs: Mapping[str, jax.Array], *, train: bool, method_state: PyTree
    ) -> AGMOutput:
        """Ordinary pass plus eval-mode coalition passes; see the module docstring.

        Args:
          model: a `MultimodalClassifier` (any fusion head).
          inputs: modality -> batch.
          train: mode of the ordinary pass; the padded passes are always in eval mode.
          method_state: unused.

        Returns:
          `AGMOutput` with fused logits f [B, K], Shapley-style logits o_m [B, K] and the
          ordinary features [B, D_m].
        """
        del method_state
        names = list(model.modality_names)
        features = model.encode(inputs, train=train)
        fused = model.fusion(features, train=train)
        # An absent modality's feature: its encoder on one all-zero example in eval mode
        # (running BatchNorm statistics, nothing written), the same for every example.
        absent = {}
        for n in names:
            zero = jnp.zeros((1, *inputs[n].shape[1:]), inputs[n].dtype)
            feature = model.encode({n: zero}, train=False, names=[n])[n]
            absent[n] = jnp.broadcast_to(feature, features[n].shape)
        values: dict[Coalition, jax.Array] = {frozenset(names): fused}
        for size in range(1, len(names)):
            for present in itertools.combinations(names, size):
                mixed = {n: features[n] if n in present else absent[n] for n in names}
                values[frozenset(present)] = model.fusion(mixed, train=False)
        return AGMOutput(fused, agm_logits(values, names), features)

    def losses(self, outputs: AGMOutput, labels: jax.Array, method_state: PyTree) -> Losses:
        """{'fused': CE(f), 'path_<m>': CE(o_m + stop_gradient(sum_{j != m} o_j))}.

        Every path loss has the value CE(sum_m o_m) = CE(f); its gradient is the part G_m
        that flows through o_m.
        """
        del method_state
        logits = outputs.unimodal_logits
        losses = {"fused": cross_entropy(outputs.logits, labels)}
        for name, o in logits.items():
            rest = sum(v for n, v in logits.items() if n != name)
            losses[PATH_PREFIX + name] = cross_entropy(o + jax.lax.stop_gradient(rest), labels)
        return losses

    def combine(self, losses: Losses) -> jax.Array:
        """The training loss CE(f) (the path losses only route gradients)."""
        return losses["fused"]

    def value_and_grad(
        self, losses_fn: Callable[[PyTree], tuple[Losses, Any]], params: PyTree
    ) -> tuple[tuple[jax.Array, Losses, Any], PyTree]:
        """One forward pass, one backward pass per modality path.

        Returns:
          ((CE(f), {'fused': CE(f)}, aux), sum_m G_m), where every `AGMOutput` inside aux
          carries `path_gradients` = {m: G_m} for the transform.
        """
        losses, vjp_fn, aux = jax.vjp(losses_fn, params, has_aux=True)
        zeros = {key: jnp.zeros_like(v) for key, v in losses.items()}
        path_gradients = {}
        for key in losses:
            if key.startswith(PATH_PREFIX):
                (grads,) = vjp_fn({**zeros, key: jnp.ones_like(losses[key])})
                path_gradients[key[len(PATH_PREFIX) :]] = grads
        total = jax.tree.map(lambda *gs: sum(gs), *path_gradients.values())
        aux = jax.tree.map(
            lambda x: x._replace(path_gradients=path_gradients) if isinstance(x, AGMOutput) else x,
            aux,
            is_leaf=lambda x: isinstance(x, AGMOutput),
        )
        return (self.combine(losses), {"fused": losses["fused"]}, aux), total

    def update_kwargs(
        self, outputs: AGMOutput, labels: jax.Array, method_state: PyTree
    ) -> dict[str, Any]:
        """The step's Shapley scores s_m and path gradients G_m, alpha and max_exponent.

        alpha and max_exponent travel as update arguments (`agm_gradient_transform`), so a copy
        of the method with traced values (`with_settings`) reaches the rule.
        """
        del method_state
        return {
            "agm_scores": shapley_scores(outputs.unimodal_logits, labels),
            "path_gradients": outputs.path_gradients,
            "agm_alpha": self.alpha,
            "agm_max_exponent": self.max_exponent,
        }

    def gradient_transform(
        self, params: PyTree, patterns: Mapping[str, list[str]]
    ) -> optax.GradientTransformation:
        """`agm_gradient_transform`, then the conditional clipping (if clip_threshold > 0)."""
        modulate = agm_gradient_transform(
            list(patterns), alpha=self.alpha, max_exponent=self.max_exponent
        )
        if self.clip_threshold <= 0:
            return modulate
        clip = conditional_clip_by_global_norm(
            regex_mask(params, self.clip_pattern),
            threshold=self.clip_threshold,
            max_norm=self.clip_norm,
        )
        return optax.chain(modulate, clip)


def make_agm(config: Any) -> AGM:
    """Builds AGM from `config.method` (block `agm`: alpha, max_exponent, clip_*)."""
    return method_from_config(AGM, config)
