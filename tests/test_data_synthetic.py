"""Synthetic data: determinism, balance, the built-in modality imbalance, and the build cache."""

import shutil

import numpy as np
import pytest

from mlb_jax.data import (
    DataError,
    SyntheticConfig,
    ensure_synthetic,
    eval_batches,
    generate,
    knob_names,
    load_meta,
    synthetic,
)

# Default knobs except the split sizes: enough examples for stable class centroids.
SMALL = {"n_train": 320, "n_val": 8, "n_test": 320}
# Tiny everything, for the tests that write the dataset.
TINY = {
    "n_train": 24,
    "n_val": 8,
    "n_test": 16,
    "spectrogram_shape": (8, 6),
    "frames_shape": (2, 32, 32, 3),
}


def _nearest_centroid(train_x, train_y, test_x, num_classes):
    """Predicts the class whose mean training feature vector is nearest (Euclidean)."""
    centroids = np.stack([train_x[train_y == k].mean(0) for k in range(num_classes)])
    distances = ((test_x[:, None] - centroids[None]) ** 2).sum(-1)
    return distances.argmin(1)


def _flat(x):
    return x.reshape(len(x), -1).astype(np.float32)


def _orientation_energy(video):
    """Phase-invariant texture features: log power spectrum of the grey, frame-mean image."""
    grey = video.astype(np.float32).mean(axis=(1, 4))
    grey -= grey.mean(axis=(1, 2), keepdims=True)
    return np.log1p(np.abs(np.fft.rfft2(grey)) ** 2).reshape(len(video), -1)


@pytest.fixture(scope="module")
def small():
    config = SyntheticConfig(**SMALL)
    return generate(config, "train"), generate(config, "test")


def test_generate_is_deterministic_from_the_knobs():
    config = SyntheticConfig(**TINY)
    first, again = generate(config, "train"), generate(SyntheticConfig(**TINY), "train")
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    other_seed = generate(SyntheticConfig(**TINY, seed=1), "train")
    assert not np.array_equal(first["audio"], other_seed["audio"])
    assert not np.array_equal(first["video"], generate(config, "test")["video"][:24])


def test_generate_shapes_dtypes_and_class_balance():
    config = SyntheticConfig(**TINY)
    data = generate(config, "train")
    assert data["audio"].shape == (24, 8, 6) and data["audio"].dtype == np.float32
    assert data["video"].shape == (24, 2, 32, 32, 3) and data["video"].dtype == np.uint8
    assert data["label"].dtype == np.int64
    assert len(set(data["id"])) == 24
    assert np.bincount(data["label"], minlength=8).tolist() == [3] * 8
    assert config.class_names[:3] == ("group0_0", "group0_1", "group1_0")


def test_audio_identifies_the_group_but_not_the_class(small):
    train, test = small
    predicted = _nearest_centroid(_flat(train["audio"]), train["label"], _flat(test["audio"]), 8)
    group_accuracy = np.mean(predicted // 2 == test["label"] // 2)
    class_accuracy = np.mean(predicted == test["label"])
    assert group_accuracy >= 0.99  # the strong band: linear, learned at once
    assert 0.35 <= class_accuracy <= 0.65  # a coin flip within each pair


def test_audio_within_strength_adds_the_class_to_audio():
    config = SyntheticConfig(**SMALL, audio_within_strength=2.0)
    train, test = generate(config, "train"), generate(config, "test")
    predicted = _nearest_centroid(_flat(train["audio"]), train["label"], _flat(test["audio"]), 8)
    assert np.mean(predicted == test["label"]) >= 0.95


def test_video_carries_the_class_but_not_linearly(small):
    train, test = small
    # Texture (orientation) features recover the full class, both within and across pairs.
    features = _orientation_energy
    predicted = _nearest_centroid(
        features(train["video"]), train["label"], features(test["video"]), 8
    )
    assert np.mean(predicted == test["label"]) >= 0.9
    # Raw pixels do not: the random phase averages the grating out of every class mean.
    predicted = _nearest_centroid(_flat(train["video"]), train["label"], _flat(test["video"]), 8)
    assert np.mean(predicted == test["label"]) <= 0.3


def test_video_strength_and_noise_set_the_difficulty():
    def texture_accuracy(**knobs):
        config = SyntheticConfig(n_train=160, n_val=8, n_test=160, **knobs)
        train, test = generate(config, "train"), generate(config, "test")
        f = _orientation_energy
        predicted = _nearest_centroid(f(train["video"]), train["label"], f(test["video"]), 8)
        return np.mean(predicted == test["label"])

    assert texture_accuracy(video_strength=0.0) <= 0.25  # no grating: chance
    assert texture_accuracy(video_strength=0.02, video_noise=0.4) < texture_accuracy()


def test_ensure_synthetic_builds_once_per_knobs(tmp_path, monkeypatch):
    version_dir = ensure_synthetic(tmp_path, **TINY)
    assert version_dir.parts[-3:-1] == ("synthetic_av", SyntheticConfig(**TINY).name)
    info = version_dir / "dataset_info.json"
    mtime = info.stat().st_mtime_ns

    def no_generation(config, split):
        raise AssertionError("the cached dataset was regenerated")

    monkeypatch.setattr(synthetic, "generate", no_generation)
    assert ensure_synthetic(tmp_path, **TINY) == version_dir
    assert info.stat().st_mtime_ns == mtime
    # Other knobs: another directory (and a build, which the patch above makes fail).
    with pytest.raises(AssertionError, match="regenerated"):
        ensure_synthetic(tmp_path, **TINY, seed=1)
    assert SyntheticConfig(**TINY, seed=1).name != SyntheticConfig(**TINY).name
    assert SyntheticConfig(**TINY, video_noise=0.3).name != SyntheticConfig(**TINY).name


def test_ensure_synthetic_survives_a_concurrent_build(tmp_path, monkeypatch):
    finished = ensure_synthetic(tmp_path / "other", **TINY)
    target = tmp_path / "shared" / finished.relative_to(tmp_path / "other")
    real_generate = synthetic.generate

    def racing_generate(config, split):
        # Another process finishes the same dataset while this one is still writing.
        if not target.exists():
            shutil.copytree(finished, target)
        return real_generate(config, split)

    monkeypatch.setattr(synthetic, "generate", racing_generate)
    assert ensure_synthetic(tmp_path / "shared", **TINY) == target
    assert load_meta(tmp_path / "shared").data_dir == target  # theirs, and nothing unfinished


def test_synthetic_dataset_reads_back_through_the_pipeline(tmp_path):
    knobs = TINY | {"video_strength": 0.15}  # a clear grating: JPEG must not erase it
    meta = load_meta(ensure_synthetic(tmp_path, **knobs))
    assert meta.name.startswith("synthetic_av/s0_")
    assert meta.split_sizes == {"train": 24, "validation": 8, "test": 16}
    assert meta.num_classes == 8
    assert meta.modalities["audio"].shape == (8, 6)
    assert meta.modalities["video"].shape == (2, 32, 32, 3)

    config = SyntheticConfig(**knobs)
    train, test = generate(config, "train"), generate(config, "test")
    (batch,) = eval_batches(
        meta, "test", global_batch_size=16, frame_mean=(0, 0, 0), frame_std=(1, 1, 1)
    )
    # Rows come back in TFDS's order: match them to the generated examples by their audio.
    order = [
        np.flatnonzero((test["audio"] == row).all(axis=(1, 2)))[0]
        for row in batch["inputs"]["audio"]
    ]
    assert sorted(order) == list(range(16))
    np.testing.assert_array_equal(batch["label"], test["label"][order])
    # The class survives JPEG: centroids of the generated training frames classify the frames
    # that went through the writer and the decoder.
    f = _orientation_energy
    predicted = _nearest_centroid(
        f(train["video"]), train["label"], f(batch["inputs"]["video"] * 255), 8
    )
    assert np.mean(predicted == batch["label"]) >= 0.8


def test_bad_knobs_are_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="unknown synthetic knob 'n_classes'"):
        ensure_synthetic(tmp_path, n_classes=4)
    with pytest.raises(DataError, match="must be >= 2 and a multiple of group_size 2"):
        SyntheticConfig(num_classes=7)
    with pytest.raises(DataError, match="split sizes must be >= 1"):
        SyntheticConfig(n_val=0)
    assert "audio_strength" in knob_names() and "name" not in knob_names()
