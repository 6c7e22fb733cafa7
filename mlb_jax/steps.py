"""The pure train and eval steps and the state they run on: generic over methods and devices.

`create_train_state` builds the model, method, optimiser and a fresh `TrainState` from a config
alone (no dataset, nothing written), so the trainer, benchmarks and notebooks share one
set-up. The model travels as `(graphdef, params, rest)` from `nnx.split(model, nnx.Param, ...)`:
params are optimised, `rest` holds BatchNorm statistics and dropout RNG counters. Each step
merges them inside `jax.jit` and splits the updated state back out (a functional step: no
shared NNX submodules, nothing mutated outside the jit). The step never looks at a method's
name: it asks the method for its loss and for the extra arguments of the optimiser's update,
so a new method plugs in without changing the step.
"""

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from mlb_jax import diagnostics as diagnostics_lib
from mlb_jax.balancing import balancing_metrics, top1_accuracy
from mlb_jax.methods import Method, make_method
from mlb_jax.models import build_model
from mlb_jax.models.conv import resolve as resolve_conv
from mlb_jax.optim import make_optimizer

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


def create_train_state(
    config: ml_collections.ConfigDict,
    num_classes: int,
    input_shapes: Mapping[str, Sequence[int]],
    *,
    steps_per_epoch: int = 1,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[nnx.GraphDef, Method, optax.GradientTransformationExtraArgs, TrainState]:
    """Builds the model, method, optimiser and a fresh train state from a config alone.

    Everything here that can reject the config does (method fields, model fields, optimiser,
    schedule, a method's parameter checks), and nothing is read from disk or written.

    Args:
      config: the full experiment config (`config.seed`, `config.model`, `config.method`,
        `config.train`).
      num_classes: K.
      input_shapes: modality -> shape of one example without the batch dimension, e.g.
        {'audio': (F, T), 'video': (T, H, W, 3)} (`DatasetMeta.modalities[m].shape`); must
        name every modality the method uses (`Method.used_modalities` of
        `config.model.modalities`: all of them but for method 'unimodal').
      steps_per_epoch: optimisation steps per epoch (epoch-based learning-rate schedules).
      mesh: if given, the state is placed on it replicated (NamedSharding, P()); otherwise it
        stays where it was created (the default device).

    Returns:
      (graphdef, method, tx, state): the model's graph definition, the method, the full
      optimiser chain, and the state at step 0 (int32 [] step, params, rest, optimiser state,
      the method's initial state).

    Raises:
      ValueError: naming the config field, for a bad method, model or optimiser setting, or
        input shapes that do not match `config.model.modalities`.
    """
    method = make_method(config.method)
    modalities = method.used_modalities(list(config.model.modalities))
    missing = sorted(set(modalities) - set(input_shapes))
    if missing:
        raise ValueError(
            f"config.model.modalities {missing} are not among the data's modalities "
            f"{sorted(input_shapes)}: configure the modalities the dataset holds"
        )
    model_config = config.model
    if modalities != list(config.model.modalities):  # e.g. method 'unimodal'
        model_config = ml_collections.ConfigDict(config.model.to_dict())
        model_config.modalities = {m: config.model.modalities[m] for m in modalities}
    # 'rbg' keys for initialisation only: on CPU they compile ~2x faster than threefry for
    # the many differently shaped random draws of a ResNet; dropout keeps the default impl.
    rngs = nnx.Rngs(params=jax.random.key(config.seed, impl="rbg"), dropout=config.seed + 1)
    model = build_model(model_config, num_classes, rngs=rngs)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    balancing = method.gradient_transform(params, model.modality_patterns())
    tx, _ = make_optimizer(config.train, steps_per_epoch, balancing, method.placement)
    method_state = method.init_state(modalities, num_classes)
    state = TrainState(jnp.zeros([], jnp.int32), params, rest, tx.init(params), method_state)
    if mesh is not None:
        state = jax.device_put(state, jax.NamedSharding(mesh, jax.P()))
    return graphdef, method, tx, state


def abstract_batch(
    input_shapes: Mapping[str, Sequence[int]],
    batch_size: int,
    *,
    mesh: jax.sharding.Mesh | None = None,
    with_index: bool = False,
    lengths: Sequence[str] = (),
) -> dict[str, Any]:
    """Shapes of a global batch in the pipeline's format, for tracing a step without data.

    Args:
      input_shapes: modality -> shape of one example (see `create_train_state`).
      batch_size: the global batch size B.
      mesh: if given, every leaf is sharded over its 'data' axis, as `pipeline.to_global` does.
      with_index: add the evaluation batches' 'index' (int32 [B]).
      lengths: the sequence modalities' length keys (`pipeline.length_keys`), int32 [B] in
        'inputs'.

    Returns:
      {'inputs': {m: float32 [B, *shape], <length key>: int32 [B]}, 'label': int32 [B],
      'mask': bool [B]} (plus 'index') of `jax.ShapeDtypeStruct`.
    """
    sharding = None if mesh is None else jax.NamedSharding(mesh, jax.P("data"))

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct((batch_size, *shape), dtype, sharding=sharding)

    batch = {
        "inputs": {m: spec(tuple(s), jnp.float32) for m, s in input_shapes.items()}
        | {key: spec((), jnp.int32) for key in lengths},
        "label": spec((), jnp.int32),
        "mask": spec((), jnp.bool_),
    }
    if with_index:
        batch["index"] = spec((), jnp.int32)
    return batch


# config.train.cpu_scheduler -> XLA's CPU scheduler (the order of the step's operations).
# XLA's default orders for concurrency: it starts work whose inputs are ready early, so that
# independent operations can overlap, and their results stay alive until used: e.g. the
# stems' kernel-gradient patches, built from the input during the forward pass and used at
# the end of the backward. Ordered for memory, the full-width MLB step at 112x112 with the
# CPU convolution plan needs 775 MiB of temporaries instead of 1405 (224x224: 1970 instead of
# 3031; with Winograd's kernel gradient rebuilding its input transform, which the concurrency
# order computes early anyway; 566 and 1436 MiB since the patches kernel gradients no longer
# build whole patch matrices) and computes the same bits, as fast or faster on 2 cores; with
# XLA's own convolutions the memory order saved little or nothing (224x224: 2247 against 2198
# MiB) and cost 3-8% of the step (benchmarks/README.md, "XLA CPU's scheduler"). 'auto' orders
# for memory where the plan runs.
CPU_SCHEDULERS = {
    "memory": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
    "concurrency": "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
}


def cpu_scheduler(config: ml_collections.ConfigDict, backend: str | None = None) -> str:
    """What ``config.train.cpu_scheduler`` orders the step's operations for on a backend.

    Args:
      config: the experiment config: ``config.train.cpu_scheduler`` ('auto' when missing, as
        in configs saved by earlier versions) and, for 'auto', ``config.model.conv``.
      backend: a JAX backend name; None means ``jax.default_backend()``.

    Returns:
      'memory' or 'concurrency'. 'auto' is 'memory' where the model's convolutions run the
      CPU plan (``config.model.conv`` resolving to 'plan' or 'tuned',
      `mlb_jax.models.conv.resolve`), else 'concurrency' (XLA's own order).

    Raises:
      ValueError: naming ``config.train.cpu_scheduler`` and its values, for any other value.
    """
    choice = config.train.get("cpu_scheduler", "auto")
    if choice == "auto":
        planned = resolve_conv(config.model.get("conv", "auto"), backend) != "xla"
        return "memory" if planned else "concurrency"
    if choice not in CPU_SCHEDULERS:
        raise ValueError(
            f"config.train.cpu_scheduler={choice!r} is not a scheduler: use 'auto' (memory with "
            "the CPU convolution plan, else concurrency), 'memory' (fewer live buffers) or "
            "'concurrency' (XLA's own order)"
        )
    return choice


def compiler_options(
    config: ml_collections.ConfigDict, backend: str | None = None
) -> dict[str, str]:
    """XLA options for compiling a run's steps: ``jax.jit(step, compiler_options=...)``.

    Args:
      config: the experiment config (`cpu_scheduler` reads it).
      backend: a JAX backend name; None means ``jax.default_backend()``.

    Returns:
      ``{'xla_cpu_scheduler_type': ...}`` on the CPU backend, ``{}`` on the others (the
      setting is XLA CPU's alone).

    Raises:
      ValueError: see `cpu_scheduler`.
    """
    choice = cpu_scheduler(config, backend)
    if (backend or jax.default_backend()) != "cpu":
        return {}
    return {"xla_cpu_scheduler_type": CPU_SCHEDULERS[choice]}


def make_train_step(
    graphdef: nnx.GraphDef,
    method: Method,
    tx: optax.GradientTransformation,
    *,
    diagnostics: bool = False,
) -> Callable[..., tuple[TrainState, dict]]:
    """Builds `train_step(state, batch, update_scale=None, update_args=None, settings=None)`.

    Args:
      graphdef: the model's graph definition.
      method: supplies the loss and the optimiser's extra arguments.
      tx: the full optimiser chain.
      diagnostics: also return `mlb_jax.diagnostics`' per-encoder gradient norms and
        fused-vs-unimodal gradient cosines (`diag/...`; an extra forward and M + 1 backward
        passes per step, the update unchanged).

    Returns:
      The step. `batch` is {'inputs': {m: array}, 'label': [B], 'mask': [B]}; metrics are
      scalars: loss, its parts, fused and unimodal batch accuracy, and the balancing
      coefficients and scores when the optimiser holds a balancing state. `update_scale`
      (a scalar, possibly traced) multiplies the optimiser's update: every schedule, SGD and
      Adam apply the learning rate as the last factor of the update (balancing placed after
      them multiplies per leaf), so a scale lr' / lr trains with learning rate lr' up to
      float32 rounding. `update_args` are extra arguments of the optimiser's update (e.g.
      `weight_decay`, see `mlb_jax.optim.coupled_weight_decay`). `settings` (field ->
      scalar, possibly traced) replace the method's `traced_fields` for this step
      (`Method.with_settings`). `mlb_jax.sweep` uses all three to vmap members with their own
      learning rates, weight decays and method settings. The step is not jitted.
    """

    def train_step(
        state: TrainState,
        batch: dict,
        update_scale: jax.Array | None = None,
        update_args: dict[str, jax.Array] | None = None,
        settings: Mapping[str, jax.Array] | None = None,
    ) -> tuple[TrainState, dict]:
        labels = batch["label"]
        step_method = method.with_settings(settings) if settings else method

        def losses_fn(params):
            # Fresh Variable objects at this trace level: NNX refuses to update BatchNorm
            # statistics held by Variables created in the enclosing jit trace.
            rest = jax.tree.map(lambda x: x, state.rest)
            model = nnx.merge(graphdef, params, rest)
            outputs = step_method.forward(
                model, batch["inputs"], train=True, method_state=state.method_state
            )
            losses = step_method.losses(outputs, labels, state.method_state)
            _, _, new_rest = nnx.split(model, nnx.Param, ...)
            return losses, (outputs, new_rest)

        (loss, losses, (outputs, new_rest)), grads = step_method.value_and_grad(
            losses_fn, state.params
        )
        update_kwargs = {
            **step_method.update_kwargs(outputs, labels, state.method_state),
            **(update_args or {}),
        }
        updates, opt_state = tx.update(grads, state.opt_state, state.params, **update_kwargs)
        if update_scale is not None:
            updates = jax.tree.map(lambda u: u * jnp.asarray(update_scale, u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        metrics = {f"loss/{k}": v for k, v in losses.items()}
        metrics["loss"] = loss
        metrics["accuracy/fused"] = top1_accuracy(outputs.logits, labels)
        for name, logits in outputs.unimodal_logits.items():
            metrics[f"accuracy/{name}"] = top1_accuracy(logits, labels)
        with contextlib.suppress(ValueError):  # methods without a balancing state
            metrics |= balancing_metrics(opt_state)
        if diagnostics:
            names = list(outputs.unimodal_logits)
            metrics |= diagnostics_lib.encoder_grad_norms(grads, names)
            metrics |= diagnostics_lib.loss_gradient_cosines(
                graphdef,
                step_method,
                state.params,
                state.rest,
                state.method_state,
                batch["inputs"],
                labels,
            )
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
