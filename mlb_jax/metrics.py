"""Classification and calibration metrics on host arrays.

Accuracy, top-k accuracy, the confusion matrix, per-class and macro F1, Cohen's kappa,
expected calibration error (ECE), its reliability-diagram bins and the class-wise ECE.
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
    bins = _bin_index(confidence, num_bins)
    ece = 0.0
    for b in range(num_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def _bin_index(confidence: np.ndarray, num_bins: int) -> np.ndarray:
    """Bin b of each confidence: ((b - 1) / num_bins, b / num_bins], 0 also in the first."""
    return np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0, num_bins - 1)


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of examples whose label is among the k largest logits.

    Ties are broken by `np.argsort` (stable, by class index), as top-1 `accuracy` does.

    Args:
      logits: [N, K].
      labels: [N] integer labels.
      k: 1 <= k <= K.
    """
    if len(labels) == 0:
        raise ValueError("accuracy of an empty split is undefined")
    top = np.argsort(-np.asarray(logits), axis=-1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=-1)))


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] int64 counts: entry [i, j] counts examples of true class i predicted as j."""
    out = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(out, (np.asarray(labels), np.asarray(predictions)), 1)
    return out


def per_class_f1(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a [K, K] confusion matrix.

    A zero denominator gives 0 (no prediction of a class: precision 0; no example: recall 0),
    sklearn's `zero_division=0`.

    Returns:
      {'precision', 'recall', 'f1': float64 [K], 'support': int64 [K] (true examples),
      'predicted': int64 [K] (predictions of each class)}.
    """
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(np.int64),
        "predicted": predicted.astype(np.int64),
    }


def macro_f1(confusion: np.ndarray) -> float:
    """Unweighted mean F1 over the classes that occur as a label or a prediction.

    A class absent from both cannot be scored and is left out (sklearn's default `labels`).
    """
    stats = per_class_f1(confusion)
    seen = (stats["support"] > 0) | (stats["predicted"] > 0)
    return float(stats["f1"][seen].mean()) if seen.any() else 0.0


def cohen_kappa(confusion: np.ndarray) -> float:
    """Cohen's kappa (p_o - p_e) / (1 - p_e) of predictions against labels.

    p_o is the accuracy, p_e = sum_k (labels of k / N) * (predictions of k / N) the agreement
    expected by chance from the two marginals. When p_e = 1 (labels and predictions are one
    and the same class) kappa is undefined; 0.0 is returned.
    """
    confusion = np.asarray(confusion, np.float64)
    n = confusion.sum()
    if n == 0:
        raise ValueError("kappa of an empty split is undefined")
    p_o = np.trace(confusion) / n
    p_e = float(np.dot(confusion.sum(axis=1), confusion.sum(axis=0)) / n**2)
    return 0.0 if p_e >= 1.0 else float((p_o - p_e) / (1.0 - p_e))


def reliability_bins(
    logits: np.ndarray, labels: np.ndarray, num_bins: int = 15
) -> dict[str, np.ndarray]:
    """What a reliability diagram draws: per confidence bin its count, accuracy and confidence.

    Bins as `expected_calibration_error`; ECE = sum_b count_b / N * |accuracy_b - confidence_b|.

    Returns:
      {'count': int64 [num_bins], 'accuracy': float64 [num_bins], 'confidence': float64
      [num_bins]} (accuracy and confidence are NaN in an empty bin).
    """
    probs = softmax(logits)
    confidence = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
    bins = _bin_index(confidence, num_bins)
    count = np.bincount(bins, minlength=num_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.bincount(bins, correct, minlength=num_bins) / count
        conf = np.bincount(bins, confidence, minlength=num_bins) / count
    return {"count": count.astype(np.int64), "accuracy": acc, "confidence": conf}


def classwise_ece(logits: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> float:
    """Class-wise ECE (Kull et al., 2019): the mean over classes of a one-class ECE.

    For class k every example counts, with confidence p_k (its softmax probability of k) and
    outcome [label == k]; binned like `expected_calibration_error`,
    ECE_k = sum_b (|B_kb| / N) * |frequency of label k in B_kb - mean p_k in B_kb|, and the
    class-wise ECE is (1 / K) sum_k ECE_k. It sees miscalibration of every class probability,
    not only of the top one.

    Args:
      logits: [N, K].
      labels: [N] integer labels.
      num_bins: equal-width bins on [0, 1].

    Returns:
      Class-wise ECE in [0, 1].
    """
    probs = softmax(logits)
    n, k = probs.shape
    total = 0.0
    for c in range(k):
        p = probs[:, c]
        hit = (labels == c).astype(np.float64)
        bins = _bin_index(p, num_bins)
        gap = np.abs(
            np.bincount(bins, hit, minlength=num_bins) - np.bincount(bins, p, minlength=num_bins)
        )
        total += gap.sum() / n  # |sum hit - sum p| / N = |B| / N * |freq - mean p| per bin
    return float(total / k)
