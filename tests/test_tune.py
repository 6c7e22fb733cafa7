"""mlb_jax.tune: search spaces, trial settings, equal budgets, resume, validation-only selection."""

import json
import math
import pathlib

import pytest
from test_train import load_tiny, run_cli

from mlb_jax import trainer, tune
from mlb_jax.methods import METHODS
from mlb_jax.methods.space import Choice, LogUniform, Scaled, parse_dimension

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_dimensions_map_the_unit_interval_as_declared():
    assert LogUniform(1.0, 100.0).value(0.5) == pytest.approx(10.0)
    assert LogUniform(1.0, 100.0).value(0.0) == pytest.approx(1.0)
    assert Scaled(0.1, 10.0).value(0.5, 0.02) == pytest.approx(0.02)
    assert Scaled(0.1, 10.0).value(0.0, 0.02) == pytest.approx(0.002)
    assert [Choice(("a", "b", "c")).value(u) for u in (0.0, 0.34, 0.67, 0.999)] == list("abcc")
    assert parse_dimension("log:0.5:5") == LogUniform(0.5, 5.0)
    assert parse_dimension("scaled:0.1:10") == Scaled(0.1, 10.0)
    assert parse_dimension("2|4|0.5|updates|true") == Choice((2, 4, 0.5, "updates", True))
    with pytest.raises(ValueError, match=r"'log:1': write log:LOW:HIGH"):
        parse_dimension("log:1")
    with pytest.raises(ValueError, match=r"0 < low < high"):
        parse_dimension("log:5:0.5")
    with pytest.raises(ValueError, match=r"--space='mlb=log:1:2': write METHOD:SETTING=SPEC"):
        tune.parse_space_flags(["mlb=log:1:2"])
    assert tune.parse_space_flags(["mlb:alpha=log:1:2", "joint:train.lr=0.1|0.2"]) == {
        "mlb": {"alpha": LogUniform(1.0, 2.0)},
        "joint": {"train.lr": Choice((0.1, 0.2))},
    }


def test_every_tuned_method_declares_a_valid_space():
    config = load_tiny(pathlib.Path("unused"))
    tuned = [m for m in METHODS if m not in tune.NOT_TUNED]
    for method in tuned:
        space = tune.search_space(config, method)
        assert "train.lr" in space, method
    assert tune.search_space(config, "joint") == {"train.lr": Scaled(1 / 3, 3.0)}
    assert list(tune.search_space(config, "mlb")) == [
        "train.lr",
        "method.alpha",
        "method.beta_max",
        "method.placement",
    ]
    assert list(tune.search_space(config, "ogm")) == ["train.lr", "method.ogm.alpha"]
    assert list(tune.search_space(config, "multiloss")) == ["train.lr", "method.unimodal_weight"]


@pytest.mark.parametrize(
    "method, extra, message",
    [
        ("mlb", {"alpah": LogUniform(1, 2)}, r"unknown hyper-parameter 'alpah' of method 'mlb'"),
        ("mlb", {"scaling": LogUniform(1, 2)}, r"unknown hyper-parameter 'scaling'.*alpha"),
        ("joint", {"train.lrr": LogUniform(1, 2)}, r"has no field config\.train\.lrr"),
        ("ogm", {"method.ogm.alpha": LogUniform(1, 2)}, r"name a method setting by its field"),
        ("ensemble", {}, r"method 'ensemble' is not tuned"),
    ],
)
def test_unknown_hyper_parameters_are_refused(method, extra, message):
    with pytest.raises(ValueError, match=message):
        tune.search_space(load_tiny(pathlib.Path("unused")), method, extra)


def test_trial_zero_is_the_config_and_more_trials_extend_the_sequence():
    space = {"method.alpha": LogUniform(0.5, 5.0), "method.placement": Choice(("g", "u"))}
    defaults = {"method.alpha": 1.0, "method.placement": "g"}
    six = tune.trial_settings(space, defaults, 6, seed=3)
    assert six[0] == defaults
    assert tune.trial_settings(space, defaults, 3, seed=3) == six[:3]
    assert tune.trial_settings(space, defaults, 6, seed=4) != six
    assert all(0.5 <= s["method.alpha"] <= 5.0 for s in six)
    assert {s["method.placement"] for s in six[1:]} == {"g", "u"}
    assert len({s["method.alpha"] for s in six}) == 6


def _fake_trainer(calls):
    """train_and_evaluate stand-in: writes config.json and results.json, scores by setting.

    Validation accuracy peaks at lr 0.05 (the tiny config's), plus 0.01 * MLB's alpha.
    """

    def train_and_evaluate(cfg, workdir):
        workdir = pathlib.Path(workdir)
        calls.append((workdir.relative_to(workdir.parents[1]).as_posix(), cfg))
        val = 0.9 - abs(math.log10(cfg.train.lr / 0.05)) / 10
        if cfg.method.name == "mlb":
            val += 0.01 * cfg.method.alpha
        res = {
            "accuracy": 0.5 if cfg.data.test_split == "test" else val,
            "unimodal_accuracy": {"audio": 0.4, "video": 0.3},
            "probe_accuracy": {"audio": 0.4, "video": 0.3},
            "ece": 0.1,
            "val_accuracy": val,
            "best_epoch": 1,
            "train_seconds": 1.0,
        }
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / trainer.CONFIG_FILE).write_text(cfg.to_json())
        (workdir / trainer.RESULTS_FILE).write_text(json.dumps(res))
        return res

    return train_and_evaluate


def test_equal_budgets_validation_selection_and_resume(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer, "train_and_evaluate", _fake_trainer(calls))
    config = load_tiny(pathlib.Path("unused"))
    methods = ["joint", "multiloss", "mlb"]
    results, chosen = tune.tune_all(config, tmp_path, methods, trials=4, seeds=[0, 1])

    trial_calls = [(run, cfg) for run, cfg in calls if "/trial_" in run]
    seed_calls = [(run, cfg) for run, cfg in calls if "/seed_" in run]
    assert len(trial_calls) == 12 and len(seed_calls) == 6
    for _, cfg in trial_calls:  # trials: seed 0, validation in place of test, no evaluation
        assert (cfg.seed, cfg.data.test_split, cfg.evaluate.enabled) == (0, "validation", False)
    for run, cfg in seed_calls:
        assert cfg.data.test_split == "test"
        assert cfg.seed == int(run[-1])
    for method in methods:
        doc = json.loads((tmp_path / method / tune.TUNING_FILE).read_text())
        assert [t["trial"] for t in doc["trials"]] == [0, 1, 2, 3]
        vals = [t["val_accuracy"] for t in doc["trials"]]
        assert doc["chosen"] == vals.index(max(vals))
        assert doc["setting"] == chosen[method] == doc["trials"][doc["chosen"]]["setting"]
        assert doc["trials"][0]["setting"]["train.lr"] == 0.05  # trial 0: the config's own
        assert (tmp_path / method / "tuning.png").stat().st_size > 0
        assert "| chosen |" in (tmp_path / method / "tuning.md").read_text()
        for run, cfg in seed_calls:
            if run.startswith(f"{method}/"):
                assert cfg.train.lr == chosen[method]["train.lr"]
        assert [r["accuracy"] for r in results[method]] == [0.5, 0.5]
    # Resume: only the missing trial trains; finished seeds are reused.
    (tmp_path / "mlb" / "trial_2" / trainer.RESULTS_FILE).unlink()
    calls.clear()
    again, _ = tune.tune_all(config, tmp_path, methods, trials=4, seeds=[0, 1])
    assert [run for run, _ in calls] == ["mlb/trial_2"]
    assert again == results

    # Another space on the same directory is refused, naming the run and the setting.
    with pytest.raises(ValueError, match=r"trial_1 was trained with method\.alpha="):
        tune.tune_all(
            config, tmp_path, ["mlb"], 4, [0], extra={"mlb": {"alpha": LogUniform(9, 10)}}
        )


@pytest.fixture(scope="module")
def trials_alone(tmp_path_factory, data_cache):
    """(config, records) of 2 tiny multi-loss trials trained one by one (1 epoch, lr 0.005).

    Multi-loss: float settings only (one group for --batch_trials) and no discontinuity in its
    update, so trials trained together follow these (test_sweep.py's tolerance).
    """
    config = load_tiny(data_cache)
    config.train.epochs = 1
    config.train.lr = 0.005
    _, records = tune.run_trials(
        config, "multiloss", tmp_path_factory.mktemp("alone"), trials=2, seed=0
    )
    return config, records


def test_selection_never_reads_the_test_split(trials_alone, tmp_path):
    """Trials on a config whose test split is poisoned (a split that does not exist, so any
    read fails) train exactly as on the clean config: same validation scores, same choice."""
    config, clean = trials_alone
    poisoned = config.copy_and_resolve_references()
    poisoned.data.test_split = "poisoned"
    _, trials = tune.run_trials(poisoned, "multiloss", tmp_path / "poisoned", trials=2, seed=0)
    assert [t["val_accuracy"] for t in trials] == [t["val_accuracy"] for t in clean]
    assert [t["setting"] for t in trials] == [t["setting"] for t in clean]
    assert tune.choose(trials) == tune.choose(clean)
    # The poison bites wherever the test split is read: the final (test) run fails.
    with pytest.raises(Exception, match="poisoned"):
        trainer.train_and_evaluate(
            tune.apply_setting(poisoned, "multiloss", trials[0]["setting"], 0), tmp_path / "final"
        )


def test_batched_trials_equal_trials_one_by_one(trials_alone, tmp_path, monkeypatch):
    config, alone = trials_alone

    def no_single_runs(cfg, workdir):
        raise AssertionError(f"trained alone: {workdir}")

    monkeypatch.setattr(trainer, "train_and_evaluate", no_single_runs)
    _, together = tune.run_trials(
        config, "multiloss", tmp_path / "together", trials=2, seed=0, batch=True
    )
    assert [t["setting"] for t in together] == [t["setting"] for t in alone]
    for a, b in zip(alone, together, strict=True):
        assert abs(a["val_accuracy"] - b["val_accuracy"]) <= 1 / 32 + 1e-9
        assert a["best_epoch"] == b["best_epoch"]
    for i, trial in enumerate(together):
        stored = json.loads(
            (tmp_path / "together" / "multiloss" / f"trial_{i}" / trainer.CONFIG_FILE).read_text()
        )
        assert stored["train"]["lr"] == trial["setting"]["train.lr"]
        assert stored["method"]["unimodal_weight"] == trial["setting"]["method.unimodal_weight"]
        assert stored["data"]["test_split"] == "validation"


def test_cli_refuses_an_unknown_hyper_parameter_before_training(tmp_path):
    proc = run_cli(
        "--config=configs/tiny.py",
        f"--workdir={tmp_path / 'tune'}",
        "--methods=joint,mlb",
        "--space=mlb:alpah=log:0.5:5",
        module="mlb_jax.tune",
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: unknown hyper-parameter 'alpah' of method 'mlb': tune one of its settings "
        "(unimodal_weight, alpha, beta_max, score, score_ema, placement) or a config path "
        "such as train.lr"
    )
    assert not (tmp_path / "tune").exists()
