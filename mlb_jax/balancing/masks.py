"""Which modality owns each parameter: per-leaf labels (and boolean masks) from path patterns.

Parameters are named by their '/'-joined pytree path (dict keys, attribute names and sequence
indices), e.g. 'encoders/audio/stem/conv/kernel'; Flax NNX's trailing '.value' is dropped.
A modality owns every parameter whose path matches one of its regular expressions
(`re.search`). A parameter belongs to at most one modality; parameters owned by none (a fusion
bias, shared layers) get the label None and are left to the caller (`unclaimed_parameters`
lists them).

The balancing transforms read ownership as a *labels* pytree, like the `param_labels` of
`optax.multi_transform`: one leaf per parameter holding the owning modality's name or None.
`modality_labels` builds it from patterns; `labels_from_masks` converts the per-modality boolean
masks of the public `mlb_gradient_transform` contract into labels, refusing overlaps.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
MaskOrFn = PyTree | Callable[[PyTree], PyTree]
_DROPPED_KEYS = ("value", "raw_value")


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_string(path: Sequence[Any]) -> str:
    """'/'-joined name of a pytree key path, without NNX's trailing '.value'."""
    names = [_key_name(k) for k in path]
    while names and names[-1] in _DROPPED_KEYS:
        names.pop()
    return "/".join(names)


def parameter_paths(params: PyTree) -> list[str]:
    """Path strings of every leaf of `params`, in flattening order."""
    return [path_string(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def modality_labels(
    params: PyTree,
    patterns: Mapping[str, str | Sequence[str]],
) -> PyTree:
    """One label per parameter: the name of the modality whose patterns match its path, or None.

    Args:
      params: the parameter pytree (nested dicts, an NNX `State`, ...).
      patterns: modality name -> one regex or a list of regexes, matched with `re.search`
        against each parameter's path string (see `parameter_paths`).

    Returns:
      A pytree with the structure of `params` whose leaves are a modality name (str) or None
      (owned by no modality). None is an empty subtree to `jax.tree` functions, so read it with
      `jax.tree.structure(params).flatten_up_to(labels)`.

    Raises:
      ValueError: if a pattern is not a valid regex, a modality's patterns match no parameter,
        or any parameter is claimed by two modalities (every such parameter is named).
    """
    compiled: dict[str, list[re.Pattern[str]]] = {}
    for name, pats in patterns.items():
        pats = [pats] if isinstance(pats, str) else list(pats)
        try:
            compiled[name] = [re.compile(p) for p in pats]
        except re.error as err:
            raise ValueError(f"invalid pattern for modality {name!r}: {err}") from err

    paths = parameter_paths(params)
    owners: dict[str, list[str]] = {
        path: [n for n, regexes in compiled.items() if any(r.search(path) for r in regexes)]
        for path in paths
    }
    clashes = [f"{p} ({' and '.join(o)})" for p, o in owners.items() if len(o) > 1]
    if clashes:
        raise ValueError(
            "parameters claimed by two modalities (make the patterns disjoint): "
            + "; ".join(clashes)
        )
    for name in compiled:
        if not any(name in o for o in owners.values()):
            raise ValueError(
                f"the patterns of modality {name!r} ({patterns[name]!r}) match no parameter; "
                f"parameter paths look like {paths[:3]}"
            )
    treedef = jax.tree.structure(params)
    return treedef.unflatten([(owners[p] or [None])[0] for p in paths])


def modality_masks(
    params: PyTree,
    patterns: Mapping[str, str | Sequence[str]],
) -> dict[str, PyTree]:
    """Builds one boolean mask pytree per modality from path regexes (see `modality_labels`).

    Args:
      params: the parameter pytree (nested dicts, an NNX `State`, ...).
      patterns: modality name -> one regex or a list of regexes (`re.search` on the paths).

    Returns:
      Modality name -> pytree with the structure of `params` and Python bool leaves.

    Raises:
      ValueError: as `modality_labels` (invalid regex, a modality matching nothing, overlaps).
    """
    treedef = jax.tree.structure(params)
    labels = treedef.flatten_up_to(modality_labels(params, patterns))
    return {name: treedef.unflatten([label == name for label in labels]) for name in patterns}


def labels_from_masks(masks: Mapping[str, MaskOrFn]) -> Callable[[PyTree], PyTree]:
    """Converts per-modality boolean masks into a labels function params -> labels pytree.

    Args:
      masks: modality name -> bool pytree with the structure of the params, or a callable
        params -> such a pytree.

    Returns:
      A callable tree -> labels pytree (leaf: the modality whose mask selects it, or None),
      resolved against the tree it is given (the params at init, the params or updates at
      update), so callable masks keep working under `optax.inject_hyperparams`.

    Raises (when the returned callable runs):
      ValueError: a mask whose structure differs from the tree's or whose leaves are not
        booleans, or parameters selected by two masks (every one is named).
    """

    def labels(tree: PyTree) -> PyTree:
        treedef = jax.tree.structure(tree)
        owners: list[list[str]] = [[] for _ in range(treedef.num_leaves)]
        for name, mask in masks.items():
            resolved = mask(tree) if callable(mask) else mask
            if jax.tree.structure(resolved) != treedef:
                raise ValueError(
                    f"the mask of modality {name!r} does not match the parameter structure: "
                    f"mask {jax.tree.structure(resolved)} vs params {treedef}. Build masks from "
                    "the same params, e.g. with mlb_jax.modality_masks(params, patterns)."
                )
            leaves = treedef.flatten_up_to(resolved)
            if not all(
                isinstance(x, bool) or getattr(x, "dtype", None) == jnp.bool_ for x in leaves
            ):
                raise ValueError(f"the mask of modality {name!r} must have boolean leaves")
            for owner, selected in zip(owners, leaves):
                if bool(selected):
                    owner.append(name)
        clashes = [
            f"{path} ({' and '.join(owner)})"
            for path, owner in zip(parameter_paths(tree), owners)
            if len(owner) > 1
        ]
        if clashes:
            raise ValueError("parameters selected by two modality masks: " + "; ".join(clashes))
        return treedef.unflatten([owner[0] if owner else None for owner in owners])

    return labels


def unclaimed_parameters(params: PyTree, masks: Mapping[str, PyTree]) -> list[str]:
    """Paths of the parameters that no modality's mask selects (e.g. a shared fusion bias).

    Args:
      params: the parameter pytree the masks were built for.
      masks: modality name -> bool pytree of the same structure.

    Returns:
      Sorted list of path strings.
    """
    labels = jax.tree.structure(params).flatten_up_to(labels_from_masks(masks)(params))
    return sorted(p for p, label in zip(parameter_paths(params), labels) if label is None)
