"""The batched device passes of evaluation: every modality subset at once, and input noise.

Subsets. The fused logits of subset S replace each absent modality's feature by the feature
of one *absent input* (all zeros, or the training mean input): that input is the same for
every example, so its encoder runs once, on a batch of one, and its feature is broadcast.
Given the real features of a split (from `trainer.predict`), `make_subset_logits` evaluates
the method's fusion (`Method.fuse`) for all 2^M subset masks in one jitted call, vmapped
over the masks: the encoders never run again per example, so all subsets cost one plain
evaluation pass plus M + 2^M cheap fusion passes. Because BatchNorm uses running statistics
in eval mode, an encoder's output for one example does not depend on the rest of the batch,
and this equals running the model on inputs whose absent modalities were replaced (tested).

Noise. `make_noise_step` is an eval step (run by `trainer.map_split`): for each modality m
and each noise level sigma it re-encodes m on x_m + sigma * std_m * eps (eps ~ N(0, 1),
drawn per example from the example's index, so results do not depend on batch size or device
count; the same eps for every level) and fuses it with the other modalities' clean features.
The levels run through `jax.lax.map` inside one jitted step (memory of one eval batch per
level at a time).

Input statistics (`input_statistics`): the training mean input of each modality and its
scalar standard deviation, from an evenly spaced sample of the training split.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from mlb_jax.data import augment, pipeline

__all__ = [
    "ABSENT_KINDS",
    "absent_inputs",
    "input_statistics",
    "make_noise_step",
    "make_subset_logits",
]

# How an absent modality's input is replaced (config.evaluate.absent).
ABSENT_KINDS = ("zeros", "mean")


def input_statistics(run: Any, split: str, max_examples: int) -> dict[str, dict[str, Any]]:
    """Per-modality mean input and scalar standard deviation over a sample of `split`.

    Reads (decodes only, no model) at most `max_examples` examples evenly spaced over the
    split's stored order, as the evaluation pipeline presents them (normalised, resized).

    Args:
      run: the `trainer.Run` (its meta, config and modalities).
      split: usually the training split.
      max_examples: sample size cap (>= 1).

    Returns:
      {m: {'mean': float32 [*input shape], 'std': float (over every element), 'count': int}}.
    """
    cfg = run.config
    size = pipeline.split_size(run.meta, split)
    n = min(size, max_examples)
    indices = np.unique(np.linspace(0, size - 1, n).round().astype(np.int64))
    sums: dict[str, np.ndarray] = {}
    squares = {m: 0.0 for m in run.modalities}
    count = 0
    for batch in pipeline.eval_batches(
        run.meta,
        split,
        global_batch_size=cfg.train.eval_batch_size,
        indices=indices,
        cache=cfg.data.cache,
        frame_size=augment.from_config(cfg.data.get("augment"))[0],
    ):
        mask = np.asarray(batch["mask"], bool)
        count += int(mask.sum())
        for m in run.modalities:
            x = np.asarray(batch["inputs"][m], np.float64)[mask]
            sums[m] = sums.get(m, 0.0) + x.sum(axis=0)
            squares[m] += float((x**2).sum())
    if jax.process_count() > 1:  # each process read its own part of the sample
        gathered = multihost_utils.process_allgather((sums, squares, count))
        sums, squares, count = jax.tree.map(lambda x: np.asarray(x).sum(axis=0), gathered)
        count = int(count)
    out = {}
    for m in run.modalities:
        mean = sums[m] / count
        elements = count * mean.size
        overall = float(sums[m].sum()) / elements
        var = max(float(squares[m]) / elements - overall**2, 0.0)
        out[m] = {"mean": mean.astype(np.float32), "std": float(np.sqrt(var)), "count": count}
    return out


def absent_inputs(
    kind: str,
    input_shapes: Mapping[str, Sequence[int]],
    statistics: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, np.ndarray]:
    """One absent input per modality, float32 [1, *shape]: zeros, or the training mean.

    Args:
      kind: 'zeros' or 'mean' (config.evaluate.absent).
      input_shapes: modality -> input shape without the batch axis.
      statistics: `input_statistics` output; needed for 'mean'.
    """
    if kind not in ABSENT_KINDS:
        raise ValueError(
            f"config.evaluate.absent must be one of {list(ABSENT_KINDS)}, got {kind!r}"
        )
    if kind == "zeros":
        return {m: np.zeros((1, *shape), np.float32) for m, shape in input_shapes.items()}
    if statistics is None:
        raise ValueError("absent='mean' needs the training input statistics")
    return {m: np.asarray(statistics[m]["mean"], np.float32)[None] for m in input_shapes}


def make_subset_logits(graphdef: nnx.GraphDef, method: Any, modalities: Sequence[str]) -> Any:
    """Builds the jitted `subset_logits(state, features, absent, masks) -> [S, N, K]`.

    Args (of the returned function):
      state: a `TrainState` (params, rest, method_state are read).
      features: {m: [N, D_m]} the real pooled features (e.g. `predict(...)['features']`).
      absent: {m: [1, *input shape]} the absent inputs (`absent_inputs`).
      masks: bool [S, M], row s: which modalities (in `modalities` order) are present.

    Returns (of the returned function):
      float32 [S, N, K]: the method's fused logits of every subset.
    """
    names = list(modalities)

    @jax.jit
    def subset_logits(state, features, absent, masks):
        model = nnx.merge(graphdef, state.params, state.rest)
        # One encoder pass per modality on its single absent input, broadcast below.
        absent_features = model.encode(absent, train=False, names=names)

        def one(mask):
            mixed = {
                m: jnp.where(mask[i], features[m], absent_features[m]) for i, m in enumerate(names)
            }
            return method.fuse(model, mixed, method_state=state.method_state)

        return jax.vmap(one)(masks).astype(jnp.float32)

    return subset_logits


def make_noise_step(
    graphdef: nnx.GraphDef,
    method: Any,
    modalities: Sequence[str],
    levels: Sequence[float],
    stds: Mapping[str, float],
    seed: int = 0,
) -> Any:
    """Builds the jitted noise eval step `(state, global batch) -> {'noise_predictions'}`.

    Args:
      graphdef: the model's graph definition.
      method: the run's method (its `fuse`).
      modalities: the model's modalities, in order.
      levels: L noise strengths, in units of each modality's input standard deviation.
      stds: modality -> input standard deviation (`input_statistics`).
      seed: the noise seed.

    Returns:
      The step; its output 'noise_predictions' is int32 [B, M, L], the fused prediction with
      modality m's input noised at level l (the others clean).
    """
    names = list(modalities)
    sigmas = {m: jnp.asarray(levels, jnp.float32) * float(stds[m]) for m in names}
    key = jax.random.key(seed)

    @jax.jit
    def noise_step(state, batch):
        model = nnx.merge(graphdef, state.params, state.rest)
        inputs = batch["inputs"]
        clean = model.encode(inputs, train=False, names=names)
        per_modality = []
        for i, m in enumerate(names):
            x = inputs[m]
            modality_key = jax.random.fold_in(key, i)
            # Noise from the example's index: independent of batch size and device count.
            eps = jax.vmap(
                lambda j, k=modality_key, x=x: jax.random.normal(
                    jax.random.fold_in(k, j), x.shape[1:], x.dtype
                )
            )(batch["index"])

            def level(sigma, m=m, x=x, eps=eps):
                noisy = model.encode({**inputs, m: x + sigma * eps}, train=False, names=[m])[m]
                logits = method.fuse(model, {**clean, m: noisy}, method_state=state.method_state)
                return jnp.argmax(logits, axis=-1).astype(jnp.int32)

            per_modality.append(jax.lax.map(level, sigmas[m]))  # [L, B]
        return {"noise_predictions": jnp.stack(per_modality).transpose(2, 0, 1)}

    return noise_step
