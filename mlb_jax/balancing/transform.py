"""MLB as an optax gradient transformation: scale each modality's leaves by its coefficient k_i.

`mlb_gradient_transform` multiplies every leaf selected by modality i's mask by
k_i = mlb_coefficients(scores)[i] and leaves all other leaves (a shared fusion bias, shared
layers) untouched. The scores of the current step arrive as the keyword extra argument
`modality_scores` of `update`, so the transform chains into any optax pipeline:

    tx = optax.chain(mlb_gradient_transform(masks, alpha=0.5, beta_max=10.0),
                     optax.sgd(1e-2, momentum=0.9))
    updates, opt_state = tx.update(grads, opt_state, params, modality_scores=scores)

Placement (DESIGN decision 2). Chained *before* the base optimiser it scales raw gradients,
as the reference PyTorch code does. Chained *after* it, it scales the optimiser's update, i.e.
it modulates each modality's learning rate (Eq. 2 of the paper). With plain SGD the two are the
same; with momentum they agree while k is constant over the momentum horizon; Adam normalises
away any constant gradient scale, so only the "after" placement changes Adam's step size.
`chain_with_balancing` builds either order.
"""

from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mlb_jax.balancing.coefficients import mlb_coefficients, validate_hyperparameters
from mlb_jax.balancing.masks import parameter_paths

PyTree = Any
MaskOrFn = PyTree | Callable[[PyTree], PyTree]
ScalarOrSchedule = float | jax.Array | optax.Schedule


class MLBState(NamedTuple):
    """State of `mlb_gradient_transform`: arrays only, so it jits, shards and checkpoints.

    Attributes:
      count: int32 [] number of updates applied so far.
      scores: modality -> float32 [] score of the last step as passed to `update`.
      smoothed_scores: modality -> float32 [] scores the last coefficients were computed from
        (the exponential moving average when `score_ema > 0`, else equal to `scores`).
      coefficients: modality -> float32 [] the last k_i (1 before the first update).
    """

    count: jax.Array
    scores: dict[str, jax.Array]
    smoothed_scores: dict[str, jax.Array]
    coefficients: dict[str, jax.Array]


def _resolve(mask: MaskOrFn, tree: PyTree) -> PyTree:
    return mask(tree) if callable(mask) else mask


def flat_masks(
    masks: Mapping[str, MaskOrFn], tree: PyTree
) -> tuple[jax.tree_util.PyTreeDef, dict[str, list[bool]]]:
    """Flattens every modality's mask against the structure of `tree`, with clear errors."""
    treedef = jax.tree.structure(tree)
    flat = {}
    for name, mask in masks.items():
        resolved = _resolve(mask, tree)
        if jax.tree.structure(resolved) != treedef:
            raise ValueError(
                f"the mask of modality {name!r} does not match the parameter structure: "
                f"mask {jax.tree.structure(resolved)} vs params {treedef}. Build masks from the "
                "same params, e.g. with mlb_jax.modality_masks(params, patterns)."
            )
        leaves = treedef.flatten_up_to(resolved)
        if not all(isinstance(x, bool) or getattr(x, "dtype", None) == jnp.bool_ for x in leaves):
            raise ValueError(f"the mask of modality {name!r} must have boolean leaves")
        flat[name] = [bool(x) for x in leaves]
    return treedef, flat


def check_disjoint(tree: PyTree, flat: Mapping[str, list[bool]]) -> None:
    """Raises ValueError naming every leaf selected by two flattened masks (see `flat_masks`)."""
    paths = parameter_paths(tree)
    clashes = [
        f"{path} ({' and '.join(n for n in flat if flat[n][i])})"
        for i, path in enumerate(paths)
        if sum(flat[n][i] for n in flat) > 1
    ]
    if clashes:
        raise ValueError("parameters selected by two modality masks: " + "; ".join(clashes))


def initial_state(names: list[str]) -> MLBState:
    """The state before any update: zero scores, unit coefficients, count 0."""
    zeros = {n: jnp.zeros([], jnp.float32) for n in names}
    return MLBState(
        count=jnp.zeros([], jnp.int32),
        scores=zeros,
        smoothed_scores=dict(zeros),
        coefficients={n: jnp.ones([], jnp.float32) for n in names},
    )


def scale_selected(
    leaves: list[Any], flat: Mapping[str, list[bool]], coefficients: Mapping[str, jax.Array]
) -> tuple[list[Any], list[int]]:
    """Multiplies each leaf selected by modality m's flattened mask by coefficients[m].

    Args:
      leaves: flattened updates (see `flat_masks`); None leaves are left alone.
      flat: modality -> flattened boolean mask.
      coefficients: modality -> scalar, cast to each leaf's dtype.

    Returns:
      (the new leaves, the indices of the leaves that were scaled).
    """
    out = list(leaves)
    selected_indices = []
    for name, mask in flat.items():
        for i, selected in enumerate(mask):
            if selected and leaves[i] is not None:
                out[i] = leaves[i] * coefficients[name].astype(leaves[i].dtype)
                selected_indices.append(i)
    return out, selected_indices


def _value_at(value: ScalarOrSchedule, count: jax.Array) -> jax.Array:
    return value(count) if callable(value) else value


def mlb_gradient_transform(
    modality_masks: Mapping[str, MaskOrFn],
    *,
    alpha: ScalarOrSchedule,
    beta_max: ScalarOrSchedule = 2.0,
    score_ema: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Multi-Loss Balanced gradient modulation (MLB) as an optax transformation.

    Args:
      modality_masks: modality name -> boolean pytree with the structure of the params (or a
        callable params -> such a pytree), selecting the leaves modality i's coefficient
        scales (see `mlb_jax.modality_masks`). At least two modalities; masks must be disjoint.
      alpha: tanh steepness (>= 0), a number or an optax schedule of the update count.
        Works under `optax.inject_hyperparams` (pass masks as a static argument if they are
        callables).
      beta_max: cap on the acceleration of a lagging modality (>= 0; 2 = paper's default
        rule, 1 = no acceleration, < 1 slows it too), a number or a schedule.
      score_ema: decay in [0, 1) of an exponential moving average of the scores before the
        coefficients are computed; 0 (default) uses each step's scores as the paper does.

    Returns:
      An `optax.GradientTransformationExtraArgs` whose `update(updates, state, params=None, *,
      modality_scores, **extra_args)` takes modality name -> scalar score and ignores unknown
      extra arguments. The state is an `MLBState`.

    Raises:
      ValueError: fewer than two modalities, alpha < 0, beta_max < 0, score_ema outside
        [0, 1); at init, masks that do not match the params or overlap; at update, a score
        missing for a masked modality or a score for an unknown modality.
    """
    names = list(modality_masks)
    if len(names) < 2:
        raise ValueError(
            f"mlb_gradient_transform needs masks for at least two modalities, got {names}"
        )
    if not callable(alpha) or not callable(beta_max):
        validate_hyperparameters(
            0.0 if callable(alpha) else alpha, 0.0 if callable(beta_max) else beta_max
        )
    if not 0.0 <= score_ema < 1.0:
        raise ValueError(f"score_ema must be in [0, 1), got {score_ema}")

    def init_fn(params: PyTree) -> MLBState:
        _, flat = flat_masks(modality_masks, params)
        check_disjoint(params, flat)
        return initial_state(names)

    def update_fn(
        updates: PyTree,
        state: MLBState,
        params: PyTree | None = None,
        *,
        modality_scores: Mapping[str, jax.Array],
        **extra_args: Any,
    ) -> tuple[PyTree, MLBState]:
        del extra_args
        missing = [n for n in names if n not in modality_scores]
        unknown = [n for n in modality_scores if n not in modality_masks]
        if missing:
            raise ValueError(
                f"modality_scores lacks {missing}: pass a score for every masked modality ({names})"
            )
        if unknown:
            raise ValueError(f"modality_scores has unknown modalities {unknown}; known: {names}")
        scores = {n: jnp.asarray(modality_scores[n], jnp.float32) for n in names}
        for n, s in scores.items():
            if s.ndim != 0:
                raise ValueError(f"the score of {n!r} must be a scalar, got shape {s.shape}")

        first = state.count == 0
        smoothed = {
            n: jnp.where(first, s, score_ema * state.smoothed_scores[n] + (1 - score_ema) * s)
            for n, s in scores.items()
        }
        coefficients = mlb_coefficients(
            smoothed,
            alpha=_value_at(alpha, state.count),
            beta_max=_value_at(beta_max, state.count),
        )

        treedef, flat = flat_masks(modality_masks, params if params is not None else updates)
        scaled, _ = scale_selected(treedef.flatten_up_to(updates), flat, coefficients)
        new_state = MLBState(
            count=optax.safe_increment(state.count),
            scores=scores,
            smoothed_scores=smoothed,
            coefficients=coefficients,
        )
        return treedef.unflatten(scaled), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def chain_with_balancing(
    balancing: optax.GradientTransformation,
    base: optax.GradientTransformation,
    *,
    placement: Literal["gradients", "updates"] = "gradients",
) -> optax.GradientTransformationExtraArgs:
    """Chains a balancing transform with a base optimiser in the chosen order.

    Args:
      balancing: e.g. `mlb_gradient_transform(...)`.
      base: the base optimiser, e.g. `optax.sgd(lr, momentum=0.9)` or `optax.adam(lr)`.
      placement: 'gradients' scales raw gradients before the optimiser (the reference code);
        'updates' scales the optimiser's output, i.e. per-modality learning rates (Eq. 2).

    Returns:
      The chained transformation.
    """
    if placement == "gradients":
        return optax.chain(balancing, base)
    if placement == "updates":
        return optax.chain(base, balancing)
    raise ValueError(f"placement must be 'gradients' or 'updates', got {placement!r}")


def balancing_state(opt_state: PyTree) -> MLBState:
    """Finds the `MLBState` inside any (chained, injected, multi-step) optimiser state.

    Args:
      opt_state: the state of a transformation that contains `mlb_gradient_transform`.

    Returns:
      The first `MLBState` found in flattening order.

    Raises:
      ValueError: if the state holds no `MLBState`.
    """
    found = [
        x
        for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, MLBState))
        if isinstance(x, MLBState)
    ]
    if not found:
        raise ValueError("the optimiser state contains no MLBState (no mlb_gradient_transform)")
    return found[0]


def balancing_metrics(opt_state: PyTree) -> dict[str, jax.Array]:
    """Flat logging view of the balancing state: {'k/<m>': k, 'score/<m>': score, ...}.

    Args:
      opt_state: the state of a transformation that contains `mlb_gradient_transform`.

    Returns:
      Name -> scalar array, for `k/`, `score/` and `smoothed_score/` of every modality.
    """
    state = balancing_state(opt_state)
    metrics = {f"k/{n}": v for n, v in state.coefficients.items()}
    metrics |= {f"score/{n}": v for n, v in state.scores.items()}
    metrics |= {f"smoothed_score/{n}": v for n, v in state.smoothed_scores.items()}
    return metrics
