"""Optimiser construction from the config: schedule, base optimiser, weight decay, balancing.

The chain is   [balancing] -> coupled_weight_decay(wd) -> base -> [balancing]
with the method's transform at the position its `placement` names. Weight decay is coupled
(added to the gradient, as PyTorch SGD/Adam with `weight_decay` do; docs/METHODS.md
(placement)) and is added after gradient-placed balancing, as the reference code does.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine", "step", "mlb_warm_restarts")
OPTIMIZERS = ("sgd", "adam")


def mlb_warm_restarts(base_lr: float, warmup_steps: int) -> optax.Schedule:
    """MLB's learning-rate schedule (docs/METHODS.md (learning-rate-schedule)).

    Constant base LR for `warmup_steps`, then cosine annealing with warm restarts (T0 = 4,
    T_mult = 2) evaluated at the absolute step, as the reference scheduler does.
    """

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        n = jnp.floor(jnp.log2(s / 4.0 + 1.0))
        period = 4.0 * 2.0**n
        t_cur = s - 4.0 * (2.0**n - 1.0)
        cosine = base_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * t_cur / period))
        return jnp.where(s < warmup_steps, base_lr, cosine)

    return schedule


def make_schedule(train_config: Any, steps_per_epoch: int) -> optax.Schedule:
    """Learning-rate schedule from `config.train` (schedule, lr, epochs, ...).

    Raises:
      ValueError: for an unknown schedule name.
    """
    lr = float(train_config.lr)
    total = max(1, int(train_config.epochs) * steps_per_epoch)
    name = train_config.schedule
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "cosine":
        warmup = int(train_config.get("warmup_epochs", 0) * steps_per_epoch)
        return optax.warmup_cosine_decay_schedule(
            0.0 if warmup else lr, lr, max(warmup, 0), max(total, warmup + 1)
        )
    if name == "step":
        every = int(train_config.step_epochs) * steps_per_epoch
        return optax.exponential_decay(lr, every, float(train_config.step_gamma), staircase=True)
    if name == "mlb_warm_restarts":
        return mlb_warm_restarts(lr, int(train_config.warmup_steps))
    raise ValueError(
        f"unknown schedule {name!r} (config.train.schedule); choose one of {list(SCHEDULES)}"
    )


def make_base_optimizer(
    train_config: Any, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """SGD with momentum (the paper's Eq. 2) or Adam (the reference code: eps 1e-7).

    Raises:
      ValueError: for an unknown optimiser name.
    """
    name = train_config.optimizer
    if name == "sgd":
        return optax.sgd(schedule, momentum=float(train_config.momentum) or None)
    if name == "adam":
        return optax.adam(schedule, b1=0.9, b2=0.999, eps=float(train_config.get("adam_eps", 1e-7)))
    raise ValueError(
        f"unknown optimizer {name!r} (config.train.optimizer); choose one of {list(OPTIMIZERS)}"
    )


def coupled_weight_decay(weight_decay: float) -> optax.GradientTransformationExtraArgs:
    """Coupled weight decay g + wd * params (PyTorch SGD/Adam `weight_decay`), wd traceable.

    `optax.add_decayed_weights` with the same (empty) state, whose update also takes an optional
    scalar `weight_decay` replacing the built-in value for that update: `mlb_jax.sweep` passes
    each vmapped member's own. Other extra arguments are ignored.

    Args:
      weight_decay: wd > 0, the coefficient of the parameters added to the gradient.
    """

    def init(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update(
        updates: Any, state: optax.EmptyState, params: Any = None, **extra: Any
    ) -> tuple[Any, optax.EmptyState]:
        if params is None:
            raise ValueError("coupled weight decay needs the params in the optimiser's update")
        wd = extra.get("weight_decay", weight_decay)
        return jax.tree.map(lambda g, p: g + jnp.asarray(wd, g.dtype) * p, updates, params), state

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(
    train_config: Any,
    steps_per_epoch: int,
    balancing: optax.GradientTransformation | None,
    placement: str = "gradients",
) -> tuple[optax.GradientTransformationExtraArgs, optax.Schedule]:
    """The full optimiser chain and its learning-rate schedule.

    Args:
      train_config: `config.train`.
      steps_per_epoch: optimisation steps per epoch (for epoch-based schedules).
      balancing: the method's gradient transformation, or None.
      placement: 'gradients' or 'updates' (see `mlb_jax.balancing.chain_with_balancing`).

    Returns:
      (transformation, schedule).
    """
    if placement not in ("gradients", "updates"):
        raise ValueError(
            "placement must be 'gradients' or 'updates' (config.method.placement), "
            f"got {placement!r}"
        )
    schedule = make_schedule(train_config, steps_per_epoch)
    parts = []
    if balancing is not None and placement == "gradients":
        parts.append(balancing)
    if float(train_config.weight_decay) > 0:
        parts.append(coupled_weight_decay(float(train_config.weight_decay)))
    parts.append(make_base_optimizer(train_config, schedule))
    if balancing is not None and placement == "updates":
        parts.append(balancing)
    if float(train_config.get("grad_clip_norm", 0.0) or 0.0) > 0:
        parts.insert(0, optax.clip_by_global_norm(float(train_config.grad_clip_norm)))
    return optax.chain(*parts), schedule
