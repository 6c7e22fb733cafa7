"""A tiny training run of one method (configs/tiny.py) and what it left on disk."""

import pathlib

import jax
import jax.numpy as jnp
from flax import nnx
from test_train import load_tiny

from mlb_jax import trainer
from mlb_jax.checkpointing import RunCheckpoints
from mlb_jax.methods import make_method
from mlb_jax.models import ModalitySpec, MultimodalClassifier
from mlb_jax.optim import make_optimizer
from mlb_jax.steps import TrainState, make_eval_step, make_train_step


def tiny_config(data_cache: pathlib.Path, method: str):
    """configs/tiny.py (8 devices, 2 epochs of 8 steps) with `config.method.name = method`."""
    config = load_tiny(data_cache)
    config.method.name = method
    return config


def run_tiny(config, workdir: pathlib.Path):
    """Trains `config` in `workdir`; returns (results, final train state, history)."""
    results = trainer.train_and_evaluate(config, workdir)
    return (results, *restore_latest(config, workdir))


def restore_latest(config, workdir: pathlib.Path):
    """(train state, history) of the latest checkpoint in `workdir`."""
    _, state = trainer.setup(config, trainer.load_dataset(config))
    ckpts = RunCheckpoints(workdir)
    try:
        return ckpts.restore(state)
    finally:
        ckpts.close()


def epoch_means(history: dict, key: str) -> list[float]:
    """Per-epoch training means of metric `key` (e.g. 'loss' or 'loss/fused')."""
    return [e[f"train/{key}"] for e in history["epochs"]]


THREE_MODALITIES = {
    "audio": ModalitySpec("audio"),
    "video": ModalitySpec("video"),
    "audio2": ModalitySpec("audio", 2),
}
THREE_INPUTS = {"audio": (16, 12), "video": (2, 16, 16, 3), "audio2": (16, 12, 2)}


def trace_three_modality_step(method: str, num_classes: int = 4, batch: int = 8):
    """Traces (no compile, no run) one train and one eval step of `method` with M = 3.

    Returns:
      (state, new_state, metrics, eval_outputs): the first concrete, the others shapes.
    """
    config = load_tiny(pathlib.Path("unused"))
    config.method.name = method
    rngs = nnx.Rngs(params=jax.random.key(0, impl="rbg"), dropout=1)
    model = MultimodalClassifier(THREE_MODALITIES, num_classes, base_width=2, rngs=rngs)
    method_obj = make_method(config.method)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    balancing = method_obj.gradient_transform(params, model.modality_patterns())
    tx, _ = make_optimizer(config.train, 10, balancing, method_obj.placement)
    method_state = method_obj.init_state(list(THREE_MODALITIES), num_classes)
    state = TrainState(
        jnp.zeros([], jnp.int32),
        params,
        rest,
        tx.init(params),
        jax.tree.map(jnp.asarray, method_state),
    )
    batch_spec = {
        "inputs": {
            m: jax.ShapeDtypeStruct((batch, *s), jnp.float32) for m, s in THREE_INPUTS.items()
        },
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
        "mask": jax.ShapeDtypeStruct((batch,), jnp.bool_),
    }
    new_state, metrics = jax.eval_shape(
        make_train_step(graphdef, method_obj, tx), state, batch_spec
    )
    outputs = jax.eval_shape(make_eval_step(graphdef, method_obj), state, batch_spec)
    return state, new_state, metrics, outputs


def assert_same_shapes(a, b) -> None:
    """Same tree structure, shapes and dtypes (a train step must not change the state's type)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert (x.shape, x.dtype) == (y.shape, y.dtype)
