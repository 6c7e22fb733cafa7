"""The pure, jitted train and eval steps: generic over methods, modalities and devices.

The model travels as `(graphdef, params, rest)` from `nnx.split(model, nnx.Param, ...)`:
params are optimised, `rest` holds BatchNorm statistics and dropout RNG counters. Each step
merges them inside `jax.jit` and splits the updated state back out (DESIGN decision 5). The
step never looks at a method's name: it asks the method for its loss and for the extra
arguments of the optimiser's update (DESIGN decision 4).
"""

import contextlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mlb_jax.balancing import balancing_metrics
from mlb_jax.methods import Method

PyTree = Any


class TrainState(NamedTuple):
    """Everything that changes during training (a pytree; checkpointed as is).

    Attributes:
      step: int32 [] optimisation steps taken.
      params: nnx.State of the model's Params.
      rest: nnx.State of everything else (BatchNorm statistics, RNG counters).
      opt_state: the optimiser state (balancing state included).
      method_state: the method's per-epoch state (arrays; {} for most methods).
    """

    step: jax.Array
    params: PyTree
    rest: PyTree
    opt_state: PyTree
    method_state: PyTree


def make_train_step(
    graphdef: nnx.GraphDef, method: Method, tx: optax.GradientTransformation
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Builds `train_step(state, batch) -> (state, metrics)` (not yet jitted).

    Args:
      graphdef: the model's graph definition.
      method: supplies the loss and the optimiser's extra arguments.
      tx: the full optimiser chain.

    Returns:
      The step. `batch` is {'inputs': {m: array}, 'label': [B], 'mask': [B]}; metrics are
      scalars: loss, its parts, fused and unimodal batch accuracy, and the balancing
      coefficients and scores when the optimiser holds a balancing state.
    """

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        labels = batch["label"]

        def losses_fn(params):
            # Fresh Variable objects at this trace level: NNX refuses to update BatchNorm
            # statistics held by Variables created in the enclosing jit trace.
            rest = jax.tree.map(lambda x: x, state.rest)
            model = nnx.merge(graphdef, params, rest)
            outputs = method.forward(
                model, batch["inputs"], train=True, method_state=state.method_state
            )
            losses = method.losses(outputs, labels, state.method_state)
            _, _, new_rest = nnx.split(model, nnx.Param, ...)
            return losses, (outputs, new_rest)

        (loss, losses, (outputs, new_rest)), grads = method.value_and_grad(losses_fn, state.params)
        update_kwargs = method.update_kwargs(outputs, labels, state.method_state)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, **update_kwargs)
        params = optax.apply_updates(state.params, updates)
        metrics = {f"loss/{k}": v for k, v in losses.items()}
        metrics["loss"] = loss
        metrics["accuracy/fused"] = _accuracy(outputs.logits, labels)
        for name, logits in outputs.unimodal_logits.items():
            metrics[f"accuracy/{name}"] = _accuracy(logits, labels)
        with contextlib.suppress(ValueError):  # methods without a balancing state
            metrics |= balancing_metrics(opt_state)
        new_state = TrainState(state.step + 1, params, new_rest, opt_state, state.method_state)
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, method: Method) -> Callable[[TrainState, dict], dict]:
    """Builds `eval_step(state, batch) -> outputs` in eval mode (not yet jitted).

    Returns:
      {'logits': [B, K], 'unimodal_logits': {m: [B, K]}, 'features': {m: [B, D]}}; BatchNorm
      uses running statistics and nothing in `state` changes.
    """

    def eval_step(state: TrainState, batch: dict) -> dict:
        model = nnx.merge(graphdef, state.params, state.rest)
        outputs = method.forward(
            model, batch["inputs"], train=False, method_state=state.method_state
        )
        return {
            "logits": outputs.logits,
            "unimodal_logits": dict(outputs.unimodal_logits),
            "features": dict(outputs.features),
        }

    return eval_step


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
