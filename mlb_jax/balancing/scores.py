"""Per-modality scores from unimodal logits: how well each modality alone explains the labels.

MLB (Eq. 4 of the paper, as the reference code computes it) scores modality m by the batch mean
of the softmax probability its unimodal head assigns to the true class. An accuracy-based
variant is available by name for experiments. Scores are gradient-stopped: they steer the
optimiser, they are not part of the loss.
"""

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def true_class_probability(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Batch mean of softmax(logits)[i, labels[i]].

    Args:
      logits: [B, K] unnormalised class scores.
      labels: [B] integer labels in [0, K).

    Returns:
      Scalar float32 in [0, 1].
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)
    return jnp.mean(jnp.exp(picked))


def top1_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Batch mean of 1[argmax(logits[i]) == labels[i]].

    Args:
      logits: [B, K] unnormalised class scores.
      labels: [B] integer labels in [0, K).

    Returns:
      Scalar float32 in [0, 1].
    """
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


SCORE_FUNCTIONS: dict[str, ScoreFn] = {
    "probability": true_class_probability,
    "accuracy": top1_accuracy,
}


def modality_scores(
    unimodal_logits: Mapping[str, jax.Array],
    labels: jax.Array,
    *,
    kind: str = "probability",
) -> dict[str, jax.Array]:
    """Scores every modality from its own unimodal logits (Eq. 4 of the MLB paper).

    Args:
      unimodal_logits: modality name -> [B, K] logits of that modality's unimodal head.
      labels: [B] integer labels.
      kind: 'probability' (mean true-class softmax probability, the paper's score) or
        'accuracy' (mean top-1 accuracy).

    Returns:
      Modality name -> scalar float32 score, with gradients stopped.

    Raises:
      ValueError: for an unknown `kind`, no modalities, or logits whose batch size does not
        match the labels.
    """
    if kind not in SCORE_FUNCTIONS:
        raise ValueError(f"unknown score kind {kind!r}; choose one of {sorted(SCORE_FUNCTIONS)}")
    if not unimodal_logits:
        raise ValueError("modality_scores needs at least one modality's logits, got none")
    score_fn = SCORE_FUNCTIONS[kind]
    scores = {}
    for name, logits in unimodal_logits.items():
        if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
            raise ValueError(
                f"unimodal logits of {name!r} must be [B, K] with B = {labels.shape[0]} "
                f"(the number of labels), got shape {tuple(logits.shape)}"
            )
        scores[name] = jax.lax.stop_gradient(score_fn(logits, labels))
    return scores
