"""End-to-end training on the tiny synthetic config: 8 devices, resume, results, bad input."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from mlb_jax import trainer
from mlb_jax.checkpointing import RunCheckpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_tiny(data_cache: pathlib.Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny", ROOT / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data.cache_dir = str(data_cache)
    return config


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_cache):
    """An uninterrupted tiny MLB run on all 8 devices."""
    workdir = tmp_path_factory.mktemp("reference")
    results = trainer.train_and_evaluate(load_tiny(data_cache), workdir)
    return workdir, results


def final_params(workdir, config):
    meta = trainer.load_dataset(config)
    _, state = trainer.setup(config, meta)
    ckpts = RunCheckpoints(workdir)
    restored, _ = ckpts.restore(state)
    ckpts.close()
    return jax.tree.map(np.asarray, restored.params)


def test_results_contract_and_loss_decreases(reference_run):
    workdir, results = reference_run
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    for key in (
        "accuracy",
        "unimodal_accuracy",
        "ece",
        "method",
        "seed",
        "steps",
        "probe_accuracy",
    ):
        assert key in on_disk
    assert set(on_disk["unimodal_accuracy"]) == {"audio", "video"}
    assert set(on_disk["probe_accuracy"]) == {"audio", "video"}
    assert on_disk["method"] == "mlb" and on_disk["seed"] == 0
    assert on_disk["steps"] == 2 * (128 // 16)  # 2 epochs of 8 steps
    # The first step (compilation included) is part of the first epoch's time.
    assert 0 < on_disk["first_step_seconds"] <= on_disk["train_seconds"]
    # Every test example counted exactly once despite the padded last eval batch (40 / 32).
    assert on_disk["num_test_examples"] == 40
    epochs = json.loads((workdir / "config.json").read_text())["train"]["epochs"]
    assert epochs == 2
    assert (workdir / "training.png").stat().st_size > 0
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_training_loss_decreases(reference_run, data_cache):
    workdir, _ = reference_run
    ckpts = RunCheckpoints(workdir)
    config = load_tiny(data_cache)
    meta = trainer.load_dataset(config)
    _, state = trainer.setup(config, meta)
    _, history = ckpts.restore(state)
    ckpts.close()
    losses = [e["train/loss"] for e in history["epochs"]]
    assert losses[1] < losses[0]
    # MLB coefficients were logged every step interval for both modalities.
    assert all("train/k/audio" in s and "train/k/video" in s for s in history["steps"])


def run_steps(config, num_steps):
    """Params and metrics after `num_steps` train steps of the tiny config."""
    meta = trainer.load_dataset(config)
    run, state = trainer.setup(config, meta)
    batches = trainer._epoch_batches(run, epoch=0, start_batch=0)
    metrics = []
    for _, batch in zip(range(num_steps), batches):
        state, m = run.train_step(state, trainer.pipeline.to_global(batch, run.mesh))
        metrics.append(jax.device_get(m))
    return jax.tree.map(np.asarray, state.params), metrics, run.mesh


def test_eight_devices_equal_one_device(data_cache):
    assert jax.device_count() == 8
    config = load_tiny(data_cache)
    many, many_metrics, mesh8 = run_steps(config, 3)
    config.train.num_devices = 1
    one, one_metrics, mesh1 = run_steps(config, 3)
    assert mesh8.shape["data"] == 8 and mesh1.shape["data"] == 1
    # Same global batch, same global BatchNorm statistics and mean loss: equal up to float32
    # reduction order.
    for a, b in zip(jax.tree.leaves(many), jax.tree.leaves(one)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for m8, m1 in zip(many_metrics, one_metrics):
        assert m8["loss"] == pytest.approx(m1["loss"], rel=1e-5)
        assert m8["k/video"] == pytest.approx(m1["k/video"], rel=1e-4)


def test_kill_and_resume_equals_uninterrupted(reference_run, data_cache, tmp_path, monkeypatch):
    ref_dir, ref_results = reference_run
    config = load_tiny(data_cache)
    saves = []
    original = RunCheckpoints.save

    def save_then_die(self, step, state, meta):
        original(self, step, state, meta)
        saves.append(step)
        raise KeyboardInterrupt("simulated kill after the first epoch's checkpoint")

    monkeypatch.setattr(RunCheckpoints, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_and_evaluate(config, tmp_path)
    assert saves == [8] and not (tmp_path / "results.json").exists()
    monkeypatch.setattr(RunCheckpoints, "save", original)
    resumed = trainer.train_and_evaluate(load_tiny(data_cache), tmp_path)
    for key in ("accuracy", "unimodal_accuracy", "probe_accuracy", "ece", "steps"):
        assert resumed[key] == ref_results[key], key
    for a, b in zip(
        jax.tree.leaves(final_params(ref_dir, config)),
        jax.tree.leaves(final_params(tmp_path, config)),
    ):
        np.testing.assert_array_equal(a, b)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(data_cache, tmp_path):
    config = load_tiny(data_cache)
    config.train.epochs = 3
    config.train.lr = 1e9
    config.train.schedule = "constant"
    with pytest.raises(trainer.RunError, match=r"training loss is (nan|inf)"):
        trainer.train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "results.json").exists()
    ckpts = RunCheckpoints(tmp_path)
    step = ckpts.latest_step()
    if step is not None:  # whatever was saved holds finite parameters
        _, state = trainer.setup(config, trainer.load_dataset(config))
        restored, _ = ckpts.restore(state)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored.params))
    ckpts.close()


def test_other_methods_hyperparameters_do_not_block_resume(reference_run, data_cache):
    workdir, _ = reference_run
    config = load_tiny(data_cache)
    config.method.agm.alpha = 123.0  # the run is MLB: AGM's block cannot affect it
    trainer.check_run_config(workdir, config)
    config.method.alpha = 123.0  # MLB's own alpha does
    with pytest.raises(trainer.RunError, match=r"method.alpha: 1.0 -> 123.0"):
        trainer.check_run_config(workdir, config)


def test_incompatible_workdir_is_refused(reference_run, data_cache):
    workdir, _ = reference_run
    config = load_tiny(data_cache)
    config.train.lr = 0.5
    with pytest.raises(trainer.RunError, match=r"holds a run with a different config \(train.lr"):
        trainer.train_and_evaluate(config, workdir)


def run_cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "mlb_jax.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--config.method.name=foo", "unknown method 'foo'"),
        ("--config.model.fusion=bar", "unknown fusion 'bar'"),
    ],
)
def test_cli_bad_names_one_line(override, message, data_cache, tmp_path):
    proc = run_cli(
        "--config=configs/tiny.py",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.cache_dir={data_cache}",
        override,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0]


def test_cli_unknown_config_key(tmp_path):
    proc = run_cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.train.lrr=1")
    assert proc.returncode != 0
    assert "lrr" in proc.stderr


def test_cli_missing_data_dir(tmp_path):
    proc = run_cli(
        "--config=configs/tiny.py",
        f"--workdir={tmp_path / 'w'}",
        "--config.data.name=cremad",
        f"--config.data.dir={tmp_path / 'nothing'}",
    )
    assert proc.returncode == 2
    assert "error:" in proc.stderr and str(tmp_path / "nothing") in proc.stderr


def test_cli_process_flags_without_distributed_one_line(tmp_path):
    proc = run_cli("--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}", "--num_processes=2")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert lines == ["error: --num_processes given without --distributed; add --distributed"]
    assert not (tmp_path / "w").exists()


def test_setup_process_passes_only_the_given_process_arguments(monkeypatch):
    from mlb_jax import runtime

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    runtime.setup_process(True, "")
    runtime.setup_process(
        True, "", coordinator_address="10.0.0.1:1234", num_processes=4, process_id=0
    )
    assert calls == [
        {},
        {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 0},
    ]
