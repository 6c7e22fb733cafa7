"""Linear probes: how much class information a frozen encoder's features carry.

After training, each modality's encoder is assessed as the paper does: a softmax-regression
classifier is fitted on its frozen (eval-mode) features of the training split and scored on
the test split. Features are standardised with training statistics; the fit is full-batch
Adam with a small L2 penalty for a fixed number of steps, so it is deterministic.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlb_jax.metrics import accuracy


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit(features, labels, *, num_classes: int, steps: int, lr: float, l2: float):
    dim = features.shape[1]
    params = {"w": jnp.zeros((dim, num_classes)), "b": jnp.zeros(num_classes)}
    tx = optax.adam(lr)

    def loss_fn(p):
        logits = features @ p["w"] + p["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return ce + l2 * jnp.sum(p["w"] ** 2)

    def body(carry, _):
        p, s = carry
        grads = jax.grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return params


def linear_probe_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    *,
    steps: int = 500,
    lr: float = 0.05,
    l2: float = 1e-4,
) -> float:
    """Test accuracy of a softmax-regression probe fitted on frozen features.

    Args:
      train_features: [N, D] features of the training split.
      train_labels: [N] integer labels.
      test_features: [M, D] features of the test split.
      test_labels: [M] integer labels.
      num_classes: K.
      steps: full-batch Adam steps.
      lr: Adam learning rate.
      l2: L2 penalty on the probe weights.

    Returns:
      Test accuracy in [0, 1].
    """
    mean = train_features.mean(axis=0)
    std = train_features.std(axis=0) + 1e-6
    x_train = jnp.asarray((train_features - mean) / std, jnp.float32)
    x_test = jnp.asarray((test_features - mean) / std, jnp.float32)
    params = _fit(
        x_train,
        jnp.asarray(train_labels, jnp.int32),
        num_classes=num_classes,
        steps=steps,
        lr=lr,
        l2=l2,
    )
    return accuracy(np.asarray(x_test @ params["w"] + params["b"]), test_labels)
