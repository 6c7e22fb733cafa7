import json
import pathlib
import subprocess
import sys

import pytest

from mlb_jax import compare
from mlb_jax.methods import METHODS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def fake_result(acc, audio, video, probe_video, ece):
    return {
        "accuracy": acc,
        "unimodal_accuracy": {"audio": audio, "video": video},
        "probe_accuracy": {"audio": 0.5, "video": probe_video},
        "ece": ece,
    }


def test_finished_runs_are_reused_and_summarised(tmp_path):
    runs = {
        ("joint", 0): fake_result(0.50, 0.10, 0.12, 0.20, 0.10),
        ("joint", 1): fake_result(0.54, 0.12, 0.12, 0.30, 0.20),
        ("mlb", 0): fake_result(0.90, 0.50, 0.80, 0.85, 0.05),
        ("mlb", 1): fake_result(1.00, 0.50, 0.90, 0.95, 0.07),
    }
    for (method, seed), res in runs.items():
        run_dir = tmp_path / method / f"seed_{seed}"
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps(res))
    # No training happens: every (method, seed) already has results.json.
    results = compare.run_all(None, tmp_path, ["joint", "mlb"], [0, 1])
    table, columns = compare.summarise(results)
    assert columns == [
        "fused",
        "audio (unimodal head)",
        "video (unimodal head)",
        "audio (probe)",
        "video (probe)",
        "ECE",
    ]
    assert table["joint"]["fused"] == pytest.approx((0.52, 0.02))
    assert table["mlb"]["video (probe)"] == pytest.approx((0.90, 0.05))
    text = compare.markdown_table(table, columns, [0, 1])
    assert (
        "| mlb | 95.0 ± 5.0 | 50.0 ± 0.0 | 85.0 ± 5.0 | 50.0 ± 0.0 | 90.0 ± 5.0 | 0.060 ± 0.010 |"
        in text
    )
    assert "seeds [0, 1]" in text


def test_methods_all_expands_to_the_registry_and_unknown_names_fail_first():
    assert compare.expand_methods(["all"]) == list(METHODS)
    assert compare.expand_methods(["mlb", "all"])[:2] == ["mlb", "joint"]
    assert len(compare.expand_methods(["mlb", "all"])) == len(METHODS)
    with pytest.raises(ValueError, match=r"unknown method 'mlbb' in --methods"):
        compare.expand_methods(["joint", "mlbb"])


SEEDS_FIX = "seeds are integers >= 0, comma-separated: e.g. --seeds=0,1,2"


@pytest.mark.parametrize(
    ("flag", "line"),
    [
        ("--seeds=a", f"error: --seeds=a: {SEEDS_FIX}"),
        ("--seeds=0,-1", f"error: --seeds=0,-1: {SEEDS_FIX}"),
    ],
)
def test_cli_mistakes_are_one_line_and_write_nothing(flag, line, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlb_jax.compare",
            "--config=configs/synthetic_av.py",
            f"--workdir={tmp_path / 'cmp'}",
            flag,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [line]  # exactly one line, no traceback
    assert not (tmp_path / "cmp").exists()


def fake_evaluation(macro_f1, shapley_audio, shapley_video, noise):
    return {
        "heads": {"fused": {"macro_f1": macro_f1}},
        "subsets": {
            "accuracy": {"none": 0.1, "audio": 0.5, "video": 0.6, "audio+video": 0.9},
            "shapley": {"audio": shapley_audio, "video": shapley_video},
            "imbalance_index": abs(shapley_audio - shapley_video) / (shapley_audio + shapley_video),
        },
        "robustness": {
            "levels": [0.0, 1.0],
            "accuracy": {"audio": [0.9, noise], "video": [0.9, 0.5]},
        },
        "agreement": {
            "patterns": [
                {"pattern": "both wrong", "fused_accuracy": 0.2},
                {"pattern": "both right", "fused_accuracy": None},
            ]
        },
    }


def test_evaluations_add_macro_f1_shapley_and_imbalance_columns(tmp_path):
    runs = {
        ("mlb", 0): (fake_result(0.90, 0.5, 0.8, 0.85, 0.05), fake_evaluation(0.8, 0.4, 0.4, 0.7)),
        ("mlb", 1): (fake_result(1.00, 0.5, 0.9, 0.95, 0.07), fake_evaluation(0.9, 0.2, 0.6, 0.9)),
    }
    for (method, seed), (res, ev) in runs.items():
        run_dir = tmp_path / method / f"seed_{seed}"
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps(res))
        (run_dir / "evaluation.json").write_text(json.dumps(ev))
    results = compare.run_all(None, tmp_path, ["mlb"], [0, 1])
    table, columns = compare.summarise(results)
    assert columns[:2] == ["fused", "macro-F1"]
    assert columns[-3:] == ["Shapley audio", "Shapley video", "imbalance"]
    assert table["mlb"]["macro-F1"] == pytest.approx((0.85, 0.05))
    # Imbalance 0 (equal) and 0.5: mean 0.25 +- 0.25.
    assert table["mlb"]["imbalance"] == pytest.approx((0.25, 0.25))
    text = compare.markdown_table(table, columns, [0, 1])
    assert "| +30.0 ± 10.0 | +50.0 ± 10.0 | 0.250 ± 0.250 |" in text
    extra = compare.evaluation_tables(results)
    assert "| mlb | 10.0 ± 0.0 | 50.0 ± 0.0 | 60.0 ± 0.0 | 90.0 ± 0.0 |" in extra
    assert "audio σ=1" in extra and "| mlb | 90.0 ± 0.0 | 80.0 ± 10.0 |" in extra
    assert "| mlb | 20.0 ± 0.0 | — |" in extra  # an empty pattern has no accuracy
    compare.plot_comparison_figures(results, table, columns, tmp_path, "synthetic", 2)
    for name in ("comparison_ece.png", "comparison_shapley.png", "comparison_robustness.png"):
        assert (tmp_path / name).stat().st_size > 0
