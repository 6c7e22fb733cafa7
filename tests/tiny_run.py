"""A tiny training run of one method (configs/tiny.py) and what it left on disk."""

import pathlib

from test_train import load_tiny

from mlb_jax import trainer
from mlb_jax.checkpointing import RunCheckpoints


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
