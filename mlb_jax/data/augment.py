"""Frame augmentation as pure, stateless TensorFlow functions: random-resized crop, flip, resize.

The reference dataset classes (kkontras/MLB at 68ad48d: ``datasets/CREMAD/CREMAD_Dataset.py``
``CremadDataset._get_images``, ``datasets/AVE/AVE_Dataset.py`` lines 82-110 and
``datasets/UCF/UCF_Dataset.py`` lines 65-77 and 147-157) train on torchvision's
``RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3))`` then
``RandomHorizontalFlip(0.5)``, and evaluate on ``Resize((224, 224))`` of the whole frame.
CREMA-D and AVE transform each frame on its own (one crop and flip draw per frame); UCF101
transforms the whole ``[T, C, H, W]`` clip at once (one draw for all frames). This module
reproduces those draws from a stateless seed, so a batch's crops are a pure function of
(training seed, epoch, process, example position in the epoch's order) and a resumed run sees
the crops an uninterrupted one saw.

The crop draw (`crop_boxes`): up to 10 attempts, each drawing an area fraction uniform in
``scale`` and a log aspect ratio uniform in ``log(ratio)``; ``w = round(sqrt(area * r))``,
``h = round(sqrt(area / r))``; the first attempt with ``0 < w <= W`` and ``0 < h <= H`` is
taken with a uniform offset; if none fits, a centred crop of the whole frame with its aspect
ratio clamped to ``ratio``. The attempts are drawn and tested together (vectorised), which
gives the same distribution as drawing them one after another. The crop is then resized to the
output size, bilinear with antialiasing (torchvision's ``antialias=True`` / PIL).
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlb_jax.data._tf import import_tf
from mlb_jax.data.schema import DataError

tf = import_tf()

# torchvision's RandomResizedCrop tries this many (area, ratio) draws before the fallback.
CROP_ATTEMPTS = 10
# Mixed into the epoch seed so augmentation draws never coincide with the shuffling seeds.
_AUGMENT_TAG = 0x61756704


@dataclasses.dataclass(frozen=True)
class Augment:
    """Training-time random-resized crop and horizontal flip of frames.

    Attributes:
        crop_scale: (min, max) area of the crop as a fraction of the stored frame's area.
        crop_ratio: (min, max) width / height of the crop, in stored pixels.
        flip: flip horizontally with probability 0.5.
        per_clip: one crop and flip for all frames of an example (UCF101's reference); False:
            one per frame (CREMA-D's and AVE's).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    per_clip: bool = False

    def __post_init__(self):
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise DataError(
                f"crop_scale {self.crop_scale} must be (min, max) with 0 < min <= max <= 1"
            )
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise DataError(f"crop_ratio {self.crop_ratio} must be (min, max) with 0 < min <= max")


def check_config(block: Any) -> None:
    """Checks a ``config.data.augment`` block; None (no block) is fine.

    Args:
        block: Mapping with ``enabled``, ``size``, ``crop_scale``, ``crop_ratio``, ``flip``,
            ``per_clip`` (see `mlb_jax.config_base.synthetic_av`).

    Raises:
        ValueError: One line naming the field and what it must be.
    """
    if block is None:
        return
    known = {"enabled", "size", "crop_scale", "crop_ratio", "flip", "per_clip"}
    unknown = sorted(set(block) - known)
    if unknown:
        raise ValueError(
            f"unknown field config.data.augment.{unknown[0]}: the block has {sorted(known)}"
        )
    for field in ("enabled", "flip", "per_clip"):
        if not isinstance(block.get(field, False), bool):
            raise ValueError(
                f"config.data.augment.{field} must be True or False, got {block[field]!r}"
            )
    output_size(block.get("size", 0))  # raises on a bad size
    for field, upper in (("crop_scale", 1.0), ("crop_ratio", math.inf)):
        value = block.get(field, (0.5, 0.5))
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            lo = hi = -1.0
        if isinstance(value, str) or not 0 < lo <= hi <= upper:
            raise ValueError(
                f"config.data.augment.{field} must be (min, max) with 0 < min <= max"
                f"{' <= 1' if upper == 1 else ''}, got {value!r}"
            )


def output_size(size: Any) -> tuple[int, int] | None:
    """Parses ``config.data.augment.size``: ``[H, W]``, one int (square), or empty / 0.

    Returns:
        ``(H, W)`` in pixels, or None for "the stored size".

    Raises:
        ValueError: Not an int, a pair of positive ints, or empty / 0.
    """
    if size is None or (isinstance(size, int) and not isinstance(size, bool) and size == 0):
        return None
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return (size, size)
    try:
        values = tuple(size)
    except TypeError:
        values = (None,)
    if not values:
        return None
    if len(values) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
    ):
        return (values[0], values[1])
    raise ValueError(
        f"config.data.augment.size must be [height, width] in pixels, one int, or 0 / [] for "
        f"the stored size, got {size!r}"
    )


def from_config(block: Any) -> tuple[tuple[int, int] | None, Augment | None]:
    """The frame settings of a ``config.data.augment`` block (checked with `check_config`).

    Returns:
        ``(size, augment)``: the output ``(H, W)`` of training and evaluation frames (None: the
        stored size) and the training augmentation (None: disabled, or no block).
    """
    if block is None:
        return None, None
    size = output_size(block.get("size", 0))
    if not block.get("enabled", False):
        return size, None
    return size, Augment(
        crop_scale=tuple(float(v) for v in block.get("crop_scale", Augment.crop_scale)),
        crop_ratio=tuple(float(v) for v in block.get("crop_ratio", Augment.crop_ratio)),
        flip=bool(block.get("flip", Augment.flip)),
        per_clip=bool(block.get("per_clip", Augment.per_clip)),
    )


def epoch_key(seed: int, epoch: int, process_index: int) -> np.ndarray:
    """The augmentation key of one process's epoch: int64 [2], from (seed, epoch, process).

    An example's key is ``tf.random.experimental.stateless_fold_in(epoch_key, position)``
    (`example_key`), where ``position`` is its place in the process's order of the epoch.
    """
    state = np.random.SeedSequence([seed, epoch, process_index, _AUGMENT_TAG]).generate_state(2)
    return (state.astype(np.int64) & 0x7FFFFFFF).astype(np.int64)


def example_key(key: Any, position: Any) -> Any:
    """The key of the example at ``position`` (int64 scalar) of an epoch: int64 [2]."""
    return tf.random.experimental.stateless_fold_in(key, tf.cast(position, tf.int64))


def crop_boxes(
    key: Any,
    frame_size: tuple[Any, Any],
    count: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> Any:
    """``count`` independent RandomResizedCrop boxes of one frame size.

    Args:
        key: int32 / int64 [2] stateless seed.
        frame_size: ``(H, W)`` of the frame in pixels (ints or int32 scalars).
        count: Number of boxes (frames of an example, or 1 for a whole clip).
        scale: (min, max) area fraction of the crop.
        ratio: (min, max) width / height of the crop.

    Returns:
        int32 [count, 4]: ``(top, left, height, width)`` in pixels, each box inside the frame.
    """
    height = tf.cast(frame_size[0], tf.float32)
    width = tf.cast(frame_size[1], tf.float32)
    area_key, offset_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    draws = tf.random.stateless_uniform([2, count, CROP_ATTEMPTS], area_key)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * draws[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * draws[1])
    # tf.round rounds half to even, as Python's round().
    w = tf.round(tf.sqrt(area * aspect))
    h = tf.round(tf.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)  # first that fits
    found = tf.reduce_any(fits, axis=1)
    w = tf.gather(w, first, batch_dims=1)
    h = tf.gather(h, first, batch_dims=1)
    # Fallback: the whole frame, its aspect ratio clamped into the range, centred.
    frame_ratio = width / height
    # Too wide: full height, the widest allowed crop; too tall: full width, the tallest.
    fall_w = tf.where(frame_ratio > ratio[1], tf.round(height * ratio[1]), width)
    fall_h = tf.where(frame_ratio < ratio[0], tf.round(width / ratio[0]), height)
    w = tf.where(found, w, fall_w)
    h = tf.where(found, h, fall_h)
    # Offsets uniform over the integers [0, H - h] and [0, W - w]; the fallback is centred.
    u = tf.random.stateless_uniform([2, count], offset_key)
    top = tf.where(found, tf.floor(u[0] * (height - h + 1)), tf.floor((height - h) / 2))
    left = tf.where(found, tf.floor(u[1] * (width - w + 1)), tf.floor((width - w) / 2))
    # u < 1, but u * n can round up to n in float32: keep the box inside.
    top = tf.minimum(top, height - h)
    left = tf.minimum(left, width - w)
    return tf.cast(tf.stack([top, left, h, w], axis=1), tf.int32)


def flips(key: Any, count: int) -> Any:
    """Flip draws: bool [count], each True with probability 0.5 (RandomHorizontalFlip)."""
    return tf.random.stateless_uniform([count], key) < 0.5


def crop_params(key: Any, frame_size: tuple[Any, Any], num_frames: int, augment: Augment) -> Any:
    """The boxes and flips `random_resized_crop` applies to one example.

    Args:
        key: int32 / int64 [2] stateless seed of the example.
        frame_size: ``(H, W)`` of the stored frames in pixels.
        num_frames: T.
        augment: The settings; ``per_clip`` gives one box and flip for all frames.

    Returns:
        ``(boxes, flip)``: int32 [n, 4] ``(top, left, height, width)`` and bool [n], with n = 1
        (per clip) or T (per frame).
    """
    count = 1 if augment.per_clip else num_frames
    box_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    boxes = crop_boxes(box_key, frame_size, count, augment.crop_scale, augment.crop_ratio)
    flip = flips(flip_key, count) if augment.flip else tf.zeros([count], tf.bool)
    return boxes, flip


def random_resized_crop(
    frames: Any, key: Any, size: tuple[int, int], augment: Augment = Augment()
) -> Any:
    """Random-resized crop and flip of one example's frames.

    Args:
        frames: uint8 or float [T, H, W, C] (T static); pixel values on any scale.
        key: int32 / int64 [2] stateless seed of this example (`example_key`).
        size: Output ``(height, width)`` in pixels.
        augment: Crop range, flip, and one draw per clip or per frame.

    Returns:
        float32 [T, size[0], size[1], C], values on the input's scale (bilinear, antialiased
        when shrinking).
    """
    num_frames = frames.shape[0]
    if num_frames is None:
        raise DataError("random_resized_crop needs a static number of frames")
    shape = tf.shape(frames)
    boxes, flip = crop_params(key, (shape[1], shape[2]), num_frames, augment)
    count = 1 if augment.per_clip else num_frames
    out = []
    # One resize per box: crops of different sizes cannot share one antialiased resize op.
    # The frame count is static and small (3-4), so this unrolls into a few ops.
    for i in range(count):
        top, left, h, w = tf.unstack(boxes[i])
        clip = frames if augment.per_clip else frames[i : i + 1]
        crop = clip[:, top : top + h, left : left + w]
        crop = tf.image.resize(crop, size, method="bilinear", antialias=True)
        out.append(tf.cond(flip[i], lambda crop=crop: tf.reverse(crop, axis=[2]), lambda c=crop: c))
    result = out[0] if augment.per_clip else tf.concat(out, axis=0)
    return tf.ensure_shape(result, (num_frames, *size, frames.shape[-1]))


def resize(frames: Any, size: tuple[int, int]) -> Any:
    """Evaluation: the whole frame resized to ``size`` (the reference's ``Resize((h, w))``).

    Args:
        frames: uint8 or float [..., H, W, C].
        size: Output ``(height, width)`` in pixels.

    Returns:
        float32 [..., size[0], size[1], C], bilinear with antialiasing, on the input's scale.
    """
    shape = tf.shape(frames)
    flat = tf.reshape(frames, tf.concat([[-1], shape[-3:]], axis=0))
    out = tf.image.resize(flat, size, method="bilinear", antialias=True)
    return tf.reshape(out, tf.concat([shape[:-3], [size[0], size[1], shape[-1]]], axis=0))
