"""The one per-modality scaling core that every balancing transform is built on.

A balancing method (MLB, OGM / OGM-GE, MSLR, AGM, or your own) differs only in its *coefficient
rule*: how this step's inputs (modality scores, multipliers, ...) and the state turn into one
coefficient k_m per modality. `scale_by_modality` supplies everything else, in the shape of
optax's own transforms (a small `init_fn` / `update_fn` pair over shared helpers, NamedTuple
state):

  * per-leaf modality labels, like `optax.multi_transform(param_labels=...)`: a pytree with the
    params' structure whose leaves are a modality name or None (or a callable params -> such a
    pytree; see `mlb_jax.balancing.modality_labels`);
  * one state type, `BalancingState` (arrays only: jits, shards and checkpoints), that
    `balancing_metrics` logs as `k/<m>`, `score/<m>` and `smoothed_score/<m>`;
  * the application of k: every leaf labelled m is multiplied by k_m, every leaf labelled None
    passes unscaled. A method whose k acts differently (AGM combines per-path gradients) passes
    its own `apply`.

Per-step inputs arrive as keyword extra arguments of `update`; unknown ones are ignored, so a
balancing transform chains into any optax pipeline.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mlb_jax.balancing.masks import parameter_paths

PyTree = Any
LabelsOrFn = PyTree | Callable[[PyTree], PyTree]
ScalarOrSchedule = float | jax.Array | optax.Schedule


class BalancingState(NamedTuple):
    """State of every balancing transform: arrays only, so it jits, shards and checkpoints.

    `MLBState` is a deprecated alias of this class (kept so older code and checkpoints work).

    Attributes:
      count: int32 [] number of updates applied so far.
      scores: modality -> float32 [] score of the last step as the rule received it.
      smoothed_scores: modality -> float32 [] what the rule's coefficients were computed from
        (MLB: the EMA of the scores; AGM: the running means; else equal to `scores`).
      coefficients: modality -> float32 [] the last k_m applied (1 before the first update).
      extra: method-specific arrays (OGM-GE: the uint32 key data of its noise); () if none.
    """

    count: jax.Array
    scores: dict[str, jax.Array]
    smoothed_scores: dict[str, jax.Array]
    coefficients: dict[str, jax.Array]
    extra: PyTree = ()


#: Deprecated alias of `BalancingState` (the state was first written for MLB alone).
MLBState = BalancingState

# (modalities in order, state before the update, the update's keyword extra arguments)
#   -> the state after it: scores, smoothed_scores, coefficients (and extra) of this step.
#   The core increments `count` itself.
Rule = Callable[[Sequence[str], BalancingState, Mapping[str, Any]], BalancingState]
# (updates, labels pytree or None, state before, state after the rule, extra arguments)
#   -> the new updates.
Apply = Callable[[PyTree, PyTree | None, BalancingState, BalancingState, Mapping[str, Any]], PyTree]


def init_state(modalities: Sequence[str], extra: PyTree = ()) -> BalancingState:
    """The state before any update: zero scores, unit coefficients, count 0."""
    zeros = {n: jnp.zeros([], jnp.float32) for n in modalities}
    return BalancingState(
        count=jnp.zeros([], jnp.int32),
        scores=zeros,
        smoothed_scores=dict(zeros),
        coefficients={n: jnp.ones([], jnp.float32) for n in modalities},
        extra=extra,
    )


def value_at(value: ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """A hyper-parameter's value at update `count`: a number, or an optax schedule called."""
    return value(count) if callable(value) else value


def resolve_labels(
    labels: LabelsOrFn, tree: PyTree, modalities: Sequence[str]
) -> tuple[jax.tree_util.PyTreeDef, list[str | None]]:
    """Flattens the labels against the structure of `tree`, with clear errors.

    Args:
      labels: labels pytree (leaves: modality name or None) or a callable tree -> labels.
      tree: the params (or the updates when no params are given).
      modalities: the known modality names.

    Returns:
      (tree's treedef, one label per leaf of `tree` in flattening order).

    Raises:
      ValueError: labels that do not match the tree's structure, or a label that is neither
        None nor one of `modalities` (the parameter is named).
    """
    treedef = jax.tree.structure(tree)
    resolved = labels(tree) if callable(labels) else labels
    try:
        flat = treedef.flatten_up_to(resolved)
    except (ValueError, TypeError) as err:
        raise ValueError(
            "the modality labels do not match the parameter structure: build them from the "
            f"same params, e.g. with mlb_jax.balancing.modality_labels(params, patterns) ({err})"
        ) from err
    for path, label in zip(parameter_paths(tree), flat):
        if label is not None and label not in modalities:
            raise ValueError(
                f"parameter {path!r} is labelled {label!r}, which is not one of the modalities "
                f"{list(modalities)} (use None for a parameter that no modality owns)"
            )
    return treedef, flat


def modality_values(
    inputs: Mapping[str, Any],
    key: str,
    modalities: Sequence[str],
    *,
    required: bool = True,
) -> dict[str, jax.Array] | None:
    """Reads one per-modality extra argument of `update` (e.g. `modality_scores`), checked.

    Args:
      inputs: the update's keyword extra arguments.
      key: the argument's name.
      modalities: the modality names it must cover, exactly.
      required: if False, a missing (or None) argument gives None instead of an error.

    Returns:
      Modality -> float32 scalar, in the order of `modalities` (None when absent and optional).

    Raises:
      ValueError: the argument is missing, lacks a modality, has an unknown one, or holds a
        non-scalar value.
    """
    given = inputs.get(key)
    if given is None:
        if required:
            raise ValueError(f"update(...) needs the keyword argument {key}={{modality: value}}")
        return None
    missing = [n for n in modalities if n not in given]
    if missing:
        raise ValueError(f"{key} lacks {missing}: pass a value for every modality ({modalities})")
    unknown = [n for n in given if n not in modalities]
    if unknown:
        raise ValueError(f"{key} has unknown modalities {unknown}; known: {list(modalities)}")
    values = {n: jnp.asarray(given[n], jnp.float32) for n in modalities}
    for n, v in values.items():
        if v.ndim != 0:
            raise ValueError(f"{key}[{n!r}] must be a scalar, got shape {v.shape}")
    return values


def scale_by_labels(
    updates: PyTree, labels: PyTree, coefficients: Mapping[str, jax.Array]
) -> PyTree:
    """Multiplies every leaf labelled m by coefficients[m] (cast to the leaf's dtype).

    Args:
      updates: the gradients or updates.
      labels: pytree with the structure of `updates`, leaves a modality name or None.
      coefficients: modality -> scalar.

    Returns:
      The scaled updates; leaves labelled None (and None updates) are returned as they are.
    """
    treedef = jax.tree.structure(updates)
    leaves = treedef.flatten_up_to(updates)
    return treedef.unflatten(
        [
            u if label is None or u is None else u * coefficients[label].astype(u.dtype)
            for u, label in zip(leaves, treedef.flatten_up_to(labels))
        ]
    )


def _scale(
    updates: PyTree,
    labels: PyTree | None,
    state: BalancingState,
    new_state: BalancingState,
    inputs: Mapping[str, Any],
) -> PyTree:
    del state, inputs
    return scale_by_labels(updates, labels, new_state.coefficients)


def scale_by_modality(
    labels: LabelsOrFn | None,
    rule: Rule,
    *,
    modalities: Sequence[str],
    apply: Apply = _scale,
    extra: PyTree = (),
) -> optax.GradientTransformationExtraArgs:
    """Per-modality scaling: k_m from `rule`, applied to every leaf labelled m.

    Args:
      labels: pytree like the params with leaves a modality name or None (unscaled), or a
        callable params -> such a pytree; None when `apply` does not read labels (AGM).
      rule: the coefficient rule (see `Rule`): state and this step's extra arguments -> the
        state holding this step's coefficients.
      modalities: the modality names, in the order the rule sees them (at least two).
      apply: how the coefficients act on the updates (default: `scale_by_labels`).
      extra: initial value of the state's method-specific `extra` field.

    Returns:
      An `optax.GradientTransformationExtraArgs`; `update(updates, state, params=None,
      **extra_args)` hands the extra arguments to the rule and ignores the ones it does not
      read. The state is a `BalancingState`.

    Raises:
      ValueError: fewer than two modalities; at init and update, labels that do not match the
        params or name an unknown modality; whatever the rule raises for bad inputs.
    """
    names = list(modalities)
    if len(names) < 2:
        raise ValueError(f"balancing needs at least two modalities, got {names}")

    def init_fn(params: PyTree) -> BalancingState:
        if labels is not None:
            resolve_labels(labels, params, names)
        return init_state(names, extra)

    def update_fn(
        updates: PyTree, state: BalancingState, params: PyTree | None = None, **extra_args: Any
    ) -> tuple[PyTree, BalancingState]:
        tree_labels = None
        if labels is not None:
            treedef, flat = resolve_labels(labels, params if params is not None else updates, names)
            tree_labels = treedef.unflatten(flat)
        new_state = rule(names, state, extra_args)
        updates = apply(updates, tree_labels, state, new_state, extra_args)
        return updates, new_state._replace(count=optax.safe_increment(state.count))

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


def balancing_state(opt_state: PyTree) -> BalancingState:
    """Finds the `BalancingState` inside any (chained, injected, multi-step) optimiser state.

    Args:
      opt_state: the state of a transformation that contains a balancing transform.

    Returns:
      The first `BalancingState` found in flattening order.

    Raises:
      ValueError: if the state holds no `BalancingState`.
    """
    found = [
        x
        for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, BalancingState))
        if isinstance(x, BalancingState)
    ]
    if not found:
        raise ValueError(
            "the optimiser state contains no BalancingState (no balancing transform such as "
            "mlb_gradient_transform)"
        )
    return found[0]


def balancing_metrics(opt_state: PyTree) -> dict[str, jax.Array]:
    """Flat logging view of the balancing state: {'k/<m>': k, 'score/<m>': score, ...}.

    Args:
      opt_state: the state of a transformation that contains a balancing transform.

    Returns:
      Name -> scalar array, for `k/`, `score/` and `smoothed_score/` of every modality.
    """
    state = balancing_state(opt_state)
    metrics = {f"k/{n}": v for n, v in state.coefficients.items()}
    metrics |= {f"score/{n}": v for n, v in state.scores.items()}
    metrics |= {f"smoothed_score/{n}": v for n, v in state.smoothed_scores.items()}
    return metrics
