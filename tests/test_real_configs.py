"""The real-dataset configs: MLB's published hyper-parameters, and one train step each.

The per-method reference values themselves are checked in tests/test_recipes.py.

Each config is run through the real code path on a tiny fake raw copy of its dataset (the
layouts of tests/fake_media.py), converted by its data_prep converter at a tiny frame size;
only the model width, batch and device count are shrunk.
"""

import dataclasses
import importlib.util
import json
import pathlib

import jax
import ml_collections
import numpy as np
import pytest
from fake_media import make_fake_ave, make_fake_cremad, make_fake_ucf
from test_data_prep import SIZE, _manifest

from data_prep import ave, cremad, ucf51
from mlb_jax import conv_auto, recipes, trainer
from mlb_jax.data import augment, pipeline
from mlb_jax.data.schema import DataError
from mlb_jax.methods import BUILT_ON_UNIMODAL, METHODS, make_method
from mlb_jax.models import conv_tune

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (alpha, beta_max) of the reference run.sh's MLB lines (docs/METHODS.md (hyper-parameters)),
# and the LR each line passes (run.sh: --lr 0.001 for MLB on CREMA-D, AVE and UCF), as the
# configs resolve them for the default method (mlb).
REFERENCE_MLB = {
    "cremad_resnet": (0.5, 10.0, 1e-3),
    "ave_resnet": (2.0, 1.0, 1e-3),
    "ucf51_resnet": (2.0, 0.5, 1e-3),
}
ALL_CONFIGS = [*REFERENCE_MLB, "custom"]


def load_config(name: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def flat_keys(config: ml_collections.ConfigDict) -> set[str]:
    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict) and k != "modalities":
                yield from walk(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    return set(walk(config.to_dict(), ""))


def test_custom_resnet_is_the_deprecated_name_of_custom():
    assert load_config("custom_resnet").to_dict() == load_config("custom").to_dict()


@pytest.mark.parametrize("name", REFERENCE_MLB)
def test_mlb_hyperparameters_are_the_papers(name):
    config, _ = recipes.resolve(load_config(name))
    alpha, beta_max, lr = REFERENCE_MLB[name]
    assert config.method.alpha == alpha
    assert config.method.beta_max == beta_max
    assert config.train.lr == lr


@pytest.mark.parametrize("name", [*ALL_CONFIGS, "synthetic_av", "tiny"])
def test_every_method_builds_from_every_config(name):
    # `mlb_jax.compare` runs any method on any config: MLB's alpha / beta_max set by a dataset
    # config must not stop the other methods, and each method's resolved settings are JSON.
    config = load_config(name)
    # What a user must add for the reference rows: the modality, the unimodal runs.
    names = list(config.model.modalities) or ["audio", "video"]  # custom: from the dataset
    for block in set(BUILT_ON_UNIMODAL.values()):
        config.method[block].workdirs = {m: f"runs/unimodal_{m}" for m in names}
    for method in METHODS:
        config.method.name = method
        config.method.modality = "audio" if method == "unimodal" else ""
        resolved, _ = recipes.resolve(config)
        settings = dataclasses.asdict(make_method(resolved.method))
        assert json.loads(json.dumps(settings))["name"] == method
    config.method.name = "mlb"
    resolved, _ = recipes.resolve(config)
    assert make_method(resolved.method).beta_max == resolved.method.beta_max


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_resnet_recipe_and_field_structure(name):
    config, _ = recipes.resolve(load_config(name))
    # custom: modalities and encoders come from the dataset, overridable per modality.
    keys = flat_keys(load_config("synthetic_av"))
    if name == "custom":  # no per-modality entries until the dataset is read
        keys = {k for k in keys if not k.endswith(("workdirs.audio", "workdirs.video"))}
        keys |= {"model.encoders"}
    assert flat_keys(config) == keys
    assert (config.method.name, config.method.placement) == ("mlb", "gradients")
    assert (config.model.base_width, config.model.fusion) == (64, "late_linear")
    assert config.model.modalities.to_dict() == (
        {}
        if name == "custom"
        else {
            "audio": {"kind": "audio", "in_channels": 1},
            "video": {"kind": "video", "in_channels": 3},
        }
    )
    # The reference loaders' training crops: 224x224, per frame but on UCF101 (per clip);
    # custom crops at the stored size (its frames may be small grayscale or depth maps).
    aug = config.data.augment
    size = () if name == "custom" else (224, 224)
    assert (aug.enabled, tuple(aug.size), aug.flip) == (True, size, True)
    assert aug.per_clip == (name == "ucf51_resnet")
    assert config.train.keep_last_batch
    train = config.train
    assert (train.optimizer, train.weight_decay, train.batch_size) == ("adam", 1e-4, 32)
    assert (train.schedule, train.warmup_steps) == ("mlb_warm_restarts", 780)
    # The reference's budget with early stopping; custom: a fixed 100 epochs.
    assert (train.epochs, train.early_stopping_patience) == {
        "cremad_resnet": (1500, 100),
        "ave_resnet": (1500, 150),
        "ucf51_resnet": (1000, 100),
        "custom": (100, 0),
    }[name]
    assert (config.data.train_split, config.data.val_split, config.data.test_split) == (
        "train",
        "validation",
        "test",
    )
    assert config.data.cache is False
    trainer.validate_config(config)
    # data.dir defaults to '' and the trainer asks for it.
    with pytest.raises(DataError, match="--config.data.dir"):
        trainer.load_dataset(config)


# ----------------------------------------------------------------------------- one train step


def _cremad(tmp):
    make_fake_cremad(tmp / "CREMA-D")
    return cremad, [f"--raw_dir={tmp / 'CREMA-D'}"]


def _ave(tmp):
    make_fake_ave(tmp / "AVE_Dataset")
    return ave, [f"--raw_dir={tmp / 'AVE_Dataset'}"]


def _ucf(tmp):
    make_fake_ucf(tmp / "UCF101", ucf51.CLASS_NAMES)
    return ucf51, [f"--raw_dir={tmp / 'UCF101'}"]


def _custom(tmp):
    rows = [f"c{i},train,{('cat', 'dog')[i % 2]},a.wav,a.mp4" for i in range(4)]
    rows += ["v0,validation,cat,a.wav,a.mp4", "t0,test,dog,a.wav,a.mp4"]
    return _manifest(tmp, rows)


# config -> (fake raw copy + converter, classes, spectrogram shape, frames shape at 12x16)
CASES = {
    "cremad_resnet": (_cremad, 6, (257, 188), (3, 12, 16, 3)),
    "ave_resnet": (_ave, 28, (257, 1004), (4, 12, 16, 3)),
    "ucf51_resnet": (_ucf, 51, (257, 136), (4, 12, 16, 3)),
    "custom": (_custom, 2, (257, 136), (3, 12, 16, 3)),  # manifest defaults, 1-s wav
}
# The fake training splits hold 3-6 examples: a batch of 2 on 2 of the 8 fake devices.
BATCH, DEVICES = 2, 2


def param_paths(params) -> dict[str, np.ndarray]:
    """'/'-joined parameter path -> a host copy (train_step donates the state's buffers)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.array(x)
        for path, x in leaves
    }


@pytest.mark.parametrize("name", CASES)
def test_one_train_step_on_converted_fake_data(name, tmp_path, monkeypatch):
    make_raw, num_classes, audio_shape, video_shape = CASES[name]
    converter, argv = make_raw(tmp_path)
    out = tmp_path / "out"
    assert converter.main([*argv, f"--out_dir={out}", "--workers=1", *SIZE]) == 0

    config = load_config(name)
    config.data.dir = str(out)
    config.model.base_width = 2
    config.train.batch_size = BATCH
    config.train.num_devices = DEVICES
    config.train.epochs = 1
    # The configs crop to 224x224 (checked in test_resnet_recipe_and_field_structure); a
    # CPU-sized crop keeps this one step of the real config quick, through the same path.
    assert config.data.augment.enabled
    assert tuple(config.data.augment.size) == (() if name == "custom" else (224, 224))
    config.data.augment.size = (16, 16)
    assert config.model.conv == "auto"  # the faster of plan and xla here, xla on accelerators
    config, _ = recipes.resolve(config)  # what train_and_evaluate does first
    meta = trainer.load_dataset(config)
    config = trainer.modalities_from_dataset(config, meta)  # custom: the encoders by kind
    assert config.model.modalities.to_dict() == {
        "audio": {"kind": "audio", "in_channels": 1},
        "video": {"kind": "video", "in_channels": 3},
    }
    assert meta.num_classes == num_classes
    assert meta.modalities["audio"].shape == audio_shape
    assert meta.modalities["video"].shape == video_shape

    # The plan's step cached as the faster: the real configs' plan, built without timing.
    monkeypatch.setenv(conv_tune.CACHE_ENV, str(tmp_path / "plans"))
    frame_size, _ = augment.from_config(config.data.augment)
    conv_auto.store(
        conv_auto.step_key(config, pipeline.input_shapes(meta, frame_size)),
        {"plan": 1.0, "plan_wide": 1.5, "xla": 2.0},
    )
    run, state = trainer.setup(config, meta)
    assert (run.conv, run.conv_auto["measured"]) == ("plan", False)
    before = param_paths(state.params)
    batch = next(trainer.epoch_batches(run, 0))
    assert batch["inputs"]["audio"].shape == (BATCH, *audio_shape)
    # Training frames are random crops at the augment size, not the stored size.
    crop = tuple(config.data.augment.size)
    assert batch["inputs"]["video"].shape == (BATCH, video_shape[0], *crop, video_shape[-1])
    state, metrics = run.train_step(state, trainer.pipeline.to_global(batch, run.mesh))
    metrics = jax.device_get(metrics)

    assert np.isfinite(metrics["loss"])
    assert np.isfinite(metrics["k/audio"]) and np.isfinite(metrics["k/video"])  # MLB ran
    assert int(state.step) == 1
    after = param_paths(state.params)
    assert after.keys() == before.keys()
    assert all(np.isfinite(v).all() for v in after.values())
    changed = [p for p in before if not np.array_equal(before[p], after[p])]
    for group in ("encoders/audio/", "encoders/video/", "heads/audio/", "heads/video/", "fusion/"):
        assert any(p.startswith(group) for p in changed), (group, sorted(after)[:5])


def test_cremad_conformer_config_builds_the_papers_conformer_encoders():
    from flax import nnx

    from mlb_jax.models import ConformerEncoder, build_model

    config, recipe = recipes.resolve(load_config("cremad_conformer"))
    assert recipe == {}  # no recipe: its settings are written out with their run.sh lines
    assert (config.train.lr, config.train.weight_decay, config.train.batch_size) == (
        5e-5,
        5e-6,
        8,
    )
    assert (config.method.name, config.method.alpha, config.method.beta_max) == ("mlb", 5.0, 2.0)
    assert config.data.sequence_length == "face=150"
    trainer.validate_config(config)
    # Shapes only: the two 5-block, 512-wide Conformers are not allocated.
    model = nnx.eval_shape(lambda: build_model(config.model, 6, rngs=nnx.Rngs(0)))
    for name, width in (("audio", 1024), ("face", 1408)):
        encoder = model.encoders[name]
        assert isinstance(encoder, ConformerEncoder)
        assert (encoder.in_features, encoder.out_features, len(encoder.blocks)) == (width, 512, 5)
