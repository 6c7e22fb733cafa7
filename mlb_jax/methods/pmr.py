"""PMR: prototypical modal rebalance, a prototype loss on the weak modality.

See docs/METHODS.md (pmr). After every epoch (`end_of_epoch`), class prototypes c_{m,k} of
each modality's pooled features are computed from a deterministic ~`fraction` subset of the
training split (eval-mode features of only those examples, from
`context.predict(split, indices=subset)`), optionally normalised as MLB's affine-free BatchNorm
does (statistics of the subset). Every step, the features x_m of the batch (normalised with the
batch's own statistics) give the prototype logits -d_{m,i,k} = -||x_{m,i} - c_{m,k}||_2, the
prototype scores S_m = sum_i softmax(-d_m)_i[y_i], and the rebalancing coefficients
beta_m = alpha if S_m < mean_{j != m} S_j else 0 (for M = 2: beta_a = alpha iff
rho = S_a / S_v < 1, MLB's rule; both 0 when equal). The loss is
    L = CE(z) + sum_m beta_m * CE(-d_m, y),
so gradient flows into the weak modality's encoder through its features (prototypes and
beta are constants).

State (`init_state`, kept in the train state and checkpointed): per modality the prototypes
[K, D] and one `valid` flag per class. Before the first epoch no prototype exists, so the
first epoch trains with CE(z) alone (MLB computes epoch-0 prototypes from the untrained
model at epoch start; the trainer's hook runs after an epoch). From the second epoch on,
prototypes come from the model as it stood at the end of the previous epoch.

Generalises to M > 2: yes, with the rule above (every modality whose score is below the mean of
the others' gets alpha; for M = 2 it is exactly the reference's rule). BalanceBenchmark's
three-modality variant (OGM-GE-style gradient scaling with the noise subtracted instead of
added) is not copied.

Deliberate differences from the reference:
* A class absent from the prototype subset keeps its previous prototype; a class that was
  never seen is flagged invalid: it is masked out of the prototype softmax and its examples
  add nothing to the prototype loss or score. MLB divides 0 by 0 and gets NaN prototypes.
* The subset is the same fraction every epoch (MLB: the whole set at epoch 0, then the first
  ~10 % of shuffled batches), drawn without replacement from a generator seeded by
  (subset_seed, epoch): deterministic, so a resumed run sees the same subset.
* Prototype features are normalised with the statistics of the whole subset (MLB: of each
  training batch of it); step features with the statistics of the global batch.
* Prototypes are stored [K, max_feature_dim] and the first D columns used, because the
  method's state is built before the model's feature width is known to it; D must not exceed
  max_feature_dim (default 512, a standard ResNet-18).
* The model trains in train mode. MLB's prototype pass switches the whole model to eval mode
  and nothing switches it back before that epoch's training steps (docs/METHODS.md
  (known-bugs-of-the-reference-code), M-20), so every PMR epoch trains with BatchNorm's
  running statistics, which are never updated (and dropout off).
  `reference_eval_mode=True` reproduces that: the training forward pass runs in eval mode.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from mlb_jax.methods.base import EpochContext, Losses, Method, cross_entropy
from mlb_jax.methods.config import method_from_config
from mlb_jax.methods.space import Dimension, LogUniform

PyTree = Any
# BatchNorm's epsilon (PyTorch and Flax): variance floor of the feature normalisation.
NORM_EPS = 1e-5
# Logit of an invalid class: effectively -inf in the softmax, but finite (no NaN gradients).
INVALID_LOGIT = -1e9
# Floor of the squared distance under the square root (its gradient is infinite at 0).
DIST_EPS = 1e-12
PROTOTYPE_PREFIX = "prototype_"


def normalize_features(x: jax.Array | np.ndarray, eps: float = NORM_EPS) -> jax.Array:
    """Affine-free BatchNorm with batch statistics: (x - mean) / sqrt(var + eps).

    Args:
      x: [N, D] features.
      eps: variance floor.

    Returns:
      [N, D], each column centred and scaled by its biased standard deviation.
    """
    x = jnp.asarray(x, jnp.float32)
    mean = jnp.mean(x, axis=0)
    var = jnp.mean(jnp.square(x - mean), axis=0)
    return (x - mean) / jnp.sqrt(var + eps)


def class_prototypes(
    features: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class means of `features`; a class without examples gets zeros and present=False.

    Args:
      features: [N, D].
      labels: [N] integers in [0, K).
      num_classes: K.

    Returns:
      (prototypes [K, D] float32, present [K] bool). No NaN for absent classes (MLB's 0 / 0).
    """
    features = np.asarray(features, np.float64)
    onehot = np.eye(num_classes)[np.asarray(labels)]  # [N, K]
    counts = onehot.sum(axis=0)
    sums = onehot.T @ features  # [K, D]
    means = sums / np.maximum(counts, 1.0)[:, None]
    return means.astype(np.float32), counts > 0


def update_prototypes(
    old: np.ndarray,
    old_valid: np.ndarray,
    new: np.ndarray,
    present: np.ndarray,
    momentum: float,
) -> tuple[np.ndarray, np.ndarray]:
    """P <- (1 - mu) new + mu P where both exist; new where only the new one does; else P.

    Args:
      old: [K, D] previous prototypes.
      old_valid: [K] bool, which previous prototypes exist.
      new: [K, D] this epoch's class means.
      present: [K] bool, which classes this epoch's subset contained.
      momentum: mu in [0, 1) (0 = replace, MLB's default; BalanceBenchmark 0.5).

    Returns:
      (prototypes [K, D] float32, valid [K] bool).
    """
    blended = np.where(old_valid[:, None], (1.0 - momentum) * new + momentum * old, new)
    out = np.where(present[:, None], blended, old)
    return out.astype(np.float32), np.asarray(old_valid | present)


def prototype_logits(features: jax.Array, prototypes: jax.Array, valid: jax.Array) -> jax.Array:
    """Negative Euclidean distances to every valid prototype.

    Args:
      features: [B, D].
      prototypes: [K, D].
      valid: [K] bool.

    Returns:
      [B, K]: -||x_i - c_k||_2, and a very negative constant for invalid classes.
    """
    diff = features[:, None, :] - prototypes[None, :, :]
    dist = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(diff), axis=-1), DIST_EPS))
    return jnp.where(valid[None, :], -dist, INVALID_LOGIT)


def prototype_score(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """S = sum_i w_i softmax(logits)_i[y_i], gradient-stopped (w_i = 0 drops example i)."""
    probs = jax.nn.softmax(jax.lax.stop_gradient(logits), axis=-1)
    picked = jnp.take_along_axis(probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return jnp.sum(weights * picked)


def rebalance_coefficients(
    scores: Mapping[str, jax.Array], alpha: float | jax.Array
) -> dict[str, jax.Array]:
    """beta_m = alpha if S_m < mean_{j != m} S_j else 0 (M = 2: the reference's rho rule).

    Args:
      scores: modality -> S_m.
      alpha: strength of the prototype loss.

    Returns:
      modality -> float32 scalar beta_m.
    """
    names = list(scores)
    out = {}
    for name in names:
        others = jnp.mean(jnp.stack([jnp.asarray(scores[n]) for n in names if n != name]))
        out[name] = jnp.where(scores[name] < others, alpha, 0.0).astype(jnp.float32)
    return out


def prototype_subset(num_examples: int, fraction: float, seed: int, epoch: int) -> np.ndarray:
    """Sorted indices of ceil(fraction * N) examples, drawn without replacement by (seed, epoch)."""
    size = min(num_examples, max(1, int(np.ceil(fraction * num_examples))))
    rng = np.random.default_rng([seed, epoch])
    return np.sort(rng.choice(num_examples, size, replace=False))


@dataclasses.dataclass(frozen=True)
class PMR(Method):
    """Prototypical modal rebalance (see the module docstring).

    Attributes:
      alpha: weight beta of the weak modality's prototype cross-entropy (>= 0).
      momentum: prototype momentum mu in [0, 1) (0 = replace each epoch).
      fraction: fraction in (0, 1] of the training split the prototypes are computed from.
      normalize: normalise features with affine-free batch statistics (MLB) or use them raw
        (BalanceBenchmark).
      split: the training split's name (read by `end_of_epoch`).
      subset_seed: seed of the prototype subset.
      max_feature_dim: width of the stored prototypes (>= every modality's feature width).
      reference_eval_mode: train with the model in eval mode (BatchNorm running statistics,
        not updated; dropout off), as the reference does by accident (M-20). Off by default.
    """

    name: str = "pmr"
    alpha: float = 1.0
    momentum: float = 0.0
    fraction: float = 0.1
    normalize: bool = True
    split: str = "train"
    subset_seed: int = 0
    max_feature_dim: int = 512
    reference_eval_mode: bool = False

    config_block: ClassVar[str | None] = "pmr"
    block_fields: ClassVar[tuple[str, ...]] = (
        "alpha",
        "momentum",
        "fraction",
        "normalize",
        "split",
        "subset_seed",
        "max_feature_dim",
        "reference_eval_mode",
    )
    search_space: ClassVar[Mapping[str, Dimension]] = {
        **Method.search_space,
        "alpha": LogUniform(0.1, 4.0),
    }
    traced_fields: ClassVar[tuple[str, ...]] = ("alpha",)

    def validate(self) -> None:
        """Method's checks plus the ranges of PMR's settings."""
        super().validate()
        self.require("alpha", self.alpha >= 0, ">= 0")
        self.require("momentum", 0 <= self.momentum < 1, "in [0, 1)")
        self.require("fraction", 0 < self.fraction <= 1, "in (0, 1]")
        self.require("split", bool(self.split), "a split name")
        self.require("max_feature_dim", self.max_feature_dim >= 1, ">= 1")

    def init_state(
        self,
        modalities: Sequence[str],
        num_classes: int,
        feature_dims: Mapping[str, int] | None = None,
    ) -> dict[str, Any]:
        """Zero prototypes, all flagged invalid (the first epoch has no prototype loss).

        Args:
          modalities: modality names.
          num_classes: K.
          feature_dims: modality -> D_m, if known; otherwise max_feature_dim columns.

        Returns:
          {'prototypes': {m: float32 [K, D]}, 'valid': bool [K]}.
        """
        dims = feature_dims or {}
        return {
            "prototypes": {
                m: np.zeros((num_classes, dims.get(m, self.max_feature_dim)), np.float32)
                for m in modalities
            },
            "valid": np.zeros((num_classes,), bool),
        }

    def forward(
        self, model: Any, inputs: Mapping[str, jax.Array], *, train: bool, method_state: PyTree
    ) -> Any:
        """The model's pass; in eval mode throughout with `reference_eval_mode` (M-20).

        Args:
          model: the multimodal model.
          inputs: modality -> batch.
          train: the step's mode; ignored (eval mode) when `reference_eval_mode` is set, so
            BatchNorm normalises with, and leaves unchanged, its running statistics.
          method_state: unused.
        """
        del method_state
        return model(inputs, train=train and not self.reference_eval_mode)

    def _features(self, x: jax.Array) -> jax.Array:
        return normalize_features(x) if self.normalize else x.astype(jnp.float32)

    def losses(self, outputs: Any, labels: jax.Array, method_state: PyTree) -> Losses:
        """{'fused': CE(z), 'prototype_<m>': beta_m * CE(-d_m, y) for every modality}."""
        valid = method_state["valid"]
        weights = valid[labels].astype(jnp.float32)  # examples whose class has a prototype
        count = jnp.maximum(jnp.sum(weights), 1.0)
        logits, ce, scores = {}, {}, {}
        for name, x in outputs.features.items():
            protos = method_state["prototypes"][name]
            if x.shape[-1] > protos.shape[-1]:
                raise ValueError(
                    f"modality {name!r} has {x.shape[-1]} features but PMR stores "
                    f"{protos.shape[-1]}: raise config.method.pmr.max_feature_dim"
                )
            logits[name] = prototype_logits(self._features(x), protos[:, : x.shape[-1]], valid)
            per_example = -jnp.take_along_axis(
                jax.nn.log_softmax(logits[name], axis=-1), labels[:, None], axis=-1
            )[:, 0]
            ce[name] = jnp.sum(weights * per_example) / count
            scores[name] = prototype_score(logits[name], labels, weights)
        betas = rebalance_coefficients(scores, self.alpha)
        losses = {"fused": cross_entropy(outputs.logits, labels)}
        for name in outputs.features:
            losses[PROTOTYPE_PREFIX + name] = betas[name] * ce[name]
        return losses

    def end_of_epoch(self, method_state: PyTree, context: EpochContext) -> dict[str, Any]:
        """New prototypes from a deterministic subset of the training split (eval mode).

        Only the subset is predicted (`context.predict(split, indices=subset)`), not the
        whole split.

        Args:
          method_state: the current state (host arrays).
          context: gives the training split's size and eval-mode features and labels.

        Returns:
          The updated state, same shapes and dtypes.
        """
        index = prototype_subset(
            context.split_size(self.split), self.fraction, self.subset_seed, context.epoch
        )
        out = context.predict(self.split, indices=index)
        labels = np.asarray(out["labels"])
        old_valid = np.asarray(method_state["valid"], bool)
        num_classes = old_valid.shape[0]
        prototypes, valid = {}, old_valid
        for name, old in method_state["prototypes"].items():
            old = np.asarray(old, np.float32)
            x = np.asarray(out["features"][name])
            dim = x.shape[-1]
            if dim > old.shape[-1]:
                raise ValueError(
                    f"modality {name!r} has {dim} features but PMR stores {old.shape[-1]}: "
                    "raise config.method.pmr.max_feature_dim"
                )
            new, present = class_prototypes(np.asarray(self._features(x)), labels, num_classes)
            merged, valid = update_prototypes(old[:, :dim], old_valid, new, present, self.momentum)
            prototypes[name] = old.copy()
            prototypes[name][:, :dim] = merged
        return {"prototypes": prototypes, "valid": valid}


def make_pmr(config: Any) -> PMR:
    """Builds PMR from `config.method` (block `pmr`: alpha, momentum, fraction, ...)."""
    return method_from_config(PMR, config)
