"""The paper's reference rows: unimodal runs, their ensemble, and pretrained fusion.

One compare call trains the unimodal runs and everything built on them on the tiny synthetic
data; the tests check what each row must be, against the unimodal runs' own checkpoints.
"""

import json

import jax
import numpy as np
import pytest
from test_train import load_tiny

from mlb_jax import compare, evaluate, finished_runs, trainer
from mlb_jax.balancing.masks import path_string
from mlb_jax.ensemble import combine_logits

MODALITIES = ["audio", "video"]


def _tiny(data_cache):
    config = load_tiny(data_cache)
    config.train.epochs = 1
    config.train.num_devices = 1
    config.train.batch_size = 32
    config.evaluate.enabled = True  # the agreement test reads the rows' evaluations
    return config


@pytest.fixture(scope="module")
def rows(tmp_path_factory, data_cache):
    """compare.run_all of ensemble, pre_frozen and pre_finetuned (unimodal runs added)."""
    workdir = tmp_path_factory.mktemp("rows")
    config = _tiny(data_cache)
    results = compare.run_all(config, workdir, ["ensemble", "pre_frozen", "pre_finetuned"], [0])
    return workdir, results


def _flat(workdir, part: str = "params") -> dict[str, np.ndarray]:
    """The best checkpoint's params (or rest) of a finished run, by path.

    The runs here train one epoch, so their best checkpoint is also their final state.
    """
    config, resolved = finished_runs.run_config(workdir, "test")
    k = resolved["data"]["num_classes"]
    _, _, state = finished_runs.restore_best(config, resolved, workdir, k)
    return _by_path(getattr(state, part))


def _encoder(workdir, modality: str) -> dict[str, np.ndarray]:
    """The encoder and unimodal head of the compare's unimodal run of `modality`."""
    params = _flat(workdir / f"unimodal_{modality}" / "seed_0")
    own = (f"encoders/{modality}/", f"heads/{modality}/")
    return {p: v for p, v in params.items() if p.startswith(own)}


def _by_path(tree) -> dict[str, np.ndarray]:
    return {path_string(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_plan_puts_unimodal_runs_first_and_adds_them_when_needed():
    assert compare.plan_rows(["mlb", "ensemble"], MODALITIES) == [
        ("unimodal_audio", "unimodal", "audio"),
        ("unimodal_video", "unimodal", "video"),
        ("mlb", "mlb", ""),
        ("ensemble", "ensemble", ""),
    ]
    assert compare.plan_rows(["joint", "mlb"], MODALITIES) == [
        ("joint", "joint", ""),
        ("mlb", "mlb", ""),
    ]


def test_standardised_sum_by_hand():
    audio = np.array([[1.0, 2.0], [3.0, 4.0]])  # mean 2.5, unbiased std sqrt(5/3)
    video = np.array([[0.0, 0.0], [0.0, 8.0]])  # mean 2, unbiased std 4
    expected = (audio - 2.5) / np.sqrt(5 / 3) + (video - 2.0) / 4.0
    np.testing.assert_allclose(
        combine_logits({"audio": audio, "video": video}, "none"), audio + video
    )
    np.testing.assert_allclose(
        combine_logits({"audio": audio, "video": video}, "standardization"), expected
    )


def test_unimodal_runs_build_and_read_one_modality(rows):
    workdir, results = rows
    for m in MODALITIES:
        (res,) = results[f"unimodal_{m}"]
        assert res["method"] == "unimodal"
        # The trained classifier is the modality's: its accuracy is the run's.
        assert res["unimodal_accuracy"] == {m: res["accuracy"]}
        doc = json.loads((workdir / f"unimodal_{m}" / "seed_0" / "config.json").read_text())
        assert list(doc["resolved"]["data"]["modalities"]) == [m]
        params = _flat(workdir / f"unimodal_{m}" / "seed_0", "params")
        other = "video" if m == "audio" else "audio"
        assert any(p.startswith(f"encoders/{m}/") for p in params)
        assert not any(other in p for p in params)


def test_ensemble_combines_the_members_best_checkpoints(rows):
    _, results = rows
    (res,) = results["ensemble"]
    assert (res["steps"], res["epochs"], res["best_epoch"]) == (0, 0, None)
    for m in MODALITIES:
        # Each member's test accuracy is the same checkpoint on the same split.
        assert res["unimodal_accuracy"][m] == results[f"unimodal_{m}"][0]["accuracy"]


def test_pre_frozen_keeps_encoders_and_trains_fusion(rows, data_cache):
    workdir, results = rows
    assert results["pre_frozen"][0]["steps"] > 0
    final = _flat(workdir / "pre_frozen" / "seed_0")
    for m in MODALITIES:
        for path, value in _encoder(workdir, m).items():
            np.testing.assert_array_equal(final[path], value, err_msg=path)
    config = _tiny(data_cache)  # the same seed: the same initial fusion weights
    meta = trainer.load_dataset(config)
    shapes = {m: s.shape for m, s in meta.modalities.items()}
    fresh = _by_path(trainer.create_train_state(config, meta.num_classes, shapes)[3].params)
    trained = [
        p for p in final if p.startswith("fusion/") and not np.array_equal(final[p], fresh[p])
    ]
    assert trained  # the fusion classifier learned


def test_pre_finetuned_starts_from_the_encoders_and_trains_them(rows, data_cache):
    workdir, _ = rows
    config = _tiny(data_cache)
    config.method.name = "pre_finetuned"
    config.method.pretrained.workdirs = {
        m: str(workdir / f"unimodal_{m}" / "seed_0") for m in MODALITIES
    }
    _, start = trainer.setup(config, trainer.load_dataset(config))
    start = _by_path(start.params)
    final = _flat(workdir / "pre_finetuned" / "seed_0")
    for m in MODALITIES:
        pretrained = _encoder(workdir, m)
        for path, value in pretrained.items():
            np.testing.assert_array_equal(start[path], value, err_msg=path)
        assert any(not np.array_equal(final[p], v) for p, v in pretrained.items())


def test_missing_or_wrong_member_runs_are_named(rows, data_cache, tmp_path):
    workdir, _ = rows
    config = _tiny(data_cache)
    config.method.name = "ensemble"
    config.method.ensemble.workdirs = {"audio": str(tmp_path / "nothing"), "video": "x"}
    with pytest.raises(FileNotFoundError, match=r"config.method.ensemble.workdirs.audio="):
        trainer.train_and_evaluate(config, tmp_path / "run")
    config.method.ensemble.workdirs = {
        "audio": str(workdir / "unimodal_video" / "seed_0"),
        "video": str(workdir / "unimodal_video" / "seed_0"),
    }
    with pytest.raises(ValueError, match=r"not a 'unimodal' run of 'audio'"):
        trainer.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unimodal_needs_a_known_modality(data_cache):
    config = _tiny(data_cache)
    config.method.name = "unimodal"
    config.method.modality = "depth"
    with pytest.raises(ValueError, match=r"config.method.modality='depth' is not one of"):
        trainer.setup(config, trainer.load_dataset(config))
    config.method.name = "joint"
    with pytest.raises(ValueError, match=r"config.method.modality='depth' has no effect"):
        trainer.validate_config(config)


def test_agreement_reference_is_the_comparisons_unimodal_runs(rows):
    workdir, results = rows
    for row in ("pre_frozen", "pre_finetuned"):
        ev = json.loads((workdir / row / "seed_0" / "evaluation.json").read_text())
        agreement = ev["agreement"]
        assert agreement["reference"] == "reference unimodal runs"
        assert agreement["workdirs"] == {
            m: str(workdir / f"unimodal_{m}" / "seed_0") for m in MODALITIES
        }
        # The reference models are the unimodal runs' best checkpoints, as their results say.
        for m in MODALITIES:
            assert agreement["reference_accuracy"][m] == results[f"unimodal_{m}"][0]["accuracy"]
        assert sum(p["count"] for p in agreement["patterns"]) == ev["num_examples"]
    # A unimodal run has one head and nothing to attribute across modalities.
    ev = json.loads((workdir / "unimodal_audio" / "seed_0" / "evaluation.json").read_text())
    assert list(ev["heads"]) == ["fused"] and "subsets" not in ev and "agreement" not in ev
    assert list(ev["robustness"]["accuracy"]) == ["audio"]


def test_ensemble_is_evaluated_from_its_members(rows):
    workdir, results = rows
    run_dir = workdir / "ensemble" / "seed_0"
    ev = json.loads((run_dir / "evaluation.json").read_text())
    uni = {m: results[f"unimodal_{m}"][0]["accuracy"] for m in MODALITIES}
    assert ev["heads"]["fused"]["accuracy"] == results["ensemble"][0]["accuracy"]
    assert {m: ev["heads"][m]["accuracy"] for m in MODALITIES} == uni
    # A subset is the ensemble of its members alone: one standardised member predicts as
    # that member does; the empty sum is all zeros, whose argmax is class 0.
    acc = ev["subsets"]["accuracy"]
    assert ev["subsets"]["absent"] == "left_out"
    assert (acc["audio"], acc["video"]) == (uni["audio"], uni["video"])
    assert acc["audio+video"] == results["ensemble"][0]["accuracy"]
    support = ev["heads"]["fused"]["per_class"]["support"]
    assert acc["none"] == pytest.approx(support[0] / ev["num_examples"])
    v_none, v_a, v_v, v_av = acc["none"], acc["audio"], acc["video"], acc["audio+video"]
    shapley = ev["subsets"]["shapley"]
    assert shapley["audio"] == pytest.approx(0.5 * (v_a - v_none) + 0.5 * (v_av - v_v))
    assert shapley["video"] == pytest.approx(0.5 * (v_v - v_none) + 0.5 * (v_av - v_a))
    assert ev["agreement"]["reference"] == "the ensemble's member runs"
    assert ev["agreement"]["reference_accuracy"] == uni
    assert "robustness" not in ev
    assert "its member left out of the ensemble" in (run_dir / "evaluation.md").read_text()
    # The command line's path restores the members again and writes the same evaluation.
    again = evaluate.evaluate_workdir(run_dir)
    assert {k: v for k, v in again.items() if k != "seconds"} == {
        k: v for k, v in ev.items() if k != "seconds"
    }
    with pytest.raises(evaluate.EvaluateError, match=r"use --checkpoint=best"):
        evaluate.evaluate_workdir(run_dir, checkpoint="latest")
