"""Frame augmentation: RandomResizedCrop boxes, flips, per-clip vs per-frame, the eval resize,
determinism, and exact resume of augmented training epochs (cached and streamed)."""

import pathlib
import types

import numpy as np
import pytest
import tensorflow as tf

from mlb_jax import trainer
from mlb_jax.data import augment
from mlb_jax.data.builder import AudioVideoBuilder, AudioVideoConfig, prepare
from mlb_jax.data.pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_batches,
    input_shapes,
    train_batches,
)
from mlb_jax.data.schema import ModalitySpec, load_meta

FRAMES = (3, 12, 16, 3)  # T, H, W, C of the test dataset (4:3, like CREMA-D and UCF)
SIZES = {"train": 20, "test": 5}


def key(*values):
    return tf.constant(list(values) + [0] * (2 - len(values)), tf.int64)


# ----------------------------------------------------------------------------- boxes


def test_boxes_inside_the_frame_and_within_scale_and_ratio():
    height, width = 600, 800  # large: rounding moves area and ratio by < 0.5 %
    boxes = augment.crop_boxes(key(1, 2), (height, width), 2000).numpy()
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    area, ratio = h * w / (height * width), w / h
    assert area.min() >= 0.08 * 0.99 and area.max() <= 1.0
    assert ratio.min() >= 0.75 * 0.995 and ratio.max() <= 4 / 3 * 1.005
    # The draws span the ranges (log-uniform ratio, uniform area among accepted draws).
    assert area.min() < 0.1 and area.max() > 0.9
    assert ratio.min() < 0.78 and ratio.max() > 1.29
    assert abs(np.median(np.log(ratio))) < 0.05


def test_offsets_are_uniform_over_the_free_range():
    boxes = augment.crop_boxes(key(3), (100, 100), 4000, scale=(0.25, 0.25), ratio=(1, 1)).numpy()
    np.testing.assert_array_equal(boxes[:, 2:], 50)  # h = w = round(sqrt(0.25 * 100^2))
    for offsets in boxes[:, 0], boxes[:, 1]:
        assert offsets.min() == 0 and offsets.max() == 50  # [0, H - h] inclusive
        assert abs(offsets.mean() - 25) < 1.5


def test_fallback_centres_a_clamped_crop_when_no_attempt_fits():
    # 4 x 400: every attempt asks for h >= sqrt(0.08 * 1600 / (4/3)) ~ 9.8 > 4 rows.
    boxes = augment.crop_boxes(key(5), (4, 400), 6).numpy()
    np.testing.assert_array_equal(boxes, [[0, 197, 4, 5]] * 6)  # w = round(4 * 4/3), centred
    # Too tall: full width, h = round(w / (3/4)), centred vertically.
    boxes = augment.crop_boxes(key(5), (400, 4), 2).numpy()
    np.testing.assert_array_equal(boxes, [[197, 0, 5, 4]] * 2)
    # Ratio 1 below the range (2, 3): full width 3, h = round(3 / 2) = 2 (half to even).
    boxes = augment.crop_boxes(key(5), (3, 3), 1, scale=(1.0, 1.0), ratio=(2.0, 3.0)).numpy()
    np.testing.assert_array_equal(boxes, [[0, 0, 2, 3]])


def test_boxes_are_a_function_of_the_key():
    a = augment.crop_boxes(key(7, 1), (60, 80), 5).numpy()
    np.testing.assert_array_equal(a, augment.crop_boxes(key(7, 1), (60, 80), 5).numpy())
    assert (a != augment.crop_boxes(key(7, 2), (60, 80), 5).numpy()).any()


# ----------------------------------------------------------------------------- crops


def _textured(num_frames=3, height=12, width=16, same=False):
    rng = np.random.default_rng(0)
    shape = (1 if same else num_frames, height, width, 3)
    frames = rng.integers(0, 256, shape, dtype=np.uint8)
    return np.repeat(frames, num_frames, axis=0) if same else frames


@pytest.mark.parametrize("per_clip", [False, True])
def test_crop_is_the_resized_box_then_the_flip(per_clip):
    frames = _textured()
    settings = augment.Augment(per_clip=per_clip)
    k = key(11, 3)
    out = augment.random_resized_crop(tf.constant(frames), k, (8, 10), settings).numpy()
    assert out.shape == (3, 8, 10, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255  # antialiased bilinear: convex combinations
    boxes, flip = (x.numpy() for x in augment.crop_params(k, (12, 16), 3, settings))
    assert boxes.shape == ((1, 4) if per_clip else (3, 4))
    for t in range(3):
        top, left, h, w = boxes[0 if per_clip else t]
        expected = tf.image.resize(
            frames[t, top : top + h, left : left + w], (8, 10), antialias=True
        ).numpy()
        if flip[0 if per_clip else t]:
            expected = expected[:, ::-1]
        np.testing.assert_allclose(out[t], expected, atol=1e-3)


def test_per_clip_shares_one_draw_per_frame_does_not():
    frames = tf.constant(_textured(num_frames=4, same=True))  # four identical frames
    for seed in range(3):
        clip = augment.random_resized_crop(
            frames, key(seed), (6, 6), augment.Augment(per_clip=True)
        )
        clip = clip.numpy()
        assert all(np.array_equal(clip[0], clip[t]) for t in range(4))
        per_frame = augment.random_resized_crop(frames, key(seed), (6, 6), augment.Augment())
        per_frame = per_frame.numpy()
        assert not any(np.allclose(per_frame[0], per_frame[t]) for t in range(1, 4))


def test_flip_probability_is_one_half_and_can_be_off():
    assert abs(augment.flips(key(13), 4000).numpy().mean() - 0.5) < 0.03
    settings = augment.Augment(flip=False)
    assert not augment.crop_params(key(13), (12, 16), 50, settings)[1].numpy().any()


def test_eval_resize_is_a_plain_antialiased_resize_of_the_whole_frame():
    frames = _textured()
    out = augment.resize(tf.constant(frames[None]), (8, 10)).numpy()  # [1, T, H, W, C]
    expected = tf.image.resize(frames, (8, 10), method="bilinear", antialias=True).numpy()
    np.testing.assert_allclose(out[0], expected, atol=1e-4)


# ----------------------------------------------------------------------------- config


def test_config_block_defaults_and_one_line_errors():
    from mlb_jax.config_base import reference_resnet, synthetic_av

    demo, ref = synthetic_av().data.augment, reference_resnet("x").data.augment
    augment.check_config(demo)
    assert augment.from_config(demo) == (None, None)  # off, stored size
    size, settings = augment.from_config(ref)
    assert size == (224, 224) and settings == augment.Augment()
    assert augment.output_size(112) == (112, 112) and augment.output_size(()) is None
    for field, value, message in (
        ("enabled", 1, "config.data.augment.enabled must be True or False"),
        ("size", (224,), "config.data.augment.size must be"),
        ("crop_scale", (0.5, 1.5), "config.data.augment.crop_scale must be"),
        ("crop_ratio", (2.0, 1.0), "config.data.augment.crop_ratio must be"),
    ):
        block = synthetic_av().data.augment.to_dict() | {field: value}
        with pytest.raises(ValueError, match=message) as error:
            augment.check_config(block)
        assert "\n" not in str(error.value)
    block = synthetic_av().data.augment
    block.crop_sclae = (0.1, 1.0)
    with pytest.raises(ValueError, match=r"unknown field config.data.augment.crop_sclae"):
        augment.check_config(block)


# ----------------------------------------------------------------------------- pipeline


class Textured(AudioVideoBuilder):
    """Example i: spectrogram filled with i; frames of smooth random texture from seed i."""

    BUILDER_CONFIGS = [  # noqa: RUF012 (TFDS declares it as a plain class attribute)
        AudioVideoConfig(
            name="base",
            class_names=("a", "b"),
            modalities={
                "audio": ModalitySpec("spectrogram", (2, 2)),
                "video": ModalitySpec("frames", FRAMES),
            },
        )
    ]

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in SIZES}

    def _generate_examples(self, split):
        for i in range(SIZES[split]):
            rng = np.random.default_rng(i)
            coarse = rng.integers(0, 256, (FRAMES[0], 4, 4, 3)).astype(np.float32)
            frames = tf.image.resize(coarse, FRAMES[1:3]).numpy().round().astype(np.uint8)
            yield (
                f"{split}{i}",
                {
                    "id": f"{split}{i}",
                    "label": i % 2,
                    "audio": np.full((2, 2), i, np.float32),
                    "video": frames,
                },
            )


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    root: pathlib.Path = tmp_path_factory.mktemp("textured")
    return load_meta(prepare(Textured, data_dir=root))


def _batches(meta, **kwargs):
    args = {"global_batch_size": 4, "seed": 3, "epoch": 1, "augment": augment.Augment()} | kwargs
    return list(train_batches(meta, "train", process_index=0, process_count=1, **args))


@pytest.mark.parametrize("cache", [True, False])
def test_resumed_epoch_sees_the_crops_of_an_uninterrupted_one(meta, cache):
    full = _batches(meta, cache=cache, frame_size=(8, 8))
    assert len(full) == 5 and full[0]["inputs"]["video"].shape == (4, 3, 8, 8, 3)
    assert full[0]["inputs"]["video"].dtype == np.float32
    again = _batches(meta, cache=cache, frame_size=(8, 8))
    resumed = _batches(meta, cache=cache, frame_size=(8, 8), start_batch=2)
    assert len(resumed) == 3
    for a, b in zip(full, again, strict=True):
        np.testing.assert_array_equal(a["inputs"]["video"], b["inputs"]["video"])
    for a, b in zip(full[2:], resumed, strict=True):
        np.testing.assert_array_equal(a["inputs"]["audio"], b["inputs"]["audio"])
        np.testing.assert_array_equal(a["inputs"]["video"], b["inputs"]["video"])
    # Normalised pixels of the 0-255 crops: within the normalised range of [0, 255].
    video = np.concatenate([b["inputs"]["video"] for b in full])
    low = (0 - np.asarray(IMAGENET_MEAN)) / IMAGENET_STD
    high = (1 - np.asarray(IMAGENET_MEAN)) / IMAGENET_STD
    assert (video >= low - 1e-5).all() and (video <= high + 1e-5).all()


def _video_by_example(batches):
    """Example index (from the spectrogram) -> its video, float32 [T, H, W, 3]."""
    out = {}
    for batch in batches:
        for row, index in enumerate(batch["inputs"]["audio"][:, 0, 0].astype(int)):
            out[index] = batch["inputs"]["video"][row]
    return out


def test_crops_differ_across_epochs_and_seeds_not_within_a_run(meta):
    base = _video_by_example(_batches(meta, cache=True))
    other_epoch = _video_by_example(_batches(meta, cache=True, epoch=2))
    other_seed = _video_by_example(_batches(meta, cache=True, seed=4))
    for other in other_epoch, other_seed:
        common = sorted(set(base) & set(other))
        assert common and not any(np.allclose(base[i], other[i]) for i in common)
    # Each frame of an example has its own draw (per frame, the default).
    video = next(iter(base.values()))
    assert video.shape == FRAMES
    plain = _video_by_example(_batches(meta, cache=True, augment=None))
    assert not any(np.allclose(base[i], plain[i]) for i in base)


def test_eval_and_unaugmented_train_resize_the_whole_frame(meta):
    (batch,) = eval_batches(
        meta, "test", global_batch_size=8, frame_size=(6, 8), process_index=0, process_count=1
    )
    (stored,) = eval_batches(meta, "test", global_batch_size=8, process_index=0, process_count=1)
    stored = stored["inputs"]["video"]
    raw = stored * IMAGENET_STD + IMAGENET_MEAN  # back to [0, 1]
    expected = tf.image.resize(raw.reshape(-1, *FRAMES[1:]), (6, 8), antialias=True).numpy()
    expected = (expected.reshape(8, 3, 6, 8, 3) - IMAGENET_MEAN) / IMAGENET_STD
    assert batch["inputs"]["video"].shape == (8, 3, 6, 8, 3)
    np.testing.assert_allclose(batch["inputs"]["video"], expected, atol=1e-4)
    assert input_shapes(meta, (6, 8)) == {"audio": (2, 2), "video": (3, 6, 8, 3)}
    assert input_shapes(meta) == {"audio": (2, 2), "video": FRAMES}
    train = _batches(meta, cache=True, augment=None, frame_size=(6, 8))
    assert train[0]["inputs"]["video"].shape == (4, 3, 6, 8, 3)


def test_trainer_feeds_augmented_batches_and_resumes_them(meta):
    from mlb_jax.config_base import synthetic_av

    config = synthetic_av()
    config.data.augment.enabled = True
    config.data.augment.size = (8, 8)
    config.data.augment.per_clip = True
    config.train.batch_size = 4
    run = types.SimpleNamespace(config=config, meta=meta, mesh=None)  # no kept partial batch
    full = list(trainer.epoch_batches(run, epoch=0))
    tail = list(trainer.epoch_batches(run, epoch=0, start_batch=3))
    assert full[0]["inputs"]["video"].shape == (4, 3, 8, 8, 3)
    for a, b in zip(full[3:], tail, strict=True):
        np.testing.assert_array_equal(a["inputs"]["video"], b["inputs"]["video"])
