"""MLB balancing coefficients k_i from per-modality scores (Eqs. 5-7 of the paper, any M >= 2).

For modality i with score s_i and the other scores s_j (j != i):

    r_i    = mean_{j != i} s_j / s_i                      (Eq. 5: > 1 when i lags)
    beta_i = beta_max if r_i > 1 else 2                   (Eq. 7: capped acceleration)
    k_i    = 1 + (beta_i - 1) * tanh(alpha * (r_i - 1))   (Eq. 6)

A lagging modality (r > 1) is accelerated up to beta_max; a leading one (r < 1) is slowed
towards 0; equal scores give r = 1 and k = 1, so balancing fades out once modalities are on
par. beta_max = 2 is the paper's default (uncapped) rule, beta_max = 1 disables acceleration,
beta_max < 1 slows the lagging modality too. With beta_i = 2, k_i is computed as
2 sigmoid(2 alpha (r_i - 1)), equal to 1 + tanh(alpha (r_i - 1)) but free of its cancellation
when k_i is near 0 (float32 relative error ~1e-7 instead of up to percents).

Zero scores: the ratio is computed as (mean_others + eps) / (s_i + eps) with eps = 1e-8
(`SCORE_EPS`), so a zero score gives a large finite r (k saturates at beta_max) and all-zero
scores give r = 1 (k = 1) instead of inf or NaN. For scores far above eps the change is below
float32 resolution.
"""

from collections.abc import Mapping
from numbers import Real

import jax
import jax.numpy as jnp
import numpy as np

SCORE_EPS = 1e-8

Scalar = float | jax.Array


def _check_static(name: str, value: Scalar, minimum: float) -> None:
    """Validates a hyper-parameter when it is a concrete number (not when traced)."""
    if isinstance(value, Real | np.ndarray | np.generic) and float(np.asarray(value)) < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {float(np.asarray(value))}")


def validate_hyperparameters(alpha: Scalar, beta_max: Scalar) -> None:
    """Raises ValueError for alpha < 0 or beta_max < 0 given as concrete numbers.

    Traced values (e.g. under `optax.inject_hyperparams`) cannot be checked at trace time and
    are passed through.
    """
    _check_static("alpha", alpha, 0.0)
    _check_static("beta_max", beta_max, 0.0)


def mlb_ratios(scores: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """r_i = mean of the other modalities' scores over modality i's score (Eq. 5).

    Args:
      scores: modality name -> scalar score (M >= 2 entries).

    Returns:
      Modality name -> scalar float32 ratio.

    Raises:
      ValueError: with fewer than two modalities.
    """
    names = list(scores)
    if len(names) < 2:
        raise ValueError(
            f"MLB balances at least two modalities; got {len(names)} ({names}). "
            "With one modality there is nothing to balance: drop the balancing transform."
        )
    values = jnp.stack([jnp.asarray(scores[n], jnp.float32) for n in names])
    others_mean = (jnp.sum(values) - values) / (len(names) - 1)
    ratios = (others_mean + SCORE_EPS) / (values + SCORE_EPS)
    return {n: ratios[i] for i, n in enumerate(names)}


def mlb_coefficients(
    scores: Mapping[str, jax.Array],
    *,
    alpha: Scalar,
    beta_max: Scalar,
) -> dict[str, jax.Array]:
    """MLB coefficients k_i (Eqs. 5-7) for any M >= 2 modalities.

    Args:
      scores: modality name -> scalar score (e.g. from `modality_scores`).
      alpha: steepness of the tanh (>= 0; 0 gives k = 1 everywhere).
      beta_max: cap on the acceleration of a lagging modality (>= 0; 2 = the paper's default
        uncapped rule, 1 = no acceleration, < 1 slows the lagging modality as well).

    Returns:
      Modality name -> scalar float32 coefficient k_i, in (0, max(2, beta_max)).

    Raises:
      ValueError: with fewer than two modalities, alpha < 0 or beta_max < 0.
    """
    validate_hyperparameters(alpha, beta_max)
    ratios = mlb_ratios(scores)
    alpha = jnp.asarray(alpha, jnp.float32)
    beta_max = jnp.asarray(beta_max, jnp.float32)
    coefficients = {}
    for name, r in ratios.items():
        z = alpha * (r - 1.0)
        accelerated = 1.0 + (beta_max - 1.0) * jnp.tanh(z)
        # beta = 2: 1 + tanh(z) = 2 sigmoid(2 z), the same value without the cancellation of
        # 1 + tanh(z) as k -> 0 (float32 was 1.5% off at z = -6, k = 1.2e-5; here 1.2e-7).
        decelerated = 2.0 * jax.nn.sigmoid(2.0 * z)
        coefficients[name] = jnp.where(r > 1.0, accelerated, decelerated)
    return coefficients
