"""Early stopping on validation: when it stops, what it restores, and that resume keeps count."""

import json

import pytest
from test_train import fresh_state, load_tiny

from mlb_jax import trainer
from mlb_jax.checkpointing import RunCheckpoints

# Fused validation accuracy per epoch, forced: epoch 2 is the best; epoch 3 only ties it
# (not an improvement) and epoch 4 is worse, so patience 2 stops after epoch 4.
VAL_ACCURACY = [0.5, 0.6, 0.6, 0.55, 0.9, 0.9]
STEPS_PER_EPOCH = 8  # configs/tiny.py: 128 training examples, batch 16


def _config(data_cache):
    config = load_tiny(data_cache)
    config.train.epochs = 6
    config.train.early_stopping_patience = 2
    return config


def _forced_validation(monkeypatch, fail_at_epoch: int | None = None):
    """Replaces the validation accuracy by VAL_ACCURACY (optionally dying at one epoch)."""
    original = trainer.evaluate_outputs
    calls = {"val": 0}

    def evaluate(outputs, prefix):
        metrics = original(outputs, prefix)
        if prefix == "val":
            epoch = calls["val"]
            calls["val"] += 1
            if epoch == fail_at_epoch:
                raise KeyboardInterrupt("killed")
            metrics["val/accuracy"] = VAL_ACCURACY[epoch]
        return metrics

    monkeypatch.setattr(trainer, "evaluate_outputs", evaluate)
    return calls


def history(history_epochs: list[float], best_epoch: int | None) -> dict:
    epochs = [{"epoch": e, "val/accuracy": a} for e, a in enumerate(history_epochs)]
    best = None if best_epoch is None else epochs[best_epoch]
    return {"epochs": epochs, "best": best}


def test_reason_counts_epochs_since_the_best():
    train = load_tiny(None).train
    train.epochs = 10
    train.early_stopping_patience = 2
    assert trainer.early_stop_reason(history([], None), train) is None
    assert trainer.early_stop_reason(history([0.5, 0.6, 0.6], 1), train) is None
    reason = trainer.early_stop_reason(history([0.5, 0.6, 0.6, 0.55], 1), train)
    assert reason == (
        "early stopping after epoch 4: validation accuracy has not improved for 2 epochs "
        "(patience 2) since epoch 2 (60.0)"
    )
    train.early_stopping_patience = 0  # off
    assert trainer.early_stop_reason(history([0.5, 0.6, 0.6, 0.55], 1), train) is None
    train.early_stopping_patience = 2
    train.epochs = 4  # every configured epoch ran: nothing stopped early
    assert trainer.early_stop_reason(history([0.5, 0.6, 0.6, 0.55], 1), train) is None


def test_negative_patience_is_refused():
    config = load_tiny(None)
    config.train.early_stopping_patience = -1
    with pytest.raises(ValueError, match="config.train.early_stopping_patience must be"):
        trainer.validate_config(config)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, data_cache):
    """A tiny run with patience 2 and the forced validation curve, killed and resumed.

    Killed during epoch 4's validation (epochs 1-3 on disk: best 2, one epoch since), then
    resumed: a patience counter that the resume reset would run epochs 5 and 6 (0.9 each).
    """
    workdir = tmp_path_factory.mktemp("early")
    with pytest.MonkeyPatch.context() as patch:
        _forced_validation(patch, fail_at_epoch=3)
        with pytest.raises(KeyboardInterrupt):
            trainer.train_and_evaluate(_config(data_cache), workdir)
    with pytest.MonkeyPatch.context() as patch:
        calls = _forced_validation(patch)
        calls["val"] = 3  # the resumed run's first validation is epoch 4's
        results = trainer.train_and_evaluate(_config(data_cache), workdir)
    return workdir, results, calls


def test_stops_after_patience_epochs_without_improvement_across_a_resume(stopped_run):
    _, results, calls = stopped_run
    assert calls["val"] == 4  # epochs 5 and 6 never ran
    assert results["epochs"] == 4
    assert results["steps"] == 4 * STEPS_PER_EPOCH
    assert results["best_epoch"] == 2
    assert results["val_accuracy"] == 0.6
    assert results["early_stopped"].startswith("early stopping after epoch 4")


def test_best_checkpoint_is_the_one_evaluated(stopped_run, data_cache):
    workdir, results, _ = stopped_run
    config = _config(data_cache)
    ckpts = RunCheckpoints(workdir)
    try:
        best = ckpts.restore_best(fresh_state(config))
    finally:
        ckpts.close()
    assert int(best.step) == 2 * STEPS_PER_EPOCH
    assert json.loads((workdir / trainer.RESULTS_FILE).read_text()) == results
