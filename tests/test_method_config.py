"""The one method config reader: fields, types, values, ignored fields and single defaults."""

import dataclasses
import inspect
import json

import ml_collections
import pytest

from mlb_jax import mlb_gradient_transform
from mlb_jax.balancing import mlb_rule
from mlb_jax.config_base import synthetic_av
from mlb_jax.methods import BLOCKS, METHODS, MLB, MSLR, OGM, default_block, make_method
from mlb_jax.methods.config import TOP_LEVEL_FIELDS

# The settings without which these methods cannot be built at all.
REQUIRED = {
    "unimodal": {"modality": "audio"},
    "ensemble": {"ensemble": {"workdirs": {"audio": "runs/a", "video": "runs/v"}}},
    "pre_frozen": {"pretrained": {"workdirs": {"audio": "runs/a", "video": "runs/v"}}},
    "pre_finetuned": {"pretrained": {"workdirs": {"audio": "runs/a", "video": "runs/v"}}},
}


def method_config(name, **fields):
    return ml_collections.ConfigDict({"name": name, **REQUIRED.get(name, {}), **fields})


# (method, block or None for top-level, field, bad value, expected message)
BAD_VALUES = [
    # joint has no settings: any value of a field it does not read is refused.
    ("joint", None, "placement", "later", r"config.method.placement='later' has no effect"),
    ("ogm", None, "placement", "later", r"config.method.placement must be one of \['gradients"),
    ("multiloss", None, "unimodal_weight", -1.0, r"config.method.unimodal_weight must be >= 0"),
    ("mlb", None, "score", "loss", r"config.method.score must be one of \['accuracy', 'prob"),
    ("mlb", None, "score_ema", 1.0, r"config.method.score_ema must be in \[0, 1\), got 1.0"),
    ("mlb", None, "beta_max", -2.0, r"config.method.beta_max must be >= 0, got -2.0"),
    ("mlb", None, "alpha", float("nan"), r"config.method.alpha must be a finite number"),
    ("ogm", "ogm", "start_epoch", -1, r"config.method.ogm.start_epoch must be >= 0, got -1"),
    ("ogm_ge", "ogm", "scope", "all", r"config.method.ogm.scope must be one of"),
    ("mslr", "mslr", "keep_memory", 1.5, r"config.method.mslr.keep_memory must be an integer"),
    ("mmpareto", "mmpareto", "alpha", True, r"config.method.mmpareto.alpha must be a number"),
    ("agm", "agm", "max_exponent", 0.0, r"config.method.agm.max_exponent must be > 0, got 0.0"),
    ("pmr", "pmr", "momentum", 1.0, r"config.method.pmr.momentum must be in \[0, 1\), got 1.0"),
    ("mmcosine", "mmcosine", "scaling", -1.0, r"config.method.mmcosine.scaling must be > 0"),
    ("reconboost", "reconboost", "alpha", -0.5, r"config.method.reconboost.alpha must be >= 0"),
    ("unimodal", None, "modality", "", r"config.method.modality must be the modality to train"),
    ("ensemble", "ensemble", "norm", "zscore", r"config.method.ensemble.norm must be one of"),
    ("pre_frozen", "pretrained", "workdirs", {}, r"config.method.pretrained.workdirs must be a"),
    (
        "pre_finetuned",
        None,
        "placement",
        "updates",
        r"config.method.placement='updates' has no effect with method 'pre_finetuned' \(its",
    ),
]


def test_every_registered_method_is_covered_by_the_bad_value_table():
    assert {row[0] for row in BAD_VALUES} == set(METHODS)


@pytest.mark.parametrize(("name", "block", "field", "value", "message"), BAD_VALUES)
def test_a_bad_value_fails_at_construction_naming_the_field(name, block, field, value, message):
    config = method_config(name)
    if block is None:
        config[field] = value
    else:
        config[block] = {field: value}
    with pytest.raises(ValueError, match=message):
        make_method(config)


@pytest.mark.parametrize("name", list(METHODS))
def test_an_unknown_field_is_refused_with_the_allowed_ones(name):
    block = {"ogm_ge": "ogm", "pre_frozen": "pretrained", "pre_finetuned": "pretrained"}.get(
        name, name
    )
    if block in BLOCKS:
        config = method_config(name, **{block: {"not_a_field": 1}})
        expected = f"unknown field config.method.{block}.not_a_field; allowed: "
        allowed = BLOCKS[block].block_fields
    else:  # joint, multiloss and mlb read the top level of config.method only
        config = method_config(name, not_a_field=1)
        expected = "unknown field config.method.not_a_field; allowed: name, "
        allowed = TOP_LEVEL_FIELDS
    with pytest.raises(ValueError) as err:
        make_method(config)
    message = str(err.value)
    assert message.startswith(expected) and "\n" not in message
    assert all(field in message for field in allowed)


# method -> the shared top-level fields it reads; every other one must keep its default.
READS = {
    "joint": set(),
    "multiloss": {"unimodal_weight"},
    "mlb": {"unimodal_weight", "placement"},
    "ogm": {"placement"},
    "ogm_ge": {"placement"},
    "mslr": {"placement"},
    "mmpareto": set(),
    "agm": set(),
    "pmr": set(),
    "mmcosine": set(),
    "reconboost": set(),
    "unimodal": {"modality"},
    "ensemble": set(),
    "pre_frozen": set(),
    "pre_finetuned": set(),
}
NON_DEFAULT = {"unimodal_weight": 0.5, "placement": "updates", "modality": "video"}
DEFAULT = {"unimodal_weight": MLB.unimodal_weight, "placement": MLB.placement, "modality": ""}


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("field", list(NON_DEFAULT))
def test_a_shared_field_the_method_ignores_is_refused(name, field):
    config = method_config(name, **{field: NON_DEFAULT[field]})
    if name == "unimodal" and field == "modality":
        assert make_method(config).modality == "video"
        return  # it has no default: no modality is no unimodal run
    if field in READS[name]:
        assert getattr(make_method(config), field) == NON_DEFAULT[field]
    else:
        with pytest.raises(ValueError) as err:
            make_method(config)
        message = str(err.value)
        assert message.startswith(
            f"config.method.{field}={NON_DEFAULT[field]!r} has no effect with method {name!r} ("
        )
        assert message.endswith("): remove it")
    # Its default value is always accepted.
    make_method(method_config(name, **{field: DEFAULT[field]}))


def test_mlb_fields_and_other_blocks_are_not_read_by_other_methods():
    # One config serves a comparison: MLB's alpha / beta_max and OGM's block do not stop joint,
    # and the chosen method's block is the only one checked.
    config = method_config("joint", alpha=2.0, beta_max=10.0, score="accuracy")
    config.ogm = {"alpha": -1.0}
    assert dataclasses.asdict(make_method(config)) == {"name": "joint", "placement": "gradients"}
    config.name = "mlb"
    assert make_method(config).beta_max == 10.0
    config.name = "ogm"
    with pytest.raises(ValueError, match="config.method.ogm.alpha must be >= 0"):
        make_method(config)


def test_values_are_converted_to_the_field_types():
    config = method_config("mlb", alpha=2, beta_max=3)  # integers from a command line
    method = make_method(config)
    assert (method.alpha, method.beta_max) == (2.0, 3.0)
    assert isinstance(method.alpha, float) and isinstance(method.beta_max, float)
    mslr = make_method(method_config("mslr", mslr={"init_lr": {"audio": 2}}))
    assert mslr.init_lr == (("audio", 2.0),)
    with pytest.raises(ValueError, match=r"config.method.mslr.init_lr must be a mapping"):
        make_method(method_config("mslr", mslr={"init_lr": 0.5}))


def test_direct_construction_is_validated_too():
    with pytest.raises(ValueError, match=r"config.method.alpha must be >= 0, got -1.0"):
        MLB(alpha=-1.0)
    with pytest.raises(ValueError, match=r"config.method.ogm.alpha must be >= 0"):
        OGM(alpha=-0.1)


@pytest.mark.parametrize("name", list(METHODS))
def test_resolved_settings_are_json_and_rebuild_the_method(name):
    method = make_method(method_config(name))
    settings = dataclasses.asdict(method)
    assert json.loads(json.dumps(settings))["name"] == name
    assert type(method)(**settings) == method


def test_defaults_live_in_the_dataclasses():
    # MLB's default is the paper's beta_max = 2 everywhere in the library ...
    assert MLB.beta_max == 2.0
    assert inspect.signature(mlb_gradient_transform).parameters["beta_max"].default == 2.0
    assert inspect.signature(mlb_rule).parameters["beta_max"].default == 2.0
    # ... while the demo config deliberately overrides it (and MSLR's static multipliers).
    demo = synthetic_av().method
    assert demo.beta_max == 4.0
    assert make_method(demo).beta_max == 4.0
    assert dict(demo.mslr.init_lr) == {"audio": 0.7, "video": 1.3}
    assert MSLR.init_lr == ()
    # Every other top-level field and every block is the dataclass default.
    for field in TOP_LEVEL_FIELDS:
        if field != "beta_max":
            assert demo[field] == (DEFAULT[field] if field in DEFAULT else getattr(MLB, field))
    for block, cls in BLOCKS.items():
        expected = default_block(cls).to_dict()
        if block == "mslr":
            expected["init_lr"] = {"audio": 0.7, "video": 1.3}
        if block in ("ensemble", "pretrained"):  # one entry per modality, to fill in
            expected["workdirs"] = {"audio": "", "video": ""}
        assert demo[block].to_dict() == expected, block
    # The demo's numbers are the ones it always had.
    assert demo.ogm.to_dict() == {
        "alpha": 0.3,
        "scope": "conv",
        "start_epoch": 0,
        "end_epoch": 50,
        "noise_seed": 0,
    }
    assert (demo.agm.clip_threshold, demo.pmr.fraction, demo.reconboost.w1) == (1.0, 0.1, 5.0)
