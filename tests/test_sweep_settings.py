"""mlb_jax.sweep: members with their own float settings (--set) in both programs; refusals."""

import json

import pytest
from test_sweep import assert_member_equals_single
from test_train import load_tiny, read_history

from mlb_jax import sweep, trainer
from mlb_jax.methods import make_method


def test_members_with_their_own_floats_equal_single_runs_in_both_programs(tmp_path, data_cache):
    # The learning rate (a scale of the update), the weight decay (an argument of the coupled
    # decay) and MLB's alpha and beta_max (traced settings of the step) are each member's own.
    # Unrolled, each member's optimiser and method hold their own values and its run equals
    # its single run; vmapped, the values reach the one shared step per member and its members
    # equal the unrolled ones. tests/test_traced_settings.py checks every method's traced
    # fields step by step. The loss of step 2 already depends on the learning rate: a member
    # running another member's rate fails the 1e-5 check of the first logged steps.
    config = load_tiny(data_cache)
    members = [
        # Nested names, as `sweep.plan_members` makes for --set values ("lr=0.005/seed_3").
        ("a/seed_3", 3, {"train.lr": 0.005, "train.weight_decay": 1e-4, "method.alpha": 0.5}),
        ("b/seed_3", 3, {"train.lr": 0.004, "train.weight_decay": 5e-3, "method.alpha": 0.25}),
    ]
    for (_, _, setting), beta_max in zip(members, (4.0, 2.0), strict=True):
        setting["method.beta_max"] = beta_max
    varies = {"train.lr", "train.weight_decay", "method.alpha", "method.beta_max"}
    mlb = make_method(config.method)
    assert sweep.resolve_program("vmap", varies, traced=sweep.traced_paths(mlb)) == "vmap"
    results = {
        program: sweep.train_members(config, tmp_path / program, members, program)
        for program in ("unrolled", "vmap")
    }
    second_losses = []
    for i, (name, seed, setting) in enumerate(members):
        cfg = config.copy_and_resolve_references()
        cfg.seed = seed
        cfg.train.lr = setting["train.lr"]
        cfg.train.weight_decay = setting["train.weight_decay"]
        cfg.method.alpha = setting["method.alpha"]
        cfg.method.beta_max = setting["method.beta_max"]
        single_dir = tmp_path / name.replace("/", "_")
        single = trainer.train_and_evaluate(cfg, single_dir)
        unrolled_dir = tmp_path / "unrolled" / name
        assert_member_equals_single(unrolled_dir, results["unrolled"][i], single_dir, single, seed)
        assert_member_equals_single(
            tmp_path / "vmap" / name,
            results["vmap"][i],
            unrolled_dir,
            results["unrolled"][i],
            seed,
        )
        for program in ("unrolled", "vmap"):
            stored = json.loads((tmp_path / program / name / trainer.CONFIG_FILE).read_text())
            assert stored["train"]["lr"] == setting["train.lr"]
            assert stored["method"]["beta_max"] == setting["method.beta_max"]
        second_losses.append(read_history(tmp_path / "vmap" / name)["steps"][1]["train/loss"])
    # Same seed and data: only the settings tell the members apart.
    assert second_losses[0] != second_losses[1]
    k = [read_history(tmp_path / "vmap" / n)["steps"][1]["train/k/video"] for n, _, _ in members]
    assert k[0] != pytest.approx(k[1], rel=1e-3)


def test_set_values_are_checked_before_anything_trains(tmp_path):
    config = load_tiny(tmp_path)
    assert sweep.parse_set(["method.alpha=0.5,2", "train.lr=1e-3"]) == {
        "method.alpha": [0.5, 2.0],
        "train.lr": [0.001],
    }
    with pytest.raises(ValueError, match=r"--set='train.lr=a,b': write CONFIG.PATH=V1,V2"):
        sweep.parse_set(["train.lr=a,b"])
    with pytest.raises(ValueError, match=r"config.train.batch_size is 16, not a float"):
        sweep.check_sets(config, {"train.batch_size": [8.0, 16.0]})
    with pytest.raises(ValueError, match=r"the config has no field config.train.lrr"):
        sweep.check_sets(config, {"train.lrr": [0.1]})
    message = r"members may differ by seed and .*train.weight_decay only, not train.momentum: use"
    with pytest.raises(ValueError, match=message):
        sweep.resolve_program("vmap", varies={"train.lr", "train.momentum"})
    assert sweep.resolve_program("vmap", varies={"train.lr"}) == "vmap"
    with pytest.raises(ValueError, match="not method.alpha: use --program=unrolled"):
        sweep.resolve_program("vmap", varies={"method.alpha"})  # no method's traced fields
    with pytest.raises(ValueError, match="weight decay|weight_decay: members with 0"):
        members = [("a", 0, {"train.weight_decay": 0.0}), ("b", 0, {"train.weight_decay": 1e-4})]
        sweep.train_members(config, tmp_path / "wd", members, "vmap")
    assert not (tmp_path / "wd").exists()
    assert sweep.resolve_program("auto", varies={"method.alpha"}) == "unrolled"
    assert [m[0] for m in sweep.plan_members([0, 1], {"train.lr": [0.1, 0.2]})] == [
        "lr=0.1/seed_0",
        "lr=0.1/seed_1",
        "lr=0.2/seed_0",
        "lr=0.2/seed_1",
    ]
