"""Modality attribution on host arrays: subsets, exact Shapley values, imbalance, agreement.

Subsets of M modalities are numbered by bitmask: subset s holds modality i (in the run's
modality order) when bit i of s is set, so s = 0 is the empty set and s = 2^M - 1 all of them.
A value function over subsets (e.g. fused accuracy with the absent modalities replaced) is an
array v of length 2^M in that numbering.

The imbalance index (see `imbalance_index`) turns the Shapley values into one number in
[0, 1]: 0 when every modality contributes equally, 1 when one modality alone carries all of
the positive contribution.
"""

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "agreement",
    "imbalance_index",
    "pattern_name",
    "shapley_values",
    "subset_masks",
    "subset_name",
]


def subset_masks(num_modalities: int) -> np.ndarray:
    """Masks of every subset, bool [2^M, M]: row s marks the modalities of bitmask s."""
    if num_modalities < 1:
        raise ValueError(f"need at least one modality, got {num_modalities}")
    s = np.arange(2**num_modalities)[:, None]
    return (s >> np.arange(num_modalities)[None, :]) & 1 == 1


def subset_name(subset: int, names: Sequence[str]) -> str:
    """'audio+video' for the modalities of bitmask `subset`; 'none' for the empty set."""
    present = [n for i, n in enumerate(names) if subset >> i & 1]
    return "+".join(present) if present else "none"


def shapley_values(values: np.ndarray) -> np.ndarray:
    """Exact Shapley value of each modality for a value function over all subsets.

    phi_i = sum over subsets S without i of |S|! (M - |S| - 1)! / M! * (v(S + i) - v(S)).
    They sum to v(all) - v(none) (efficiency).

    Args:
      values: [2^M] v(s) for every subset bitmask s (see the module docstring).

    Returns:
      float64 [M].
    """
    values = np.asarray(values, np.float64)
    m = len(values).bit_length() - 1
    if 2**m != len(values) or m < 1:
        raise ValueError(f"need 2^M values (one per subset), got {len(values)}")
    phi = np.zeros(m)
    for i in range(m):
        for s in range(2**m):
            if s >> i & 1:
                continue
            size = bin(s).count("1")
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            phi[i] += weight * (values[s | 1 << i] - values[s])
    return phi


def imbalance_index(shapley: np.ndarray) -> float | None:
    """How unevenly the modalities contribute: 0 = equally, 1 = one modality alone.

    With the positive parts of the Shapley values as shares p_i = max(phi_i, 0) / sum_j
    max(phi_j, 0), the index is the total-variation distance of p from the uniform share,
    normalised to [0, 1]: I = M / (2 (M - 1)) * sum_i |p_i - 1 / M|. For M = 2 it is
    |p_1 - p_2|. A modality that hurts (phi < 0) counts as contributing nothing.

    Args:
      shapley: [M] Shapley values, M >= 2.

    Returns:
      I in [0, 1], or None when no modality contributes positively (shares undefined).
    """
    phi = np.maximum(np.asarray(shapley, np.float64), 0.0)
    m = len(phi)
    if m < 2:
        raise ValueError("the imbalance index needs at least two modalities")
    total = phi.sum()
    if total <= 0:
        return None
    p = phi / total
    return float(m / (2 * (m - 1)) * np.abs(p - 1 / m).sum())


def pattern_name(pattern: int, names: Sequence[str]) -> str:
    """'only audio right', 'all wrong', 'all right', 'audio+video right' for a pattern bitmask."""
    right = [n for i, n in enumerate(names) if pattern >> i & 1]
    if not right:
        return "all wrong" if len(names) > 2 else "both wrong"
    if len(right) == len(names):
        return "all right" if len(names) > 2 else "both right"
    return f"only {right[0]} right" if len(right) == 1 else f"{'+'.join(right)} right"


def agreement(reference_correct: np.ndarray, fused_correct: np.ndarray) -> dict[str, np.ndarray]:
    """Multimodal accuracy within each correctness pattern of reference unimodal models.

    An example's pattern is the bitmask sum_i 2^i [reference model i is right] (the paper's
    Figure 4: both wrong, only audio right, only video right, both right for M = 2).

    Args:
      reference_correct: bool [N, M], whether each reference unimodal model is right.
      fused_correct: bool [N], whether the multimodal model is right.

    Returns:
      {'count': int64 [2^M] examples per pattern, 'fused_correct': int64 [2^M] of them the
      multimodal model gets right, 'fused_accuracy': float64 [2^M] (NaN for an empty pattern)}.
    """
    reference_correct = np.asarray(reference_correct, bool)
    n, m = reference_correct.shape
    if len(fused_correct) != n:
        raise ValueError(f"{n} reference rows but {len(fused_correct)} fused predictions")
    pattern = (reference_correct * (1 << np.arange(m))).sum(axis=1)
    count = np.bincount(pattern, minlength=2**m)
    right = np.bincount(pattern, np.asarray(fused_correct, np.float64), minlength=2**m)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = right / count
    return {
        "count": count.astype(np.int64),
        "fused_correct": right.astype(np.int64),
        "fused_accuracy": acc,
    }
