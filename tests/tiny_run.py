"""A tiny training run of one method (configs/tiny.py) and what it left on disk."""

import pathlib

import jax
from test_train import fresh_state, load_tiny

from mlb_jax import trainer
from mlb_jax.checkpointing import RunCheckpoints
from mlb_jax.steps import abstract_batch, create_train_state, make_eval_step, make_train_step


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
    ckpts = RunCheckpoints(workdir)
    try:
        return ckpts.restore(fresh_state(config))
    finally:
        ckpts.close()


def epoch_means(history: dict, key: str) -> list[float]:
    """Per-epoch training means of metric `key` (e.g. 'loss' or 'loss/fused')."""
    return [e[f"train/{key}"] for e in history["epochs"]]


THREE_MODALITIES = {  # config.model.modalities of an M = 3 model
    "audio": {"kind": "audio", "in_channels": 1},
    "video": {"kind": "video", "in_channels": 3},
    "audio2": {"kind": "audio", "in_channels": 2},
}
THREE_INPUTS = {"audio": (16, 12), "video": (2, 16, 16, 3), "audio2": (16, 12, 2)}


def trace_three_modality_step(method: str, num_classes: int = 4, batch: int = 8):
    """Traces (no compile, no run) one train and one eval step of `method` with M = 3.

    Returns:
      (state, new_state, metrics, eval_outputs): the first concrete, the others shapes.
    """
    config = load_tiny(pathlib.Path("unused"))
    config.method.name = method
    config.model.modalities = THREE_MODALITIES
    graphdef, method_obj, tx, state = create_train_state(
        config, num_classes, THREE_INPUTS, steps_per_epoch=10
    )
    state = state._replace(method_state=jax.tree.map(jax.numpy.asarray, state.method_state))
    batch_spec = abstract_batch(THREE_INPUTS, batch)
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
