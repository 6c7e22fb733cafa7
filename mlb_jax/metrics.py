"""Evaluation metrics on host arrays: accuracy and expected calibration error (ECE).

Evaluation gathers the (masked) predictions of a whole split on the host, so these are plain
numpy functions of complete arrays: no running averages to get wrong.
"""

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, K] logits, computed stably in float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of [N, K] logits against [N] labels, in [0, 1]."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty split is undefined")
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> float:
    """ECE with `num_bins` equal-width confidence bins (Guo et al., 2017).

    ECE = sum_b (|B_b| / N) * |accuracy(B_b) - mean confidence(B_b)|, where the confidence of
    an example is its maximum softmax probability and bin b holds confidences in
    ((b - 1) / num_bins, b / num_bins] (the first bin also holds 0).

    Args:
      logits: [N, K] fused logits.
      labels: [N] integer labels.
      num_bins: number of equal-width bins on [0, 1].

    Returns:
      ECE in [0, 1].
    """
    probs = softmax(logits)
    confidence = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0, num_bins - 1)
    ece = 0.0
    for b in range(num_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)
