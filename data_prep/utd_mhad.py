"""UTD-MHAD -> TFRecords: depth frames, skeleton and inertial sequences, cross-subject splits.

    python -m data_prep.utd_mhad --raw_dir=UTD-MHAD --out_dir=DATA [--num_frames=8]
        [--frame_size=64x64] [--val_trials=4] [--workers=1]

Reads ``Depth/a{a}_s{s}_t{t}_depth.mat`` (``d_depth``, uint16 ``[H, W, T]`` millimetres, 0 = no
reading), ``Skeleton/..._skeleton.mat`` (``d_skel``, ``[20, 3, T]`` metres) and
``Inertial/..._inertial.mat`` (``d_iner``, ``[T', 6]``) with ``scipy.io.loadmat`` and writes
three modalities per sample (id ``a{a}_s{s}_t{t}``, label ``a - 1``, `CLASS_NAMES`):

* ``depth``: frames, uint16 ``[N, H, W, 1]`` (default 8 x 64 x 64), stored exactly. N frames
  at the centres of N equal segments of the clip (frame ``floor((i + 0.5) T / N)``); each cropped
  to the central square (the middle 240 of 320 columns: UTD-MHAD's depth maps have the
  background removed, and every reading of the 861 clips lies in columns 77-246), then
  area-resized to H x W *over readings only*: an output pixel whose area is at least half
  readings gets their mean, otherwise 0, so 0 still means "no reading" and the silhouette's
  edge is never blended with 0 into depths that were not measured.
* ``skeleton``: sequence, float32 ``[T, 60]`` (T <= T_max), joint-major: frame t is
  ``j1x, j1y, j1z, j2x, ..., j20z`` in the order of ``Skeleton/Skeleton_joint_order.txt``
  (head, shoulder_center, spine, hip_center, ...). The hip centre (joint 4, read from that file
  when present) *of the first frame* is subtracted from every joint of every frame: the subject
  starts at the origin wherever they stood, and the body's own motion (walk, jog, squat, sit to
  stand) is kept. ``--skeleton_centre=every_frame`` subtracts each frame's own hip centre
  instead (pose only). Depth and skeleton have the same T in every clip.
* ``inertial``: sequence, float32 ``[T', 6]``: accelerometer x, y, z in g as recorded, then
  gyroscope x, y, z converted from deg/s to rad/s (x pi / 180), so both are O(1) (standard
  deviations about 0.65 g and 1.8 rad/s over the dataset).

T_max of each sequence is the longest one read (125 skeleton frames, 326 inertial samples for
the full download), or ``--max_skeleton_len`` / ``--max_inertial_len``: a longer sequence is
then subsampled evenly to the cap (the depth frames' rule), so it still spans the whole action.

Splits (cross-subject, the dataset's standard protocol): subjects 1, 3, 5, 7 are training
subjects, 2, 4, 6, 8 the ``test`` split. The training subjects' trials ``--val_trials``
(default 4) are ``validation`` and their other trials ``train``, so no subject is in both
train/validation and test, and validation has every action of every training subject.

A sample missing one of its three files, or with a file that cannot be read or holds the wrong
variable or shape, is reported (per file, with a one-line reason) and not written; more than
``--max_unreadable_fraction`` such samples stop the conversion before anything is written. The
report, ``<out_dir>/utd_mhad/<config>/conversion_report.json``, holds the counts per split and
class, each split's subjects and trials, the problems, the sequences' lengths and the times.
Layout and numbers: data_prep/README.md, "UTD-MHAD".
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import math
import pathlib
import re
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import scipy.io
import tqdm
from etils import epath

from data_prep import common
from data_prep.decode import process_pool, without_main_module
from mlb_jax import paths
from mlb_jax.data._tf import import_tfds
from mlb_jax.data.builder import AudioVideoBuilder, AudioVideoConfig, prepare
from mlb_jax.data.schema import SCHEMA_VERSION, DataError, ModalitySpec, load_meta

# The 27 actions a1..a27 in order (label a - 1), after the dataset's description (Chen et al.,
# ICIP 2015, Table 1): right-arm swipes, wave, clap, ..., squat.
CLASS_NAMES = (
    "swipe_left",
    "swipe_right",
    "wave",
    "clap",
    "throw",
    "arm_cross",
    "basketball_shoot",
    "draw_x",
    "draw_circle_cw",
    "draw_circle_ccw",
    "draw_triangle",
    "bowling",
    "boxing",
    "baseball_swing",
    "tennis_swing",
    "arm_curl",
    "tennis_serve",
    "push",
    "knock",
    "catch",
    "pickup_throw",
    "jog",
    "walk",
    "sit_to_stand",
    "stand_to_sit",
    "lunge",
    "squat",
)
SUBJECTS = (1, 2, 3, 4, 5, 6, 7, 8)
TRAIN_SUBJECTS = (1, 3, 5, 7)  # train and validation
TEST_SUBJECTS = (2, 4, 6, 8)
TRIALS = (1, 2, 3, 4)
# The samples the original release lacks (all three files of each).
KNOWN_ABSENT = ("a8_s1_t4", "a23_s6_t4", "a27_s8_t4")

# Modality -> (folder, file suffix, MATLAB variable).
FILES = {
    "depth": ("Depth", "depth", "d_depth"),
    "skeleton": ("Skeleton", "skeleton", "d_skel"),
    "inertial": ("Inertial", "inertial", "d_iner"),
}
_NAME = re.compile(r"a(\d+)_s(\d+)_t(\d+)_(depth|skeleton|inertial)\.mat")

DEFAULT_NUM_FRAMES = 8
DEFAULT_FRAME_SIZE = (64, 64)
DEFAULT_VAL_TRIALS = (4,)
NUM_JOINTS = 20
JOINT_ORDER_FILE = "Skeleton_joint_order.txt"
# 1-based hip-centre joint in the dataset's documented order (head, shoulder_center, spine,
# hip_center, ...), used when the raw directory has no joint-order file.
DEFAULT_HIP_JOINT = 4
CENTRES = ("first_frame", "every_frame")
# deg/s -> rad/s for the gyroscope columns (3-5) of d_iner.
GYRO_SCALE = math.pi / 180.0
# Decode processes by default: each imports this module (TensorFlow included, ~0.7 GB).
DEFAULT_WORKERS = 1


class BadFileError(Exception):
    """One raw file cannot be used; the message is one line naming the file and why."""


# --- Listing ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sample:
    """One sample of the raw download.

    Attributes:
        id: ``a{action}_s{subject}_t{trial}``.
        action: 1-27 (label ``action - 1``).
        subject: 1-8.
        trial: 1, 2, ...
        split: ``'train'``, ``'validation'`` or ``'test'``.
        files: modality -> its file, None when the download lacks it.
    """

    id: str
    action: int
    subject: int
    trial: int
    split: str
    files: dict[str, pathlib.Path | None]

    @property
    def label(self) -> int:
        """Class index."""
        return self.action - 1


def split_of(subject: int, trial: int, val_trials: Sequence[int]) -> str:
    """The split of a subject's trial under the cross-subject protocol."""
    if subject in TEST_SUBJECTS:
        return common.TEST
    return common.VALIDATION if trial in val_trials else common.TRAIN


def check_layout(raw_dir: pathlib.Path) -> None:
    """Raises `DataError` (one line) unless `raw_dir` holds Depth/, Skeleton/ and Inertial/."""
    fix = "pass --raw_dir=<the UTD-MHAD download holding Depth/, Skeleton/ and Inertial/>"
    if not raw_dir.is_dir():
        raise DataError(f"raw directory {raw_dir} does not exist: {fix}")
    for folder, _, _ in FILES.values():
        if not (raw_dir / folder).is_dir():
            raise DataError(f"{raw_dir} has no {folder}/ folder: {fix}")


def list_samples(
    raw_dir: pathlib.Path, val_trials: Sequence[int]
) -> tuple[list[Sample], list[dict[str, str]]]:
    """Lists the samples of a download: every id with at least one of its three files.

    Args:
        raw_dir: holds Depth/, Skeleton/, Inertial/ (`check_layout`).
        val_trials: the training subjects' trials that are validation.

    Returns:
        The samples sorted by (action, subject, trial), and the ignored ``.mat`` files
        ({'file', 'reason'}: a name that is not ``a{1-27}_s{1-8}_t{n}_<modality>.mat``).

    Raises:
        DataError: no sample file at all.
    """
    found: dict[tuple[int, int, int], dict[str, pathlib.Path]] = collections.defaultdict(dict)
    ignored = []
    for modality, (folder, suffix, _) in FILES.items():
        for path in sorted((raw_dir / folder).glob("*.mat")):
            match = _NAME.fullmatch(path.name)
            if match is None or match[4] != suffix:
                reason = f"not a{{action}}_s{{subject}}_t{{trial}}_{suffix}.mat"
            elif not 1 <= int(match[1]) <= len(CLASS_NAMES):
                reason = f"action {match[1]} is not one of 1-{len(CLASS_NAMES)}"
            elif int(match[2]) not in SUBJECTS:
                reason = f"subject {match[2]} is not one of 1-{len(SUBJECTS)}"
            elif int(match[3]) < 1:
                reason = f"trial {match[3]} is not >= 1"
            else:
                found[int(match[1]), int(match[2]), int(match[3])][modality] = path
                continue
            ignored.append({"file": str(path), "reason": reason})
    if not found:
        raise DataError(
            f"{raw_dir} holds no a<action>_s<subject>_t<trial>_<modality>.mat file in Depth/, "
            "Skeleton/ or Inertial/: pass --raw_dir=<the unpacked UTD-MHAD download>"
        )
    samples = [
        Sample(
            id=f"a{a}_s{s}_t{t}",
            action=a,
            subject=s,
            trial=t,
            split=split_of(s, t, val_trials),
            files={m: files.get(m) for m in FILES},
        )
        for (a, s, t), files in sorted(found.items())
    ]
    return samples, ignored


def absent_ids(samples: Sequence[Sample]) -> list[str]:
    """Ids of the full 27 x 8 x 4 grid with no file at all (the original lacks `KNOWN_ABSENT`)."""
    listed = {s.id for s in samples}
    return [
        f"a{a}_s{s}_t{t}"
        for a in range(1, len(CLASS_NAMES) + 1)
        for s in SUBJECTS
        for t in TRIALS
        if f"a{a}_s{s}_t{t}" not in listed
    ]


def hip_joint(raw_dir: pathlib.Path) -> tuple[int, str]:
    """The 1-based hip-centre joint and where it comes from.

    Returns:
        (joint, source): the number of the ``hip_center`` line of
        ``Skeleton/Skeleton_joint_order.txt`` (lines like ``4. hip_center;``) when the file
        has one, else `DEFAULT_HIP_JOINT` and ``'default'``.

    Raises:
        DataError: the file names a hip centre outside 1-20.
    """
    path = raw_dir / FILES["skeleton"][0] / JOINT_ORDER_FILE
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return DEFAULT_HIP_JOINT, "default"
    match = re.search(r"^\s*(\d+)\s*[.)]\s*hip[ _]?cent(?:er|re)\b", text, re.I | re.M)
    if match is None:
        return DEFAULT_HIP_JOINT, "default"
    joint = int(match[1])
    if not 1 <= joint <= NUM_JOINTS:
        raise DataError(
            f"{path} puts hip_center at joint {joint}, not one of 1-{NUM_JOINTS}: fix or "
            "remove the file"
        )
    return joint, str(path)


# --- Reading one sample (runs in the worker processes) -----------------------------------------


@dataclasses.dataclass(frozen=True)
class ReadSettings:
    """How a sample's files become arrays (see the module docstring).

    Attributes:
        num_frames: depth frames kept, N.
        frame_size: depth frame (H, W) after the crop and resize.
        hip_joint: 1-based hip-centre joint.
        skeleton_centre: 'first_frame' or 'every_frame' (whose hip centre is subtracted).
        gyro_scale: factor of the gyroscope columns.
    """

    num_frames: int = DEFAULT_NUM_FRAMES
    frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE
    hip_joint: int = DEFAULT_HIP_JOINT
    skeleton_centre: str = CENTRES[0]
    gyro_scale: float = GYRO_SCALE


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What reading one sample gave.

    Attributes:
        sample: the sample.
        arrays: modality -> array (depth uint16 [N, H, W, 1], skeleton float32 [T, 60],
            inertial float32 [T', 6]) when every file was read, else None.
        problems: modality -> one-line reason, for each missing or unusable file.
        depth_frames: T of the depth clip (0 if unread).
        outside_crop: the kept depth frames have readings outside the crop.
    """

    sample: Sample
    arrays: dict[str, np.ndarray] | None
    problems: dict[str, str]
    depth_frames: int = 0
    outside_crop: bool = False

    @property
    def error(self) -> str:
        """'MissingFile' or 'UnreadableFile' (the first problem's kind), '' if read."""
        if not self.problems:
            return ""
        first = next(iter(self.problems))
        return "MissingFile" if self.sample.files[first] is None else "UnreadableFile"

    @property
    def reason(self) -> str:
        """The problems in one line, '' if read."""
        return "; ".join(self.problems.values())


def read_sample(sample: Sample, settings: ReadSettings) -> Outcome:
    """Reads and preprocesses one sample's three files; never raises for a bad file."""
    arrays: dict[str, np.ndarray] = {}
    problems: dict[str, str] = {}
    depth_frames, outside = 0, False
    for modality, path in sample.files.items():
        if path is None:
            folder, suffix, _ = FILES[modality]
            problems[modality] = f"{folder}/{sample.id}_{suffix}.mat is missing"
            continue
        try:
            if modality == "depth":
                clip = load_variable(path, "d_depth")
                arrays[modality], depth_frames, outside = depth_frames_of(clip, path, settings)
            elif modality == "skeleton":
                arrays[modality] = skeleton_of(load_variable(path, "d_skel"), path, settings)
            else:
                arrays[modality] = inertial_of(load_variable(path, "d_iner"), path, settings)
        except BadFileError as e:
            problems[modality] = str(e)
        except Exception as e:  # a bug on one odd file must be counted, not fatal
            problems[modality] = _one_line(f"{path}: {type(e).__name__}: {e}")
    return Outcome(
        sample, None if problems else arrays, problems, depth_frames, outside and not problems
    )


def load_variable(path: pathlib.Path, name: str) -> np.ndarray:
    """The numeric array `name` of a MATLAB file.

    Raises:
        BadFileError: unreadable file, no such variable, or not a real numeric array.
    """
    try:
        content = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises many types (ValueError, MatReadError, zlib.error ...)
        raise BadFileError(_one_line(f"{path}: cannot be read ({type(e).__name__}: {e})")) from e
    if name not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise BadFileError(f"{path}: has no variable {name} (it has {found or 'none'})")
    value = content[name]
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "uif":
        kind = getattr(value, "dtype", type(value).__name__)
        raise BadFileError(f"{path}: {name} is {kind}, not a numeric array")
    return value


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _with_time_axis(value: np.ndarray, dims: int) -> np.ndarray:
    """MATLAB drops a trailing singleton: a one-frame ``[A, B]`` clip becomes ``[A, B, 1]``."""
    return value[..., None] if value.ndim == dims - 1 else value


def segment_indices(length: int, count: int) -> np.ndarray:
    """``count`` indices into ``length`` steps: the centres of ``count`` equal segments."""
    return ((np.arange(count) + 0.5) * length / count).astype(np.int64)


def crop_box(height: int, width: int) -> tuple[slice, slice]:
    """The central square of a ``height x width`` frame (240 x 320: columns 40-279)."""
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return slice(top, top + side), slice(left, left + side)


def area_weights(source: int, target: int) -> np.ndarray:
    """``[target, source]``: the overlap of output cell i with input pixel j (in pixels).

    Output cell i covers ``[i s / t, (i + 1) s / t)`` of the input; each row sums to s / t.
    """
    edges = np.arange(target + 1) * (source / target)
    pixels = np.arange(source)
    low = np.maximum(edges[:-1, None], pixels[None, :])
    high = np.minimum(edges[1:, None], pixels[None, :] + 1)
    return np.clip(high - low, 0.0, None)


def _area_sum(x: np.ndarray, axis: int, target: int) -> np.ndarray:
    """Sums `x` over each output cell of `axis` (resized to `target`), weighted by overlap.

    Equal to ``area_weights(source, target) @ x`` along `axis`, but as a gather of the few
    pixels each cell overlaps: no BLAS call, whose threads crawl on a busy machine.
    """
    weights = area_weights(x.shape[axis], target)
    first = np.argmax(weights > 0, axis=1)
    span = int((weights > 0).sum(axis=1).max())
    index = np.minimum(first[:, None] + np.arange(span), x.shape[axis] - 1)
    taken = np.where(
        first[:, None] + np.arange(span) < x.shape[axis],
        np.take_along_axis(weights, index, axis=1),
        0.0,
    )
    moved = np.moveaxis(x, axis, -1)
    return np.moveaxis((moved[..., index] * taken).sum(-1), -1, axis)


def resize_depth(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area resize of depth frames over their readings only.

    Args:
        frames: uint16 ``[N, h, w]``, 0 = no reading.
        size: output (H, W).

    Returns:
        uint16 ``[N, H, W]``: an output pixel at least half of whose area has readings is the
        mean of those readings (rounded), any other is 0.
    """
    height, width = size
    values = frames.astype(np.float64)
    # Per output pixel: the readings' sum, and the area that has readings (in input pixels).
    total = _area_sum(_area_sum(values, 1, height), 2, width)
    valid = _area_sum(_area_sum((values > 0).astype(np.float64), 1, height), 2, width)
    cell = (frames.shape[1] / height) * (frames.shape[2] / width)
    keep = valid >= 0.5 * cell * (1 - 1e-9)
    mean = np.divide(total, valid, out=np.zeros_like(total), where=keep)
    return np.clip(np.rint(mean), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def depth_frames_of(
    clip: np.ndarray, path: pathlib.Path, settings: ReadSettings
) -> tuple[np.ndarray, int, bool]:
    """``d_depth`` ``[H0, W0, T]`` -> uint16 ``[N, H, W, 1]``, T, readings outside the crop."""
    clip = _with_time_axis(clip, 3)
    if clip.ndim != 3 or min(clip.shape) < 1:
        raise BadFileError(f"{path}: d_depth has shape {clip.shape}, expected [H, W, T]")
    if clip.dtype != np.uint16:
        raise BadFileError(f"{path}: d_depth is {clip.dtype}, expected uint16 millimetres")
    length = clip.shape[2]
    kept = np.moveaxis(clip[:, :, segment_indices(length, settings.num_frames)], 2, 0)
    rows, cols = crop_box(*kept.shape[1:])
    cropped = kept[:, rows, cols]
    outside = int(np.count_nonzero(kept)) > int(np.count_nonzero(cropped))
    return resize_depth(cropped, settings.frame_size)[..., None], length, outside


def skeleton_of(value: np.ndarray, path: pathlib.Path, settings: ReadSettings) -> np.ndarray:
    """``d_skel`` ``[20, 3, T]`` -> float32 ``[T, 60]``, hip-centred, joint-major."""
    value = _with_time_axis(value, 3)
    if value.ndim != 3 or value.shape[:2] != (NUM_JOINTS, 3) or value.shape[2] < 1:
        raise BadFileError(f"{path}: d_skel has shape {value.shape}, expected [{NUM_JOINTS}, 3, T]")
    joints = np.moveaxis(value.astype(np.float64), 2, 0)  # [T, 20, 3]
    if not np.isfinite(joints).all():
        raise BadFileError(f"{path}: d_skel has non-finite values")
    hip = joints[:, settings.hip_joint - 1]  # [T, 3]
    origin = hip[:1] if settings.skeleton_centre == "first_frame" else hip
    return (joints - origin[:, None]).reshape(len(joints), NUM_JOINTS * 3).astype(np.float32)


def inertial_of(value: np.ndarray, path: pathlib.Path, settings: ReadSettings) -> np.ndarray:
    """``d_iner`` ``[T', 6]`` -> float32 ``[T', 6]``: acceleration in g, gyroscope scaled."""
    if value.ndim != 2 or value.shape[1] != 6 or value.shape[0] < 1:
        raise BadFileError(f"{path}: d_iner has shape {value.shape}, expected [T, 6]")
    if not np.isfinite(value).all():
        raise BadFileError(f"{path}: d_iner has non-finite values")
    scaled = value.astype(np.float64)
    scaled[:, 3:] *= settings.gyro_scale
    return scaled.astype(np.float32)


def fit_length(sequence: np.ndarray, max_length: int) -> np.ndarray:
    """`sequence` itself, or evenly subsampled to `max_length` steps if longer."""
    if len(sequence) <= max_length:
        return sequence
    return sequence[segment_indices(len(sequence), max_length)]


# --- Reading all samples ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RawRead:
    """Every sample of a download, read.

    Attributes:
        raw_dir: the download.
        outcomes: one per listed sample, in listed order.
        ignored: ``.mat`` files whose names are not sample files ({'file', 'reason'}).
        absent: ids of the 27 x 8 x 4 grid with no file.
        hip_source: where the hip-centre joint comes from (a file, or 'default').
        settings: how the samples were read.
        seconds: time taken.
        workers: processes that read.
    """

    raw_dir: pathlib.Path
    outcomes: list[Outcome]
    ignored: list[dict[str, str]]
    absent: list[str]
    hip_source: str
    settings: ReadSettings
    seconds: float
    workers: int

    def lengths(self, modality: str) -> list[int]:
        """Steps of each read sample's sequence (depth: frames of the raw clip)."""
        if modality == "depth":
            return [o.depth_frames for o in self.outcomes if o.arrays is not None]
        return [len(o.arrays[modality]) for o in self.outcomes if o.arrays is not None]


def read_raw(
    raw_dir: pathlib.Path,
    *,
    val_trials: Sequence[int] = DEFAULT_VAL_TRIALS,
    num_frames: int = DEFAULT_NUM_FRAMES,
    frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE,
    skeleton_centre: str = CENTRES[0],
    workers: int = DEFAULT_WORKERS,
    progress: bool = True,
) -> RawRead:
    """Lists and reads every sample of a download (in `workers` spawned processes).

    The result does not depend on `workers`.

    Raises:
        DataError: a wrong layout (`check_layout`), no sample file, or a bad joint-order file.
    """
    start = time.time()
    check_layout(raw_dir)
    samples, ignored = list_samples(raw_dir, val_trials)
    joint, hip_source = hip_joint(raw_dir)
    settings = ReadSettings(num_frames, tuple(frame_size), joint, skeleton_centre)
    work = functools.partial(read_sample, settings=settings)
    bar = tqdm.tqdm(total=len(samples), desc="utd_mhad", unit="sample", disable=not progress)
    with bar:
        if workers <= 1 or len(samples) <= 1:
            outcomes = [_advance(bar, work(s)) for s in samples]
        else:
            # Spawned, never forked (this process runs TensorFlow threads; data_prep.decode).
            with process_pool(workers) as pool:
                chunk = max(1, min(8, len(samples) // (4 * workers)))
                with without_main_module():
                    results = pool.map(work, samples, chunksize=chunk)
                outcomes = [_advance(bar, o) for o in results]
    return RawRead(
        raw_dir=raw_dir,
        outcomes=outcomes,
        ignored=ignored,
        absent=absent_ids(samples),
        hip_source=hip_source,
        settings=settings,
        seconds=time.time() - start,
        workers=max(1, min(workers, len(samples))),
    )


def _advance(bar: tqdm.tqdm, outcome: Outcome) -> Outcome:
    bar.update()
    return outcome


# --- The dataset ------------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True, eq=False)
class UtdMhadConfig(AudioVideoConfig):
    """A UTD-MHAD conversion; ``modalities`` and ``class_names`` are derived.

    Attributes:
        num_frames: depth frames per sample, N.
        frame_size: depth (H, W).
        val_trials: the training subjects' trials that are validation.
        skeleton_len: skeleton T_max.
        inertial_len: inertial T_max.
        skeleton_centre: 'first_frame' or 'every_frame'.
    """

    num_frames: int = DEFAULT_NUM_FRAMES
    frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE
    val_trials: tuple[int, ...] = DEFAULT_VAL_TRIALS
    skeleton_len: int
    inertial_len: int
    skeleton_centre: str = CENTRES[0]
    class_names: tuple[str, ...] = dataclasses.field(init=False, default=CLASS_NAMES)
    modalities: dict[str, ModalitySpec] = dataclasses.field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.frame_size = tuple(self.frame_size)
        self.val_trials = tuple(sorted(self.val_trials))
        self.modalities = {
            "depth": ModalitySpec("frames", (self.num_frames, *self.frame_size, 1), "uint16"),
            "skeleton": ModalitySpec("sequence", (self.skeleton_len, NUM_JOINTS * 3)),
            "inertial": ModalitySpec("sequence", (self.inertial_len, 6)),
        }
        if not self.description:
            self.description = (
                f"UTD-MHAD, cross-subject (train/validation subjects {TRAIN_SUBJECTS}, "
                f"validation = their trials {self.val_trials}; test subjects {TEST_SUBJECTS}); "
                f"depth {self.num_frames} frames of {self.frame_size[0]}x{self.frame_size[1]}, "
                f"skeleton centred on the hip ({self.skeleton_centre}), gyroscope in rad/s."
            )


def config_name(
    num_frames: int = DEFAULT_NUM_FRAMES,
    frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE,
    val_trials: Sequence[int] = DEFAULT_VAL_TRIALS,
    skeleton_centre: str = CENTRES[0],
    max_skeleton_len: int | None = None,
    max_inertial_len: int | None = None,
) -> str:
    """``cross_subject``, plus a suffix per setting off its default (the config directory)."""
    name = "cross_subject"
    if num_frames != DEFAULT_NUM_FRAMES:
        name += f"_{num_frames}f"
    if tuple(frame_size) != DEFAULT_FRAME_SIZE:
        name += f"_{frame_size[0]}x{frame_size[1]}"
    if tuple(sorted(val_trials)) != DEFAULT_VAL_TRIALS:
        name += "_val" + "-".join(str(t) for t in sorted(val_trials))
    if skeleton_centre != CENTRES[0]:
        name += f"_{skeleton_centre}"
    if max_skeleton_len is not None:
        name += f"_skel{max_skeleton_len}"
    if max_inertial_len is not None:
        name += f"_iner{max_inertial_len}"
    return name


class UtdMhad(AudioVideoBuilder):
    """UTD-MHAD (Chen et al. 2015): 27 actions, depth + skeleton + inertial, 8 subjects."""

    name = "utd_mhad"
    HOMEPAGE = "https://personal.utdallas.edu/~kehtar/UTD-MHAD.html"
    CITATION = (
        "Chen, Jafari, Kehtarnavaz, UTD-MHAD: A Multimodal Dataset for Human Action "
        "Recognition Utilizing a Depth Camera and a Wearable Inertial Sensor, ICIP 2015"
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download Depth.zip, Skeleton.zip and Inertial.zip of UTD-MHAD and unpack them into one
    directory (Depth/a1_s1_t1_depth.mat, Skeleton/..., Inertial/...).
    """

    def __init__(
        self,
        *,
        read: RawRead | None = None,
        run: common.RunOptions | None = None,
        **kwargs: Any,
    ):
        """`read`: the samples, already read (else read from manual_dir); `run`: options."""
        super().__init__(**kwargs)
        self.run = run or common.RunOptions(workers=DEFAULT_WORKERS)
        self._read = read
        self._report: dict[str, Any] | None = None

    @property
    def report_path(self) -> epath.Path:
        """``<data_dir>/utd_mhad/<config>/conversion_report.json``, beside the version dir."""
        return (
            epath.Path(self.data_dir_root)
            / self.name
            / self.builder_config.name
            / common.REPORT_NAME
        )

    def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
        """Converts (unless the dataset exists), then writes the report and prints a summary."""
        start = time.time()
        super().download_and_prepare(*args, **kwargs)
        if self._report is None:  # TFDS found the finished dataset: nothing was converted
            print(f"{self.name}/{self.builder_config.name}: already converted in {self.data_dir}")
            return
        written = time.time() - start
        self._report.update(
            status="ok",
            output=str(self.data_dir),
            write_seconds=round(written, 2),
            total_seconds=round(written + self._report["read_seconds"], 2),
        )
        common.write_json(self.report_path, self._report)
        print(format_report(self._report, self.report_path))

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[Any]]:
        config = self.builder_config
        read = self._read
        if read is None:
            read = read_raw(
                pathlib.Path(dl_manager.manual_dir),
                val_trials=config.val_trials,
                num_frames=config.num_frames,
                frame_size=config.frame_size,
                skeleton_centre=config.skeleton_centre,
                workers=self.run.workers,
                progress=self.run.progress,
            )
        report = make_report(read, config, self.run)
        try:
            common.check(report, FIX_HINTS)
        except common.ConversionError:
            common.write_json(self.report_path, {**report, "status": "failed"})
            raise
        self._report = report
        by_split = collections.defaultdict(list)
        for o in read.outcomes:
            if o.arrays is not None:
                by_split[o.sample.split].append(o)
        return {split: self._generate_examples(by_split[split]) for split in report["splits"]}

    def _generate_examples(self, outcomes: Sequence[Outcome]) -> Iterator[tuple[str, dict]]:
        specs = self.builder_config.modalities
        for o in outcomes:
            example: dict[str, Any] = {"id": o.sample.id, "label": o.sample.label}
            example["depth"] = o.arrays["depth"]
            for name in ("skeleton", "inertial"):
                example[name] = specs[name].encode(fit_length(o.arrays[name], specs[name].shape[0]))
            yield o.sample.id, example


# What fixes each kind of dropped sample, for common.check's message.
FIX_HINTS = {
    "MissingFile": "lack one of their three files (restore it from the download)",
    "UnreadableFile": "have a file that cannot be read or holds the wrong variable or shape "
    "(download it again)",
}


# --- Report -----------------------------------------------------------------------------------


def _stats(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": min(values), "mean": round(float(np.mean(values)), 2), "max": max(values)}


def make_report(read: RawRead, config: UtdMhadConfig, run: common.RunOptions) -> dict[str, Any]:
    """The conversion report (JSON-able); the keys `common.check` reads plus UTD-MHAD's own.

    Returns:
        ``dataset``, ``raw_dir``, ``settings``, ``splits`` ({split: {'examples', 'subjects',
        'trials', 'per_class'}}), ``examples`` (written), ``listed``, ``unreadable`` (the
        samples not written: {'split', 'id', 'reason', 'error', 'files': {modality: reason}}),
        ``missing`` / ``unreadable_files`` (counts of files), ``skipped`` (always empty),
        ``unreadable_fraction``, ``max_unreadable_fraction``, ``absent_from_download``,
        ``ignored_files``, ``lengths`` (min / mean / max of the raw depth frames and the
        sequences' steps, before any cap), ``capped`` (sequences subsampled to T_max),
        ``depth_outside_crop`` (ids whose kept frames have readings outside the crop),
        ``read_seconds``, ``workers``.
    """
    splits: dict[str, Any] = {}
    for split in (common.TRAIN, common.VALIDATION, common.TEST):
        written = [o for o in read.outcomes if o.sample.split == split and o.arrays is not None]
        per_class = collections.Counter(o.sample.label for o in written)
        splits[split] = {
            "examples": len(written),
            "subjects": sorted({o.sample.subject for o in written}),
            "trials": sorted({o.sample.trial for o in written}),
            "per_class": {c: per_class.get(i, 0) for i, c in enumerate(CLASS_NAMES)},
        }
    dropped = [o for o in read.outcomes if o.arrays is None]
    problems = [(o, m) for o in dropped for m in o.problems]
    lengths = {m: read.lengths(m) for m in FILES}
    s = read.settings
    return {
        "dataset": f"utd_mhad/{config.name}",
        "raw_dir": str(read.raw_dir),
        "settings": {
            "depth": {
                "shape": list(config.modalities["depth"].shape),
                "frames": "centres of num_frames equal segments of the clip",
                "crop": "central square (240x320 -> columns 40-279)",
                "resize": "area mean over readings; a pixel under half readings is 0",
            },
            "skeleton": {
                "shape": list(config.modalities["skeleton"].shape),
                "layout": "[T, 60]: joint-major j1x, j1y, j1z, j2x, ..., j20z",
                "hip_joint": s.hip_joint,
                "hip_joint_from": read.hip_source,
                "centre": s.skeleton_centre,
            },
            "inertial": {
                "shape": list(config.modalities["inertial"].shape),
                "columns": "acc x, y, z (g), gyro x, y, z (rad/s)",
                "gyro_scale": s.gyro_scale,
            },
            "val_trials": list(config.val_trials),
            "train_subjects": list(TRAIN_SUBJECTS),
            "test_subjects": list(TEST_SUBJECTS),
        },
        "splits": splits,
        "examples": sum(e["examples"] for e in splits.values()),
        "listed": len(read.outcomes),
        "unreadable": [
            {
                "split": o.sample.split,
                "id": o.sample.id,
                "reason": o.reason,
                "error": o.error,
                "files": dict(o.problems),
            }
            for o in dropped
        ],
        "missing": sum(1 for o, m in problems if o.sample.files[m] is None),
        "unreadable_files": sum(1 for o, m in problems if o.sample.files[m] is not None),
        "skipped": [],
        "unreadable_fraction": len(dropped) / max(1, len(read.outcomes)),
        "max_unreadable_fraction": run.max_unreadable_fraction,
        "absent_from_download": read.absent,
        "ignored_files": read.ignored,
        "lengths": {
            "depth_frames": _stats(lengths["depth"]),
            "skeleton": _stats(lengths["skeleton"]),
            "inertial": _stats(lengths["inertial"]),
        },
        "capped": {
            m: sum(1 for n in lengths[m] if n > config.modalities[m].shape[0])
            for m in ("skeleton", "inertial")
        },
        "depth_outside_crop": [o.sample.id for o in read.outcomes if o.outside_crop],
        "read_seconds": round(read.seconds, 2),
        "workers": read.workers,
    }


def format_report(report: dict[str, Any], path: pathlib.Path) -> str:
    """A few lines for the terminal: counts per split, shapes and lengths, problems, times."""
    lines = [
        f"{report['dataset']}: {report['examples']} of {report['listed']} samples -> "
        f"{report.get('output', '-')} (read {report['read_seconds']:.1f} s with "
        f"{report['workers']} worker(s), written {report.get('write_seconds', 0):.1f} s, "
        f"total {report.get('total_seconds', 0):.1f} s)"
    ]
    for split, entry in report["splits"].items():
        counts = list(entry["per_class"].values())
        lines.append(
            f"  {split:<10} {entry['examples']:>5} examples, subjects "
            f"{','.join(map(str, entry['subjects']))}, trials "
            f"{','.join(map(str, entry['trials']))}, per class {min(counts)}-{max(counts)}"
        )
    settings, lengths = report["settings"], report["lengths"]
    depth = lengths["depth_frames"]
    lines.append(
        f"  depth {settings['depth']['shape']} uint16 from clips of {depth['min']}-"
        f"{depth['max']} frames (mean {depth['mean']:g})"
    )
    for m in ("skeleton", "inertial"):
        n = lengths[m]
        capped = f", {report['capped'][m]} subsampled to T_max" if report["capped"][m] else ""
        lines.append(
            f"  {m} {settings[m]['shape']} (T_max, D): T {n['min']}-{n['max']} "
            f"(mean {n['mean']:g}){capped}"
        )
    absent = report["absent_from_download"]
    if absent:
        known = (
            " (the original release lacks exactly these)" if tuple(absent) == KNOWN_ABSENT else ""
        )
        shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
        lines.append(f"  absent from the download: {len(absent)}: {shown}{known}")
    bad = report["unreadable"]
    lines.append(
        f"  not written: {len(bad)} ({report['missing']} missing, {report['unreadable_files']} "
        "unreadable files)" + (f", e.g. {bad[0]['reason']}" if bad else "")
    )
    for key, what in (
        ("ignored_files", "ignored files"),
        ("depth_outside_crop", "depth clips with readings outside the crop"),
    ):
        if report[key]:
            lines.append(f"  {what}: {len(report[key])}")
    lines.append(f"  report: {path}")
    return "\n".join(lines)


# --- Command line -----------------------------------------------------------------------------


def val_trials(text: str) -> tuple[int, ...]:
    """Parses ``--val_trials``: trials of 1-4, comma-separated, not all four."""
    try:
        trials = tuple(sorted({int(t) for t in text.split(",")}))
    except ValueError:
        trials = ()
    if not trials or not set(trials) <= set(TRIALS) or set(trials) == set(TRIALS):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of trials: use e.g. 4 or 3,4 (of 1-4, not all four)"
        )
    return trials


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--raw_dir",
        required=True,
        type=pathlib.Path,
        help="the download: Depth/, Skeleton/, Inertial/ (data_prep/README.md, UTD-MHAD)",
    )
    p.add_argument(
        "--out_dir",
        required=True,
        type=paths.as_path,
        help="TFDS data_dir, local or a URL (gs://...); the dataset goes to "
        "<out_dir>/utd_mhad/<config>/<version>",
    )
    p.add_argument(
        "--num_frames",
        type=common.positive_int,
        default=DEFAULT_NUM_FRAMES,
        help=f"depth frames per sample, evenly over the clip (default {DEFAULT_NUM_FRAMES})",
    )
    p.add_argument(
        "--frame_size",
        type=common.frame_size,
        default=DEFAULT_FRAME_SIZE,
        help="depth frame size after the central square crop, 64 or HxW (default 64x64)",
    )
    p.add_argument(
        "--val_trials",
        type=val_trials,
        default=DEFAULT_VAL_TRIALS,
        help="the training subjects' trials that form validation, e.g. 4 or 3,4 (default 4)",
    )
    p.add_argument(
        "--skeleton_centre",
        choices=CENTRES,
        default=CENTRES[0],
        help="subtract the hip centre of the first frame (default; keeps the body's motion) or "
        "of every frame (pose only)",
    )
    p.add_argument(
        "--max_skeleton_len",
        type=common.positive_int,
        default=None,
        help="skeleton T_max (default: the longest sequence); longer ones are subsampled",
    )
    p.add_argument(
        "--max_inertial_len",
        type=common.positive_int,
        default=None,
        help="inertial T_max (default: the longest sequence); longer ones are subsampled",
    )
    p.add_argument(
        "--workers",
        type=common.positive_int,
        default=DEFAULT_WORKERS,
        help=f"reading processes (default {DEFAULT_WORKERS}; each imports TensorFlow, ~0.7 GB)",
    )
    p.add_argument(
        "--max_unreadable_fraction",
        type=common.fraction,
        default=common.RunOptions.max_unreadable_fraction,
        help="fail if a larger fraction of the samples cannot be written (default 0.05)",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def convert(args: argparse.Namespace) -> epath.Path:
    """Converts the download (or finds it converted) and returns the version directory.

    Raises:
        DataError: bad input (one line naming the path and the fix) or too many unreadable
            samples.
    """
    run = common.RunOptions(
        workers=args.workers,
        max_unreadable_fraction=args.max_unreadable_fraction,
        progress=not args.no_progress,
    )
    check_layout(args.raw_dir)
    name = config_name(
        args.num_frames,
        args.frame_size,
        args.val_trials,
        args.skeleton_centre,
        args.max_skeleton_len,
        args.max_inertial_len,
    )
    version_dir = args.out_dir / UtdMhad.name / name / SCHEMA_VERSION
    if (version_dir / "dataset_info.json").is_file():
        return _already_converted(version_dir, (args.num_frames, *args.frame_size, 1))
    if not run.progress:
        import_tfds().disable_progress_bar()
    read = read_raw(
        args.raw_dir,
        val_trials=args.val_trials,
        num_frames=args.num_frames,
        frame_size=args.frame_size,
        skeleton_centre=args.skeleton_centre,
        workers=run.workers,
        progress=run.progress,
    )
    # T_max: the longest sequence read, or the cap (at least 1, so that a download with no
    # readable sample reaches the builder's check and its one-line error).
    caps = {"skeleton": args.max_skeleton_len, "inertial": args.max_inertial_len}
    lengths = {m: min(max(read.lengths(m), default=1), caps[m] or sys.maxsize) for m in caps}
    config = UtdMhadConfig(
        name=name,
        num_frames=args.num_frames,
        frame_size=args.frame_size,
        val_trials=args.val_trials,
        skeleton_len=lengths["skeleton"],
        inertial_len=lengths["inertial"],
        skeleton_centre=args.skeleton_centre,
    )
    return prepare(
        functools.partial(UtdMhad, read=read, run=run),
        data_dir=args.out_dir,
        config=config,
        manual_dir=args.raw_dir,
    )


def _already_converted(version_dir: epath.Path, depth_shape: tuple[int, ...]) -> epath.Path:
    stored = load_meta(version_dir).modalities["depth"].shape
    if tuple(stored) != depth_shape:
        raise DataError(
            f"{version_dir} holds depth of shape {tuple(stored)}, not the requested "
            f"{depth_shape} (written by an older converter): delete it to convert again"
        )
    print(f"utd_mhad/{version_dir.parent.name}: already converted in {version_dir}")
    return version_dir


def _run(argv: Sequence[str] | None) -> epath.Path:
    return convert(_parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    return common.main(_run, argv)


if __name__ == "__main__":
    # Run the importable module, not this __main__ copy, so that the tasks sent to the reading
    # processes name data_prep.utd_mhad (which they import) rather than __main__ (which they
    # do not re-run: data_prep.decode.without_main_module).
    from data_prep import utd_mhad

    sys.exit(utd_mhad.main())
