"""model.conv='auto' on the CPU: the fastest train step of the plans and XLA, timed once, cached."""

import json
import math
import pathlib
import re

import jax
import pytest
from flax import nnx
from test_train import load_tiny

from mlb_jax import conv_auto, trainer
from mlb_jax.finished_runs import config_from_doc
from mlb_jax.models import conv_tune


@pytest.fixture
def step_cache(tmp_path, monkeypatch) -> pathlib.Path:
    """An empty folder for this test's cache files (layer plans and step times)."""
    monkeypatch.setenv(conv_tune.CACHE_ENV, str(tmp_path / "plans"))
    return tmp_path / "plans"


def test_choose_takes_the_fastest_step_and_the_first_candidate_on_a_tie():
    assert conv_auto.CANDIDATES == ("plan", "plan_wide", "xla")
    assert conv_auto.choose({"plan": 5.0, "plan_wide": 5.5, "xla": 6.0}) == "plan"
    assert conv_auto.choose({"plan": 7.0, "plan_wide": 6.5, "xla": 6.0}) == "xla"
    assert conv_auto.choose({"plan": 7.0, "plan_wide": 5.9, "xla": 6.0}) == "plan_wide"
    assert conv_auto.choose({"plan": 6.0, "plan_wide": 6.0, "xla": 6.0}) == "plan"
    assert conv_auto.choose({"plan": 7.0, "plan_wide": 6.0, "xla": 6.0}) == "plan_wide"


def test_time_steps_alternates_after_one_untimed_call_each_and_keeps_medians_in_ms():
    calls = []
    seconds = {"plan": iter([9.0, 0.3, 0.1, 0.2]), "xla": iter([5.0, 0.4, 0.6, 0.5])}

    def step(name):
        def call():
            calls.append(name)
            return next(seconds[name])

        return call

    times = conv_auto.time_steps({"plan": step("plan"), "xla": step("xla")}, reps=3)
    assert calls == ["plan", "xla"] * 4  # the first pair (compiles) is not timed
    assert times == pytest.approx({"plan": 200.0, "xla": 500.0})


def test_cache_round_trip_and_unusable_files_are_ignored_with_a_warning(step_cache):
    assert conv_auto.lookup("k") is None  # no file yet
    conv_auto.store("k", {"plan": 10.0, "plan_wide": 9.5, "xla": 12.5})
    conv_auto.store("k2", {"plan": 3.0, "plan_wide": 3.5, "xla": 2.0})
    assert conv_auto.lookup("k") == {"plan": 10.0, "plan_wide": 9.5, "xla": 12.5}
    assert conv_auto.lookup("k2") == {"plan": 3.0, "plan_wide": 3.5, "xla": 2.0}
    path = conv_auto.cache_path()
    assert path.parent == step_cache
    # Beside, not inside, the layer plans' file of the same machine.
    assert path != conv_tune.cache_file(None, conv_tune.machine_key())
    doc = json.loads(path.read_text())

    for text, reason in (
        ("{not json", "JSONDecodeError"),
        (json.dumps({**doc, "key": {**doc["key"], "cpu": "another"}}), "another machine"),
        # Written before the wide plan was a candidate.
        (
            json.dumps({**doc, "steps": {"k": {"plan": 1.0, "xla": 2.0}}}),
            "not ['plan', 'plan_wide', 'xla']",
        ),
        (
            json.dumps({**doc, "steps": {"k": {"plan": "fast", "plan_wide": 1.0, "xla": 1.0}}}),
            "ValueError",
        ),
    ):
        path.write_text(text)
        match = f"train step cache {re.escape(str(path))} ignored.*{re.escape(reason)}"
        with pytest.warns(UserWarning, match=match):
            assert conv_auto.lookup("k") is None
    with pytest.warns(UserWarning, match="ignored"):
        conv_auto.store("k", {"plan": 4.0, "plan_wide": 4.5, "xla": 5.0})  # replaces the file
    assert json.loads(path.read_text())["steps"] == {
        "k": {"plan": 4.0, "plan_wide": 4.5, "xla": 5.0}
    }
    assert not list(step_cache.glob("*.tmp*"))  # written through a renamed temporary file


def test_step_key_holds_what_changes_the_step_and_nothing_else(data_cache):
    config = load_tiny(data_cache)
    shapes = {"audio": (32, 24), "video": (2, 16, 16, 3)}
    key = conv_auto.step_key(config, shapes)
    assert json.loads(key)["inputs"] == {"audio": [32, 24], "video": [2, 16, 16, 3]}
    same = load_tiny(data_cache)
    same.model.conv, same.train.lr, same.seed = "plan", 1.0, 7
    assert conv_auto.step_key(same, shapes) == key
    for change in (
        lambda c: setattr(c.train, "batch_size", 32),
        lambda c: setattr(c.model, "base_width", 4),
        lambda c: setattr(c.method, "name", "joint"),
        lambda c: setattr(c.train, "cpu_scheduler", "memory"),
    ):
        other = load_tiny(data_cache)
        change(other)
        assert conv_auto.step_key(other, shapes) != key
    assert conv_auto.step_key(config, {**shapes, "video": (2, 8, 8, 3)}) != key
    assert json.loads(key)["model"]["conv_max_scratch"] == math.inf


def test_applies_to_auto_alone():
    assert jax.default_backend() == "cpu" and jax.process_count() == 1
    assert conv_auto.applies("auto")
    assert not any(conv_auto.applies(c) for c in ("plan", "plan_wide", "xla", "tuned"))


def _built_conv(run, state) -> str:
    return nnx.merge(run.graphdef, state.params, state.rest).conv_algorithm


def test_auto_setup_builds_the_cached_faster_step_without_timing(
    data_cache, step_cache, monkeypatch
):
    config = load_tiny(data_cache)
    config.model.conv = "auto"
    meta = trainer.load_dataset(config)
    key = conv_auto.step_key(config, {"audio": (32, 24), "video": (2, 16, 16, 3)})
    monkeypatch.setattr(conv_auto, "time_steps", lambda *a, **k: pytest.fail("timed again"))
    for times, chosen in (
        ({"plan": 9.0, "plan_wide": 8.0, "xla": 4.0}, "xla"),
        ({"plan": 4.0, "plan_wide": 5.0, "xla": 9.0}, "plan"),
        ({"plan": 5.0, "plan_wide": 4.0, "xla": 9.0}, "plan_wide"),
    ):
        conv_auto.store(key, times)
        run, state = trainer.setup(config, meta)
        assert (run.conv, _built_conv(run, state)) == (chosen, chosen)
        assert run.conv_auto == {
            "chosen": chosen,
            "step_ms": times,
            "measured": False,
            "cache": str(conv_auto.cache_path()),
        }
        assert run.config.model.conv == "auto"  # the config is what was asked
        assert trainer.recorded_choices(run.config, run)["conv_resolved"] == chosen
        resolved = trainer.resolved_settings(config, run.meta, run.method, state.params, run.conv)
        assert resolved["model"]["conv"] == "auto"
        assert resolved["model"]["conv_resolved"] == chosen
    # A stored 'auto' run's choice is built as it ran, whatever the cache says.
    timing = {
        "chosen": "xla",
        "step_ms": {"plan": 9.0, "plan_wide": 8.0, "xla": 4.0},
        "measured": True,
    }
    doc = json.loads(config.to_json()) | {
        "resolved": {"model": {"conv": "auto", "conv_resolved": "xla"}},
        "environment": {"conv_auto": timing},
    }
    (step_cache.parent / trainer.CONFIG_FILE).write_text(json.dumps(doc))
    run, state = trainer.setup(config, meta, workdir=step_cache.parent)
    assert (run.conv, _built_conv(run, state), run.conv_auto) == ("xla", "xla", timing)


def test_auto_setup_times_every_step_once_then_reads_the_cache(data_cache, step_cache, monkeypatch):
    config = load_tiny(data_cache)
    config.model.conv = "auto"
    meta = trainer.load_dataset(config)
    seen = {}

    def fake_time_steps(steps):
        seen["candidates"] = tuple(steps)
        seen["xla step seconds"] = steps["xla"]()  # one real step: compiles and runs
        return {"plan": 8.0, "plan_wide": 7.0, "xla": 3.0}

    monkeypatch.setattr(conv_auto, "time_steps", fake_time_steps)
    run, state = trainer.setup(config, meta)
    assert seen["candidates"] == ("plan", "plan_wide", "xla")
    assert 0 < seen["xla step seconds"] < 60
    assert (run.conv, _built_conv(run, state)) == ("xla", "xla")
    assert run.conv_auto["measured"]
    assert run.conv_auto["step_ms"] == {"plan": 8.0, "plan_wide": 7.0, "xla": 3.0}
    # The timed step ran on a copy: the run's state is fresh and still usable (not donated).
    assert int(state.step) == 0 and not any(x.is_deleted() for x in jax.tree.leaves(state))
    monkeypatch.setattr(conv_auto, "time_steps", lambda *a, **k: pytest.fail("timed again"))
    run, state = trainer.setup(config, meta)
    assert (run.conv, run.conv_auto["measured"]) == ("xla", False)


def test_a_stored_auto_run_keeps_what_it_ran(tmp_path, data_cache):
    config = load_tiny(data_cache)
    config.model.conv = "auto"
    doc = json.loads(config.to_json())
    timing = {"chosen": "xla", "step_ms": {"plan": 9.0, "xla": 4.0}, "measured": True}
    doc["resolved"] = {"model": {"conv": "auto", "conv_resolved": "xla"}}
    doc["environment"] = {"conv_auto": timing}
    (tmp_path / trainer.CONFIG_FILE).write_text(json.dumps(doc))
    assert trainer.stored_conv(tmp_path, config) == ("xla", timing)
    assert config_from_doc(doc).model.conv == "xla"  # evaluated and built on as it ran
    older = {k: v for k, v in doc.items() if k not in ("resolved", "environment")}
    assert config_from_doc(older).model.conv == "plan"  # 'auto' was untimed then
    (tmp_path / trainer.CONFIG_FILE).write_text(json.dumps(older))
    assert trainer.stored_conv(tmp_path, config) == ("plan", None)
    (tmp_path / trainer.CONFIG_FILE).write_text(json.dumps(doc))
    asked = load_tiny(data_cache)
    asked.model.conv = "plan"  # asks for another choice: the resume check names the change
    assert trainer.stored_conv(tmp_path, asked) == (None, None)
    assert trainer.stored_conv(tmp_path / "new", config) == (None, None)
    doc["model"]["conv"] = "plan"
    (tmp_path / trainer.CONFIG_FILE).write_text(json.dumps(doc))
    assert trainer.stored_conv(tmp_path, config) == (None, None)
    assert config_from_doc(doc).model.conv == "plan"
