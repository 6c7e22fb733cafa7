"""End-to-end training on the tiny synthetic config: 8 devices, resume, results, bad input."""

import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from mlb_jax import checkpointing, conv_auto, evaluate, trainer
from mlb_jax.allocator import allocator_mode
from mlb_jax.checkpointing import RunCheckpoints
from mlb_jax.data import pipeline
from mlb_jax.data.schema import DataError
from mlb_jax.methods import make_method
from mlb_jax.models import conv_tune
from mlb_jax.steps import abstract_batch, compiler_options

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
def reference_run(tmp_path_factory, data_cache):
    """An uninterrupted tiny MLB run on all 8 devices, and the splits `predict` was asked for."""
    workdir = tmp_path_factory.mktemp("reference")
    calls = []
    original = trainer.predict

    def recording_predict(run, state, split, indices=None):
        calls.append((split, None if indices is None else len(indices)))
        return original(run, state, split, indices)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "predict", recording_predict)
        config = load_tiny(data_cache)
        config.evaluate.enabled = True  # the evaluation tests below read this run's
        results = trainer.train_and_evaluate(config, workdir)
    return workdir, results, calls


def fresh_state(config):
    """A step-0 train state laid out as `trainer.setup` lays it out, without tracing a step."""
    meta = trainer.load_dataset(config)
    shapes = {m: spec.shape for m, spec in meta.modalities.items()}
    mesh = trainer.make_mesh(config.train.num_devices)
    return trainer.create_train_state(config, meta.num_classes, shapes, mesh=mesh)[3]


def restore_final(workdir, config, abstract_state):
    """(final train state, history) of the run in `workdir`, laid out as `abstract_state`."""
    ckpts = RunCheckpoints(workdir)
    try:
        return ckpts.restore(abstract_state)
    finally:
        ckpts.close()


def final_params(workdir, config):
    state, _ = restore_final(workdir, config, fresh_state(config))
    return jax.tree.map(np.asarray, state.params)


def assert_same_results_and_final_params(ref_dir, ref_results, workdir, results, config):
    """The results a run reports and its final parameters equal the reference run's, exactly."""
    for key in ("accuracy", "unimodal_accuracy", "probe_accuracy", "ece", "steps"):
        assert results[key] == ref_results[key], key
    for a, b in zip(
        jax.tree.leaves(final_params(ref_dir, config)),
        jax.tree.leaves(final_params(workdir, config)),
    ):
        np.testing.assert_array_equal(a, b)


def read_history(workdir):
    ckpts = RunCheckpoints(workdir)
    try:
        return ckpts.restore_meta()
    finally:
        ckpts.close()


def test_results_contract_and_loss_decreases(reference_run, data_cache):
    workdir, results, _ = reference_run
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
    assert (on_disk["conv"], on_disk["conv_resolved"], on_disk["conv_auto"]) == ("xla", "xla", None)
    assert on_disk["recipe"] == "" and on_disk["augment"]["enabled"] is True  # configs/tiny.py
    assert on_disk["early_stopped"] is None  # patience 0: never stops early
    assert on_disk["steps"] == 2 * (128 // 16)  # 2 epochs of 8 steps
    # The first step (compilation included) is part of the first epoch's time.
    assert 0 < on_disk["first_step_seconds"] <= on_disk["train_seconds"]
    # Every test example counted exactly once despite the padded last eval batch (40 / 32).
    assert on_disk["num_test_examples"] == 40
    assert (workdir / "training.png").stat().st_size > 0
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))

    history = read_history(workdir)
    losses = [e["train/loss"] for e in history["epochs"]]
    assert len(losses) == 2 and losses[1] < losses[0]  # epoch-mean training loss decreases
    assert [e["step"] for e in history["epochs"]] == [8, 16]
    # Steps counted on the host: the first step of each epoch, then every log_every = 2.
    assert [s["step"] for s in history["steps"]] == [1, 2, 4, 6, 8, 9, 10, 12, 14, 16]
    # MLB coefficients were logged for both modalities at every logged step.
    assert all("train/k/audio" in s and "train/k/video" in s for s in history["steps"])
    assert on_disk["val_accuracy"] == max(e["val/accuracy"] for e in history["epochs"])


def test_config_json_records_what_the_run_uses(reference_run, data_cache):
    workdir, _, _ = reference_run
    config = load_tiny(data_cache)
    written = json.loads((workdir / "config.json").read_text())
    assert written["train"]["epochs"] == 2 and written["method"]["name"] == "mlb"
    resolved = written["resolved"]
    method = make_method(config.method)
    assert resolved["method"] == json.loads(json.dumps(dataclasses.asdict(method)))
    assert resolved["method"]["beta_max"] == config.method.beta_max == 4.0
    assert resolved["model"]["param_dtypes"] == ["float32"]
    # The tiny config inherits the demo's choice; on the CPU 'xla' resolves to itself.
    assert (resolved["model"]["conv"], resolved["model"]["conv_resolved"]) == ("xla", "xla")
    assert resolved["data"]["split_sizes"] == {"train": 128, "validation": 32, "test": 40}
    assert resolved["data"]["modalities"]["video"] == {"kind": "frames", "shape": [2, 16, 16, 3]}
    assert written["environment"]["device_count"] == 8
    # The heap setting the process started with (mlb_jax.allocator).
    assert written["environment"]["malloc"] == allocator_mode()


def test_test_split_is_evaluated_once_for_the_selected_epoch(reference_run):
    workdir, results, calls = reference_run
    # Validation once per epoch (MLB has no end-of-epoch predictions); test and train once,
    # at the end, for the best checkpoint (test metrics and the linear probes).
    assert calls == [("validation", None), ("validation", None), ("test", None), ("train", None)]
    history = read_history(workdir)
    assert all("test/accuracy" not in e for e in history["epochs"])
    assert results["num_test_examples"] == 40


def test_evaluation_is_written_and_agrees_with_results(reference_run):
    workdir, results, _ = reference_run
    ev = json.loads((workdir / evaluate.EVALUATION_FILE).read_text())
    assert (ev["split"], ev["checkpoint"], ev["num_examples"]) == ("test", "best", 40)
    fused = ev["heads"]["fused"]
    assert fused["accuracy"] == results["accuracy"]
    assert fused["ece"] == pytest.approx(results["ece"])
    for m in ("audio", "video"):
        assert ev["heads"][m]["accuracy"] == results["unimodal_accuracy"][m]
    assert np.sum(fused["confusion"]) == 40 and sum(fused["per_class"]["support"]) == 40
    assert 0 <= fused["macro_f1"] <= 1 and fused["top5_accuracy"] >= fused["accuracy"]  # K = 8
    # The subset of every modality is the plain model; Shapley values are efficient.
    subsets = ev["subsets"]["accuracy"]
    assert set(subsets) == {"none", "audio", "video", "audio+video"}
    assert subsets["audio+video"] == pytest.approx(results["accuracy"])
    shapley = ev["subsets"]["shapley"]
    assert sum(shapley.values()) == pytest.approx(subsets["audio+video"] - subsets["none"])
    # Noise curves start at the clean accuracy.
    robustness = ev["robustness"]
    assert robustness["levels"] == [0.0, 0.5, 1.0, 2.0]
    assert all(c[0] == results["accuracy"] and len(c) == 4 for c in robustness["accuracy"].values())
    # Agreement with the run's own heads: every example in one pattern.
    agreement = ev["agreement"]
    assert agreement["reference"] == "the run's own unimodal heads"
    assert agreement["reference_accuracy"] == results["unimodal_accuracy"]
    patterns = agreement["patterns"]
    assert sum(p["count"] for p in patterns) == 40
    right = sum(p["count"] * (p["fused_accuracy"] or 0.0) for p in patterns)
    assert right == pytest.approx(40 * results["accuracy"])
    report = (workdir / evaluate.REPORT_FILE).read_text()
    assert "## Modality subsets" in report and "## Agreement with" in report
    for figure in evaluate.FIGURES.values():
        assert (workdir / figure).stat().st_size > 0


def test_evaluate_restores_a_run_and_bad_input_is_one_line(reference_run, tmp_path):
    workdir, _, _ = reference_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("evaluation*", "eval_*"))
    ev = evaluate.evaluate_workdir(copy, split="validation", checkpoint="latest")
    assert (ev["split"], ev["checkpoint"], ev["num_examples"]) == ("validation", "latest", 32)
    last_epoch = read_history(workdir)["epochs"][-1]
    assert ev["heads"]["fused"]["accuracy"] == pytest.approx(last_epoch["val/accuracy"])
    assert json.loads((copy / evaluate.EVALUATION_FILE).read_text())["split"] == "validation"
    no_ckpt = tmp_path / "no_checkpoint"
    no_ckpt.mkdir()
    shutil.copy(workdir / "config.json", no_ckpt / "config.json")
    for where, kwargs, message in [
        (tmp_path / "missing", {}, "does not exist"),
        (tmp_path, {}, "holds no run"),
        (copy, {"split": "bogus"}, "has no such split"),
        (copy, {"checkpoint": "first"}, "choose one of"),
        (no_ckpt, {}, "no best checkpoint"),
        (no_ckpt, {"checkpoint": "latest"}, "has no checkpoint"),
    ]:
        with pytest.raises(evaluate.EvaluateError, match=message):
            evaluate.evaluate_workdir(where, **kwargs)
    for args, message in [
        ([f"--workdir={tmp_path / 'missing'}"], "does not exist"),
        ([f"--workdir={copy}", "--checkpoint=first"], "--checkpoint"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "mlb_jax.evaluate", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("error:") and message in lines[0]


def test_predict_subset_equals_the_rows_of_the_whole_split(reference_run, data_cache):
    workdir, _, _ = reference_run
    config = load_tiny(data_cache)
    run, state = trainer.setup(config, trainer.load_dataset(config))
    state, _ = restore_final(workdir, config, state)
    whole = trainer.predict(run, state, "train")
    assert len(whole["labels"]) == 128
    indices = np.array([0, 5, 6, 31, 32, 33, 100, 127])  # spans eval batches of 32
    subset = trainer.predict(run, state, "train", indices)
    assert len(subset["labels"]) == len(indices)
    np.testing.assert_array_equal(subset["labels"], whole["labels"][indices])
    for a, b in zip(jax.tree.leaves(subset), jax.tree.leaves(whole), strict=True):
        np.testing.assert_allclose(a, b[indices], rtol=1e-5, atol=1e-6)

    # The end-of-epoch context hands out the epoch's predictions of a split once.
    context = trainer._EpochContext(run, state, epoch=0, cache={"train": whole})
    assert context.predict("train") is whole
    cached = context.predict("train", indices)
    np.testing.assert_array_equal(cached["logits"], whole["logits"][indices])
    assert context.split_size("validation") == 32
    with pytest.raises(DataError, match="strictly increasing"):
        context.predict("train", np.array([3, 1]))


def test_summary_line_shows_test_only_when_evaluated_every_epoch():
    record = {
        "train/loss": 1.23456,
        "val/accuracy": 0.5,
        "val/accuracy/audio": 0.25,
        "val/accuracy/video": 0.125,
        "train/k/audio": 0.5,
        "train/k/video": 1.5,
        "epoch_seconds": 2.34,
    }
    line = trainer._summary_line(0, 12, record, ["audio", "video"])
    assert line == (
        "epoch   1/12 | loss 1.2346 | val 50.0 | unimodal val audio 25.0 video 12.5 "
        "| k audio 0.50 video 1.50 | 2.3s"
    )
    line = trainer._summary_line(0, 12, record | {"test/accuracy": 0.75}, ["audio", "video"])
    assert "| val 50.0 | test 75.0 | unimodal val" in line


def test_epoch_context_predicts_each_split_once(monkeypatch):
    calls = []

    def fake_predict(run, state, split, indices=None):
        calls.append((split, None if indices is None else list(indices)))
        n = 6 if indices is None else len(indices)
        rows = np.arange(6) if indices is None else np.asarray(indices)
        return {"labels": rows, "logits": rows[:, None] * np.ones((n, 3))}

    monkeypatch.setattr(trainer, "predict", fake_predict)
    context = trainer._EpochContext(run=None, state=None, epoch=3)
    first = context.predict("validation")
    assert context.predict("validation") is first  # MSLR's hook reuses the trainer's pass
    np.testing.assert_array_equal(context.predict("validation", [1, 4])["labels"], [1, 4])
    np.testing.assert_array_equal(context.predict("train", [0, 2])["labels"], [0, 2])
    assert calls == [("validation", None), ("train", [0, 2])]


def run_steps(config, num_steps):
    """Params and metrics after `num_steps` train steps of the tiny config."""
    meta = trainer.load_dataset(config)
    run, state = trainer.setup(config, meta)
    batches = trainer.epoch_batches(run, epoch=0)
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
    ref_dir, ref_results, _ = reference_run
    # model.conv='auto' with XLA's step cached as the faster: the reference's numbers ('xla').
    monkeypatch.setenv(conv_tune.CACHE_ENV, str(tmp_path / "plans"))
    workdir = tmp_path / "run"
    config = load_tiny(data_cache)
    config.model.conv = "auto"
    key = conv_auto.step_key(config, {"audio": (32, 24), "video": (2, 16, 16, 3)})
    conv_auto.store(key, {"plan": 9.0, "plan_wide": 9.5, "xla": 4.0})
    saves = []
    original = RunCheckpoints.save

    def save_then_die(self, step, state, meta):
        original(self, step, state, meta)
        saves.append(step)
        raise KeyboardInterrupt("simulated kill after the first epoch's checkpoint")

    monkeypatch.setattr(RunCheckpoints, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_and_evaluate(config, workdir)
    assert saves == [8] and not (workdir / "results.json").exists()
    monkeypatch.setattr(RunCheckpoints, "save", original)
    # The machine now times the plan faster: the resumed run keeps what it ran.
    conv_auto.store(key, {"plan": 4.0, "plan_wide": 4.5, "xla": 9.0})
    resumed = trainer.train_and_evaluate(config, workdir)
    assert (resumed["conv"], resumed["conv_resolved"]) == ("auto", "xla")
    assert resumed["conv_auto"]["step_ms"] == {"plan": 9.0, "plan_wide": 9.5, "xla": 4.0}
    written = json.loads((workdir / "config.json").read_text())
    assert (written["model"]["conv"], written["resolved"]["model"]["conv_resolved"]) == (
        "auto",
        "xla",
    )
    assert written["environment"]["conv_auto"] == resumed["conv_auto"]
    config.model.conv = "xla"  # final_params builds the model without timing
    assert_same_results_and_final_params(ref_dir, ref_results, workdir, resumed, config)


def test_checkpoint_every_saves_less_and_changes_nothing(
    reference_run, data_cache, tmp_path, monkeypatch
):
    ref_dir, ref_results, _ = reference_run
    config = load_tiny(data_cache)  # 2 epochs of 8 steps
    config.train.checkpoint_every = 2
    saved = []
    for name in ("save", "save_best"):
        original = getattr(RunCheckpoints, name)

        def record(self, step, *args, _name=name, _original=original):
            saved.append((_name, step))
            return _original(self, step, *args)

        monkeypatch.setattr(RunCheckpoints, name, record)
    results = trainer.train_and_evaluate(config, tmp_path)
    # One save at the end (step 16) instead of one per epoch; the best epoch's state, kept on
    # the devices meanwhile, is written just before it.
    best_step = 8 * ref_results["best_epoch"]  # 1-based
    assert saved == [("save_best", best_step), ("save", 16)]
    assert_same_results_and_final_params(ref_dir, ref_results, tmp_path, results, config)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(data_cache, tmp_path, monkeypatch):
    config = load_tiny(data_cache)  # the reference config: its compiled step is cached
    original = trainer._train_epoch

    def diverge_in_epoch_2(run, state, history, epoch, *args):
        if epoch == 1:  # as a too-large step would: parameters overflow after epoch 1
            state = state._replace(params=jax.tree.map(lambda x: x * np.inf, state.params))
        return original(run, state, history, epoch, *args)

    monkeypatch.setattr(trainer, "_train_epoch", diverge_in_epoch_2)
    with pytest.raises(
        trainer.RunError,
        match=r"training loss is nan at step 9 \(epoch 2\); the last good checkpoint "
        r"\(step 8\) is kept\. Lower config.train.lr",
    ):
        trainer.train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "results.json").exists()
    ckpts = RunCheckpoints(tmp_path)
    try:
        assert ckpts.latest_step() == 8
        restored, history = ckpts.restore(fresh_state(config))
    finally:
        ckpts.close()
    assert len(history["epochs"]) == 1 and int(restored.step) == 8
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored.params))


def test_other_methods_hyperparameters_do_not_block_resume(reference_run, data_cache):
    workdir, _, _ = reference_run
    config = load_tiny(data_cache)
    meta = trainer.load_dataset(config)

    def resolved(cfg):
        shapes = {m: s.shape for m, s in meta.modalities.items()}
        _, method, _, state = trainer.create_train_state(cfg, meta.num_classes, shapes)
        return trainer.resolved_settings(cfg, meta, method, state.params)

    before = (workdir / "config.json").read_text()
    config.method.agm.alpha = 123.0  # the run is MLB: AGM's block cannot affect it
    trainer.check_run_config(workdir, config, resolved(config))
    config.method.alpha = 123.0  # MLB's own alpha does
    with pytest.raises(trainer.RunError, match=r"resolved.method.alpha: 1.0 -> 123.0"):
        trainer.check_run_config(workdir, config, resolved(config))
    assert json.loads((workdir / "config.json").read_text())["method"]["alpha"] == 1.0
    assert (
        json.loads(before)["resolved"]
        == json.loads((workdir / "config.json").read_text())["resolved"]
    )


def test_changed_ogm_ge_setting_is_refused_on_resume(data_cache, tmp_path):
    # OGM-GE reads its settings from config.method.ogm, another method's block by name.
    config = load_tiny(data_cache)
    config.method.name = "ogm_ge"
    meta = trainer.load_dataset(config)
    shapes = {m: s.shape for m, s in meta.modalities.items()}
    _, method, _, state = trainer.create_train_state(config, meta.num_classes, shapes)
    trainer.check_run_config(
        tmp_path, config, trainer.resolved_settings(config, meta, method, state.params)
    )
    written = (tmp_path / "config.json").read_text()
    assert json.loads(written)["resolved"]["method"]["alpha"] == 0.3
    config.method.ogm.alpha = 0.5
    with pytest.raises(trainer.RunError, match=r"resolved.method.alpha: 0.3 -> 0.5"):
        trainer.train_and_evaluate(config, tmp_path)
    assert (tmp_path / "config.json").read_text() == written  # untouched
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("placement", "sideways", "placement"),
        ("score", "bogus", "bogus"),
    ],
)
def test_bad_method_value_leaves_no_config_json(data_cache, tmp_path, field, value, message):
    config = load_tiny(data_cache)
    config.method[field] = value
    with pytest.raises(ValueError, match=message):
        trainer.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # not even the directory


def test_incompatible_workdir_is_refused(reference_run, data_cache):
    workdir, _, _ = reference_run
    config = load_tiny(data_cache)
    config.train.lr = 0.5
    with pytest.raises(trainer.RunError, match=r"holds a run with a different config \(train.lr"):
        trainer.train_and_evaluate(config, workdir)


def test_a_config_json_that_is_not_json_is_one_line_and_left_alone(data_cache, tmp_path):
    (tmp_path / "config.json").write_text("{half a file")
    config = load_tiny(data_cache)
    auto = load_tiny(data_cache)
    auto.model.conv = "auto"  # a resume under 'auto' reads the stored run's choice first
    for read in (
        lambda: trainer.check_run_config(tmp_path, config),
        lambda: trainer.stored_conv(tmp_path, auto),
    ):
        with pytest.raises(trainer.RunError) as error:
            read()
        assert str(error.value).startswith(f"{tmp_path / 'config.json'} is not a config.json (")
        assert str(error.value).endswith(
            "delete the run directory to start over, or use a new --workdir"
        )
    assert (tmp_path / "config.json").read_text() == "{half a file"


def test_run_written_before_a_field_existed_resumes_at_its_old_value(data_cache, tmp_path):
    # Runs written before config.model.conv_max_scratch existed ran as if it were inf.
    config = load_tiny(data_cache)
    trainer.check_run_config(tmp_path, config)
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["model"].pop("conv_max_scratch") == float("inf")
    (tmp_path / "config.json").write_text(json.dumps(doc))
    trainer.check_run_config(tmp_path, config)  # accepted, and rewritten with the field
    assert json.loads((tmp_path / "config.json").read_text())["model"]["conv_max_scratch"] == float(
        "inf"
    )
    (tmp_path / "config.json").write_text(json.dumps(doc))
    config.model.conv_max_scratch = 2.0
    with pytest.raises(trainer.RunError, match=r"model.conv_max_scratch: None -> 2.0"):
        trainer.check_run_config(tmp_path, config)


def run_cli(*args, cwd=ROOT, module="mlb_jax.train"):
    """Runs `python -m <module> *args` in `cwd`; returns the completed process (text)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
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


@pytest.mark.parametrize(
    ("flag", "line"),
    [
        (
            "--config.train.epochz=3",
            "error: --config.train.epochz: no such field in the config "
            "(did you mean train.epochs?)",
        ),
        (
            "--config.train.lr=fast",
            "error: --config.train.lr=fast: could not convert string to float: 'fast' "
            "(expected a float, like the config file's 0.01)",
        ),
        ("--workdirr=x", "error: --workdirr: unknown flag (did you mean --workdir?)"),
    ],
)
def test_cli_flag_mistakes_are_one_line(flag, line, tmp_path):
    proc = run_cli("--config=configs/synthetic_av.py", f"--workdir={tmp_path / 'w'}", flag)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [line]  # exactly one line, no traceback
    assert not (tmp_path / "w").exists()


def test_cli_missing_data_dir(tmp_path):
    proc = run_cli(
        "--config=configs/tiny.py",
        f"--workdir={tmp_path / 'w'}",
        "--config.data.name=cremad",
        f"--config.data.dir={tmp_path / 'nothing'}",
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(tmp_path / "nothing") in lines[0]
    assert not (tmp_path / "w").exists()


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


def test_last_partial_batch_is_trained_when_kept(data_cache, tmp_path):
    # Trained on the 40-example test split with batch 16: two full batches and one of the 8
    # left (one per device); the full batches' step is the other tiny runs' compiled one.
    config = load_tiny(data_cache)
    config.train.epochs = 1
    config.data.train_split = "test"
    config.train.keep_last_batch = True
    results = trainer.train_and_evaluate(config, tmp_path)
    assert results["steps"] == 3
    config.train.keep_last_batch = False
    assert trainer.setup(config, trainer.load_dataset(config))[0].steps_per_epoch == 2


def test_checkpoint_round_trip_keeps_values_dtypes_and_device_layout(tmp_path, data_cache):
    # One process saves a host copy of the state (mlb_jax/checkpointing.py); restoring must
    # still give the state as it was on the 8 devices: same values, dtypes and shardings.
    config = load_tiny(data_cache)
    state = fresh_state(config)
    state = state._replace(params=jax.tree.map(lambda x: x + 1, state.params))  # not fresh
    ckpts = RunCheckpoints(tmp_path)
    try:
        ckpts.save(7, state, {"epochs": [], "steps": [], "best": None})
        ckpts.save_best(7, state)
        restored, meta = ckpts.restore(fresh_state(config))
        best = ckpts.restore_best(fresh_state(config))
    finally:
        ckpts.close()
    assert meta == {"epochs": [], "steps": [], "best": None}
    leaves = jax.tree.leaves(state)
    # What was written is the host copy: one process holds every array.
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(checkpointing._on_host(state)))
    for tree in (restored, best):
        assert jax.tree.structure(tree) == jax.tree.structure(state)
        for a, b in zip(jax.tree.leaves(tree), leaves, strict=True):
            assert isinstance(a, jax.Array) and a.dtype == b.dtype
            assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(state.step.sharding.device_set) == 8


def test_cpu_scheduler_orders_for_memory_and_computes_the_same_bits(data_cache):
    # config.train.cpu_scheduler reaches the trainer's compiled step: ordered for memory
    # (the default) it needs fewer temporaries than XLA's concurrency order, and one step
    # from the same state and batch gives the same bits under both.
    config = load_tiny(data_cache)
    meta = trainer.load_dataset(config)
    shapes = {m: spec.shape for m, spec in meta.modalities.items()}
    rng = np.random.default_rng(0)
    temps, outputs, batch = {}, {}, None
    for scheduler in ("memory", "concurrency"):
        config.train.cpu_scheduler = scheduler
        run, state = trainer.setup(config, meta)
        abstract = abstract_batch(
            shapes, config.train.batch_size, mesh=run.mesh, lengths=pipeline.length_keys(meta)
        )
        if batch is None:  # one batch for both: inputs random, every label 1, mask all True
            batch = jax.tree.map(
                lambda s: jax.device_put(
                    rng.standard_normal(s.shape, np.float32)
                    if s.dtype == np.float32
                    else np.ones(s.shape, s.dtype),
                    s.sharding,
                ),
                abstract,
            )
        compiled = run.train_step.lower(state, abstract).compile()
        temps[scheduler] = compiled.memory_analysis().temp_size_in_bytes
        outputs[scheduler] = jax.tree.leaves(compiled(state, batch))
    assert temps["memory"] < temps["concurrency"]
    for a, b in zip(outputs["memory"], outputs["concurrency"], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert compiler_options(config, backend="gpu") == {}  # XLA CPU's setting alone
    # 'auto' (the default) orders for memory only where the CPU convolution plan runs.
    config.train.cpu_scheduler = "auto"
    for conv, order in (("xla", "CONCURRENCY"), ("auto", "MEMORY"), ("tuned", "MEMORY")):
        config.model.conv = conv
        expected = {"xla_cpu_scheduler_type": f"CPU_SCHEDULER_TYPE_{order}_OPTIMIZED"}
        assert compiler_options(config, backend="cpu") == expected, conv
    config.train.cpu_scheduler = "fast"
    with pytest.raises(ValueError, match=r"config.train.cpu_scheduler='fast' is not a sched"):
        trainer.validate_config(config)
