import json

import pytest

from mlb_jax import compare


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
    from mlb_jax.methods import METHODS

    assert compare.expand_methods(["all"]) == list(METHODS)
    assert compare.expand_methods(["mlb", "all"])[:2] == ["mlb", "joint"]
    assert len(compare.expand_methods(["mlb", "all"])) == len(METHODS)
    with pytest.raises(ValueError, match=r"unknown method 'mlbb' in --methods"):
        compare.expand_methods(["joint", "mlbb"])
