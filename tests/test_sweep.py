"""mlb_jax.sweep: seeds vmapped in one program equal separate runs; kill and resume; refusals."""

import json
import pathlib

import jax
import numpy as np
import pytest
from test_train import assert_same_results_and_final_params, load_tiny, read_history, run_cli

from mlb_jax import sweep, trainer
from mlb_jax.checkpointing import RunCheckpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Members with their own settings (--set) are compared in test_sweep_settings.py.
SEEDS = {"mlb": [0, 1], "mslr": [0, 1]}  # mslr: per-epoch method state
PROGRAM = {"mlb": "vmap", "mslr": "unrolled"}  # both forms tested


@pytest.fixture(scope="module", params=list(SEEDS))
def swept(request, tmp_path_factory, data_cache):
    """(config, sweep dir, sweep results, {seed: (single dir, single results)}) of a method."""
    method = request.param
    config = load_tiny(data_cache)
    config.method.name = method
    # Training amplifies float reassociation: at the tiny config's lr 0.05 a 1e-7 difference
    # grows to 1e-3 in 4 steps; at 0.005 it stays below 1e-2 over both epochs.
    config.train.lr = 0.005
    root = tmp_path_factory.mktemp(f"sweep_{method}")
    results = sweep.sweep_and_evaluate(config, root / "sweep", SEEDS[method], PROGRAM[method])
    singles = {}
    for seed in SEEDS[method]:
        cfg = config.copy_and_resolve_references()
        cfg.seed = seed
        singles[seed] = (
            root / f"single_{seed}",
            trainer.train_and_evaluate(cfg, root / f"single_{seed}"),
        )
    return config, root / "sweep", results, singles


def assert_member_equals_single(member_dir, res, single_dir, single, seed):
    """A sweep member's results and history equal its single run's, to reassociation."""
    assert json.loads((member_dir / trainer.RESULTS_FILE).read_text()) == res
    assert json.loads((member_dir / trainer.CONFIG_FILE).read_text())["seed"] == seed
    assert (res["seed"], res["steps"], res["best_epoch"]) == (
        seed,
        single["steps"],
        single["best_epoch"],
    )
    mine, theirs = read_history(member_dir), read_history(single_dir)
    assert [s["step"] for s in mine["steps"]] == [s["step"] for s in theirs["steps"]]
    # Same batches, same initialisation: the first steps agree to reassociation (a wrong
    # data order or seed is off by percent from step 1); the rest within the growth.
    np.testing.assert_allclose(
        [s["train/loss"] for s in mine["steps"][:3]],
        [s["train/loss"] for s in theirs["steps"][:3]],
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        [s["train/loss"] for s in mine["steps"]],
        [s["train/loss"] for s in theirs["steps"]],
        rtol=1e-2,
    )
    np.testing.assert_allclose(
        [e["train/loss"] for e in mine["epochs"]],
        [e["train/loss"] for e in theirs["epochs"]],
        rtol=1e-2,
    )
    for key in ("accuracy", "val_accuracy"):  # at most one of 32 or 40 examples apart
        assert abs(res[key] - single[key]) <= 1 / 32 + 1e-9, (seed, key)
    return mine["steps"][0]["train/loss"]


def test_each_member_equals_its_single_run(swept):
    config, sweep_dir, results, singles = swept
    losses = {}
    for seed, res in zip(SEEDS[config.method.name], results, strict=True):
        single_dir, single = singles[seed]
        losses[seed] = assert_member_equals_single(
            sweep_dir / f"seed_{seed}", res, single_dir, single, seed
        )
    assert len(set(losses.values())) == len(losses)  # every member has its own seed


@pytest.mark.parametrize("swept", ["mlb"], indirect=True)  # one method is enough for resume
def test_a_killed_sweep_resumes_to_the_uninterrupted_result(swept, tmp_path, monkeypatch):
    config, sweep_dir, results, _ = swept
    seeds = SEEDS["mlb"]
    saves = []
    real_save = RunCheckpoints.save

    def killed_save(self, step, state, meta):
        saves.append(step)
        if len(saves) == len(seeds) + 2:  # epoch 2: seed 0 saved, killed while saving seed 1
            raise KeyboardInterrupt
        real_save(self, step, state, meta)

    monkeypatch.setattr(RunCheckpoints, "save", killed_save)
    with pytest.raises(KeyboardInterrupt):
        sweep.sweep_and_evaluate(config, tmp_path, seeds, "vmap")
    monkeypatch.setattr(RunCheckpoints, "save", real_save)
    latest = []
    for seed in seeds:
        ckpts = RunCheckpoints(tmp_path / f"seed_{seed}")
        latest.append(ckpts.latest_step())
        ckpts.close()
    assert latest == [16, 8]  # one member an epoch ahead of the other
    resumed = sweep.sweep_and_evaluate(config, tmp_path, seeds, "vmap")
    for seed, res, ref in zip(seeds, resumed, results, strict=True):
        assert_same_results_and_final_params(
            sweep_dir / f"seed_{seed}", ref, tmp_path / f"seed_{seed}", res, config
        )
    # Finished members are read back, not trained again.
    assert sweep.sweep_and_evaluate(config, tmp_path, seeds) == resumed


@pytest.mark.parametrize("swept", ["mlb"], indirect=True)
def test_members_split_over_device_groups_equal_the_replicated_sweep(swept, tmp_path, monkeypatch):
    # Two members over a ('runs', 'data') mesh of 2 x 4 devices: each group trains one member
    # on its batch sharded over 4 devices; the results are the replicated sweep's.
    config, sweep_dir, results, _ = swept
    specs = []
    real_stack = sweep.stack

    def spy(states, mesh):
        stacked = real_stack(states, mesh)
        leaf = jax.tree.leaves(stacked.params)[0]
        specs.append((dict(mesh.shape), leaf.sharding.spec, len(leaf.addressable_shards)))
        return stacked

    monkeypatch.setattr(sweep, "stack", spy)
    seeds = SEEDS["mlb"]
    split = sweep.sweep_and_evaluate(config, tmp_path, seeds, "vmap", run_shards=2)
    assert specs[0] == ({"runs": 2, "data": 4}, jax.P("runs"), 8)
    for seed, res, ref in zip(seeds, split, results, strict=True):
        assert_member_equals_single(
            tmp_path / f"seed_{seed}", res, sweep_dir / f"seed_{seed}", ref, seed
        )
    with pytest.raises(ValueError, match=r"--run_shards=3 must divide the members \(2\)"):
        sweep.sweep_and_evaluate(config, tmp_path / "bad", [5, 6], "vmap", run_shards=3)
    with pytest.raises(ValueError, match=r"--run_shards=2 splits the run axis of the vmapped"):
        sweep.sweep_and_evaluate(config, tmp_path / "bad", [5, 6], "unrolled", run_shards=2)
    assert not (tmp_path / "bad").exists()


def test_repeated_seeds_and_unswept_methods_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"--seeds=\[0, 0\]: a sweep needs distinct seeds"):
        sweep.sweep_and_evaluate(load_tiny(tmp_path), tmp_path, [0, 0])
    proc = run_cli(
        "--config=configs/tiny.py",
        f"--workdir={tmp_path / 'sw'}",
        "--methods=mlb,ensemble",
        module="mlb_jax.sweep",
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --methods=ensemble: unimodal rows and the methods built on them are not swept; "
        "run them with python -m mlb_jax.compare"
    )
    assert not (tmp_path / "sw").exists()


def test_auto_program_is_unrolled_on_the_cpu_and_unknown_ones_are_refused():
    assert sweep.resolve_program("auto") == "unrolled"  # the tests run on the CPU backend
    assert sweep.resolve_program("vmap") == "vmap"
    with pytest.raises(ValueError, match=r"unknown sweep program 'pmap': choose auto, vmap"):
        sweep.resolve_program("pmap")


def test_stack_and_unstack_are_inverse():
    states = [{"w": np.full((2,), float(i)), "k": jax.random.key(i)} for i in range(3)]
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    stacked = sweep.stack(states, mesh)
    assert stacked["w"].shape == (3, 2)
    back = sweep.unstack(stacked, 3)
    for a, b in zip(states, back, strict=True):
        np.testing.assert_array_equal(a["w"], b["w"])
        assert jax.random.key_data(a["k"]).tolist() == jax.random.key_data(b["k"]).tolist()
