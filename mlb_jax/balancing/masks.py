"""Per-modality parameter masks from path patterns, with ownership checks.

Parameters are named by their '/'-joined pytree path (dict keys, attribute names and sequence
indices), e.g. 'encoders/audio/stem/conv/kernel'; Flax NNX's trailing '.value' is dropped.
A modality owns every parameter whose path matches one of its regular expressions
(`re.search`). A parameter may belong to at most one modality; parameters owned by none (a
fusion bias, shared layers) are left to the caller to list with `unclaimed_parameters`.
"""

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax

PyTree = Any
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


def modality_masks(
    params: PyTree,
    patterns: Mapping[str, str | Sequence[str]],
) -> dict[str, PyTree]:
    """Builds one boolean mask pytree per modality from path regexes.

    Args:
      params: the parameter pytree (nested dicts, an NNX `State`, ...).
      patterns: modality name -> one regex or a list of regexes, matched with `re.search`
        against each parameter's path string (see `parameter_paths`).

    Returns:
      Modality name -> pytree with the structure of `params` and Python bool leaves.

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
    return {
        name: jax.tree_util.tree_map_with_path(
            lambda p, _, name=name: name in owners[path_string(p)], params
        )
        for name in compiled
    }


def unclaimed_parameters(params: PyTree, masks: Mapping[str, PyTree]) -> list[str]:
    """Paths of the parameters that no modality's mask selects (e.g. a shared fusion bias).

    Args:
      params: the parameter pytree the masks were built for.
      masks: modality name -> bool pytree of the same structure.

    Returns:
      Sorted list of path strings.
    """
    paths = parameter_paths(params)
    treedef = jax.tree.structure(params)
    claimed = [False] * len(paths)
    for mask in masks.values():
        for i, selected in enumerate(treedef.flatten_up_to(mask)):
            claimed[i] = claimed[i] or bool(selected)
    return sorted(p for p, c in zip(paths, claimed) if not c)
