"""Reference recipes: every real config x method resolves to the reference's values.

EXPECTED is written by hand from kkontras/MLB@68ad48d (run.sh and the default configs, line
numbers in `LR_LINE`), not imported from mlb_jax/recipes.py. No model is built here.
"""

import pathlib

import pytest
from absl import flags
from ml_collections import config_flags
from test_real_configs import load_config

from mlb_jax import recipes, trainer
from mlb_jax.config_base import synthetic_av
from mlb_jax.methods import (
    AGM,
    BUILT_ON_UNIMODAL,
    METHODS,
    MLB,
    MSLR,
    OGM,
    PMR,
    MMCosine,
    MMPareto,
    ReconBoost,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = {"cremad": "cremad_resnet", "ave": "ave_resnet", "ucf51": "ucf51_resnet"}

# Per dataset: batch, max epochs, patience, warm-up steps, weight decay (default configs).
COMMON = {
    "cremad": {
        "train.batch_size": 32,
        "train.epochs": 1500,
        "train.early_stopping_patience": 100,
        "train.warmup_steps": 780,
        "train.weight_decay": 1e-4,
    },
    "ave": {
        "train.batch_size": 32,
        "train.epochs": 1500,
        "train.early_stopping_patience": 150,
        "train.warmup_steps": 780,
        "train.weight_decay": 1e-4,
    },
    "ucf51": {
        "train.batch_size": 32,
        "train.epochs": 1000,
        "train.early_stopping_patience": 100,
        "train.warmup_steps": 780,
        "train.weight_decay": 1e-4,
    },
}


def ogm(alpha, last):
    return {
        "method.ogm.alpha": alpha,
        "method.ogm.scope": "encoder",
        "method.ogm.start_epoch": 0,
        "method.ogm.end_epoch": last,
    }


def mslr(keep, audio, video):
    return {
        "method.mslr.keep_memory": keep,
        "method.mslr.init_lr.audio": audio,
        "method.mslr.init_lr.video": video,
    }


def reconboost(w1, stages):
    return {
        "method.reconboost.alpha": 0.5,
        "method.reconboost.w1": w1,
        "method.reconboost.w2": 1.0,
        "method.reconboost.boost_epochs": stages,
        "method.reconboost.ensemble_epochs": stages,
    }


EXPECTED = {
    "cremad": {
        "unimodal": {"train.lr": 1e-3},
        "ensemble": {"train.lr": 1e-3},
        "pre_frozen": {"train.lr": 1e-3},
        "pre_finetuned": {"train.lr": 1e-3},
        "joint": {"train.lr": 1e-3},
        "multiloss": {"train.lr": 1e-3},
        "agm": {"train.lr": 1e-3, "method.agm.alpha": 3.0},
        "ogm": {"train.lr": 1e-3, **ogm(1.0, 1499)},
        "ogm_ge": {"train.lr": 1e-3, **ogm(1.0, 1499)},
        "mslr": {"train.lr": 1e-3, **mslr(20, 0.7, 1.3)},
        "mmcosine": {"train.lr": 1e-3, "method.mmcosine.scaling": 10.0},
        "mmpareto": {"train.lr": 1e-4, "method.mmpareto.alpha": 1.5},
        "reconboost": {"train.lr": 1e-4, **reconboost(3.0, 1)},
        "mlb": {"train.lr": 1e-3, "method.alpha": 0.5, "method.beta_max": 10.0},
        "pmr": {"train.lr": 1e-3, "method.pmr.alpha": 1.0},
    },
    "ave": {
        "unimodal": {"train.lr": 1e-3, "train.epochs": 1000, "train.early_stopping_patience": 100},
        "ensemble": {"train.lr": 1e-3},
        "pre_frozen": {"train.lr": 1e-3},
        "pre_finetuned": {"train.lr": 1e-3},
        "joint": {"train.lr": 1e-3},
        "multiloss": {"train.lr": 1e-3},
        "agm": {"train.lr": 1e-4, "method.agm.alpha": 3.0},
        "ogm": {"train.lr": 1e-3, **ogm(0.6, 1499)},
        "ogm_ge": {"train.lr": 1e-3, **ogm(0.6, 1499)},
        "mslr": {"train.lr": 1e-3, **mslr(10, 0.7, 1.3)},
        "mmcosine": {"train.lr": 1e-3, "method.mmcosine.scaling": 10.0},
        "mmpareto": {"train.lr": 1e-3, "method.mmpareto.alpha": 0.5},
        "reconboost": {"train.lr": 1e-3, **reconboost(5.0, 1)},
        "mlb": {"train.lr": 1e-3, "method.alpha": 2.0, "method.beta_max": 1.0},
        "pmr": {"train.lr": 1e-3, "method.pmr.alpha": 1.0},
    },
    "ucf51": {
        "unimodal": {"train.lr": 1e-3},
        "ensemble": {"train.lr": 1e-3},
        "pre_frozen": {"train.lr": 1e-4},
        "pre_finetuned": {"train.lr": 1e-4},
        "joint": {"train.lr": 1e-3},
        "multiloss": {"train.lr": 1e-3},
        "agm": {"train.lr": 1e-3, "method.agm.alpha": 2.0},
        "ogm": {"train.lr": 1e-3, **ogm(0.8, 999)},
        "ogm_ge": {"train.lr": 1e-3, **ogm(0.8, 999)},
        "mslr": {"train.lr": 1e-3, **mslr(5, 1.0, 1.0)},
        "mmcosine": {"train.lr": 1e-3, "method.mmcosine.scaling": 10.0},
        "mmpareto": {"train.lr": 1e-3, "method.mmpareto.alpha": 3.0},
        "reconboost": {"train.lr": 1e-3, **reconboost(5.0, 4)},
        "mlb": {"train.lr": 1e-3, "method.alpha": 2.0, "method.beta_max": 0.5},
        "pmr": {"train.lr": 1e-3, "method.pmr.alpha": 1.0},
    },
}
# The run.sh line each method's LR comes from (None: not from a run.sh line).
LR_LINE = {
    "cremad": {
        "unimodal": 6,
        "joint": 8,
        "multiloss": 9,
        "agm": 10,
        "ogm": 11,
        "ogm_ge": 11,
        "mslr": 12,
        "mmcosine": 13,
        "mmpareto": 14,
        "reconboost": 15,
        "mlb": 16,
    },
    "ave": {
        "joint": 35,
        "multiloss": 36,
        "pre_frozen": 37,
        "pre_finetuned": 38,
        "mslr": 39,
        "mmcosine": 40,
        "ogm": 41,
        "ogm_ge": 41,
        "agm": 42,
        "mmpareto": 43,
        "reconboost": 44,
        "mlb": 45,
    },
    "ucf51": {
        "ensemble": 50,
        "joint": 51,
        "multiloss": 52,
        "pre_frozen": 53,
        "pre_finetuned": 54,
        "mslr": 55,
        "mmcosine": 56,
        "ogm": 57,
        "ogm_ge": 57,
        "agm": 58,
        "reconboost": 59,
        "mmpareto": 60,
        "mlb": 61,
    },
}
# The dataclass defaults a field takes when the method does not read it.
DEFAULTS = {
    "method.alpha": MLB.alpha,
    "method.beta_max": MLB.beta_max,
    "method.agm.alpha": AGM.alpha,
    "method.ogm.alpha": OGM.alpha,
    "method.ogm.scope": OGM.scope,
    "method.ogm.start_epoch": OGM.start_epoch,
    "method.ogm.end_epoch": OGM.end_epoch,
    "method.mslr.keep_memory": MSLR.keep_memory,
    "method.mslr.init_lr.audio": 1.0,
    "method.mslr.init_lr.video": 1.0,
    "method.mmcosine.scaling": MMCosine.scaling,
    "method.mmpareto.alpha": MMPareto.alpha,
    "method.reconboost.alpha": ReconBoost.alpha,
    "method.reconboost.w1": ReconBoost.w1,
    "method.reconboost.w2": ReconBoost.w2,
    "method.reconboost.boost_epochs": ReconBoost.boost_epochs,
    "method.reconboost.ensemble_epochs": ReconBoost.ensemble_epochs,
    "method.pmr.alpha": PMR.alpha,
}


def value(config, path):
    node = config
    for key in path.split("."):
        node = node[key]
    return node


def test_every_method_has_a_recipe_on_every_dataset():
    for dataset in CONFIGS:
        assert set(EXPECTED[dataset]) == set(METHODS)
        assert set(recipes.RECIPES[dataset]) == set(EXPECTED[dataset])


@pytest.mark.parametrize("dataset", CONFIGS)
def test_every_config_and_method_resolves_to_the_reference(dataset):
    config = load_config(CONFIGS[dataset])
    assert config.recipe == dataset
    for method, expected in EXPECTED[dataset].items():
        config.method.name = method
        resolved, table = recipes.resolve(config)
        want = {**COMMON[dataset], **expected}
        for path in recipes.RECIPE_FIELDS:
            got = value(resolved, path)
            if path in want:
                assert got == want[path], (dataset, method, path)
            else:
                assert got == DEFAULTS[path], (dataset, method, path)
                assert table[path]["source"].startswith(f"not read by {method}")
        line = LR_LINE[dataset].get(method)
        if line is not None:
            assert table["train.lr"]["source"].startswith(f"run.sh:{line}"), (dataset, method)
        assert table["train.epochs"]["source"].endswith((".json:36", ".json:32", ".json:40")), (
            dataset,
            method,
        )
        # What the reference rows need besides the recipe: a modality, the unimodal runs.
        if method == "unimodal":
            resolved.method.modality = "audio"
        if method in BUILT_ON_UNIMODAL:
            resolved.method[BUILT_ON_UNIMODAL[method]].workdirs = {"audio": "a", "video": "v"}
        trainer.validate_config(resolved)
        # The input config is left as it was: its recipe fields are still placeholders.
        assert config.train.lr is None and config.method.alpha is None


def test_mlb_sources_are_its_run_sh_lines():
    for dataset, line in (("cremad", 16), ("ave", 45), ("ucf51", 61)):
        entry = recipes.recipe(dataset, "mlb")
        for path in ("train.lr", "train.weight_decay", "method.alpha", "method.beta_max"):
            assert entry[path].source == f"run.sh:{line}"


def parse(path: pathlib.Path, overrides: list[str]):
    """The config as `python -m mlb_jax.train --config=<path> <overrides>` builds it."""
    argv = ["train", f"--config={path}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config


def test_explicit_command_line_values_win():
    config = parse(
        ROOT / "configs" / "cremad_resnet.py",
        [
            "--config.method.name=mmpareto",
            "--config.train.lr=0.5",
            "--config.train.epochs=3",
            "--config.method.mmpareto.alpha=2.5",
        ],
    )
    resolved, table = recipes.resolve(config)
    assert (resolved.train.lr, resolved.train.epochs) == (0.5, 3)
    assert resolved.method.mmpareto.alpha == 2.5
    assert table["train.lr"]["source"] == "explicit (recipe: 0.0001, run.sh:14)"
    assert resolved.train.early_stopping_patience == 100  # the rest from the recipe
    assert resolved.train.weight_decay == 1e-4
    summary = recipes.summary("cremad", "mmpareto", table)
    assert "train.lr=0.5 (explicit (recipe: 0.0001, run.sh:14))" in summary
    assert "method.alpha" not in summary  # MLB's field, not read by MMPareto


def test_explicit_value_in_a_config_wins_and_compare_gives_each_method_its_recipe(
    monkeypatch, tmp_path
):
    from mlb_jax import compare

    config = load_config("ave_resnet")
    config.method.alpha = 0.9  # e.g. a derived config file setting MLB's alpha
    seen = {}

    def fake_train(cfg, workdir):
        resolved, _ = recipes.resolve(cfg)
        seen[resolved.method.name] = (resolved.train.lr, resolved.method.alpha)
        return {"accuracy": 0.5, "unimodal_accuracy": {"audio": 0.5, "video": 0.5}}

    monkeypatch.setattr(trainer, "train_and_evaluate", fake_train)
    compare.run_all(config, tmp_path, ["joint", "agm", "mlb"], [0])
    assert seen == {"joint": (1e-3, 0.9), "agm": (1e-4, 0.9), "mlb": (1e-3, 0.9)}


def test_errors_are_one_line_and_name_the_field(monkeypatch):
    config = load_config("cremad_resnet")

    def error(cfg) -> str:
        with pytest.raises(ValueError) as info:
            recipes.resolve(cfg)
        assert "\n" not in str(info.value)
        return str(info.value)

    config.method.name = "nope"
    assert "unknown method 'nope' (config.method.name)" in error(config)
    config.method.name = "mlb"
    # Replaced, not edited in place: the table's order is the documentation's.
    original = recipes.RECIPES
    without_mlb = {k: v for k, v in original["cremad"].items() if k != "mlb"}
    monkeypatch.setattr(recipes, "RECIPES", {**original, "cremad": without_mlb})
    assert "no reference recipe for method 'mlb' on 'cremad'" in error(config)
    entry = {k: v for k, v in original["cremad"]["mlb"].items() if k != "train.lr"}
    monkeypatch.setattr(recipes, "RECIPES", {"cremad": {**original["cremad"], "mlb": entry}})
    assert "config.train.lr is unset and the cremad/mlb recipe has no value" in error(config)
    monkeypatch.undo()
    config.recipe = "imagenet"
    assert "unknown recipe 'imagenet' (config.recipe)" in error(config)
    config.recipe = ""
    assert error(config).startswith("config.method.agm.alpha is unset and config.recipe is ''")


def test_synthetic_config_is_untouched():
    config = synthetic_av()
    resolved, table = recipes.resolve(config)
    assert resolved is config and table == {}
    assert resolved.to_dict() == synthetic_av().to_dict()
    assert (config.recipe, config.train.early_stopping_patience) == ("", 0)


def test_reproducing_doc_holds_the_generated_tables():
    doc = (ROOT / "docs" / "REPRODUCING.md").read_text()
    assert recipes.markdown() in doc, "regenerate: python -m mlb_jax.recipes --markdown"
