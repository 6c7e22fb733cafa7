"""A synthetic audio-video dataset with a built-in modality imbalance, generated and cached.

The data reproduce the situation the MLB paper studies: audio is easy and resolves only the
*group* of a class (classes come in groups of ``group_size``), video carries the full class but
through a subtle, noisy texture that a CNN learns slowly. Joint training then leans on audio and
leaves video under-trained. `generate` is pure numpy and deterministic from the knobs;
`SyntheticAV` writes it through the same TFDS builder and schema as the real datasets, and
`ensure_synthetic` builds it once per set of knobs. The construction and every knob are
documented in ``mlb_jax/data/README.md``.
"""

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from etils import epath

from mlb_jax import paths
from mlb_jax.data.builder import AudioVideoBuilder, AudioVideoConfig, prepare
from mlb_jax.data.schema import SCHEMA_VERSION, DataError, ModalitySpec

SPLITS = ("train", "validation", "test")

# Part of the cache key: bump it whenever `generate` changes, so that cached datasets made by
# the old code are not reused.
_GENERATOR_VERSION = 1

# Examples generated per vectorised numpy step: bounds memory; fixed, because the random
# stream (and so the data) depends on it.
_CHUNK = 256


@dataclasses.dataclass(kw_only=True, eq=False)
class SyntheticConfig(AudioVideoConfig):
    """The knobs of the synthetic dataset (the TFDS config of `SyntheticAV`).

    ``name``, ``class_names``, ``modalities`` and ``description`` are derived from the knobs;
    the name (``s<seed>_<hash of the knobs>``) is the cache key.

    Attributes:
        seed: Seed of all random draws; each split has its own stream.
        num_classes: Number of classes K, a multiple of ``group_size``.
        group_size: Classes per audio group; audio alone tells only the group.
        n_train: Examples in the ``'train'`` split.
        n_val: Examples in the ``'validation'`` split.
        n_test: Examples in the ``'test'`` split.
        spectrogram_shape: Audio shape ``(F, T)``.
        frames_shape: Video shape ``(T, H, W, 3)``.
        audio_strength: Height of the group's frequency band, in log-energy units.
        audio_noise: Std of the audio background noise (half smooth, half white).
        audio_within_strength: Height of a faint time stripe telling the class within its group
            (0: audio carries no within-group information).
        video_strength: Amplitude of the class's oriented grating, in [0, 1] intensity units.
        video_noise: Std of the per-pixel video noise, in [0, 1] intensity units.
    """

    name: str = ""
    seed: int = 0
    num_classes: int = 8
    group_size: int = 2
    n_train: int = 2400
    n_val: int = 400
    n_test: int = 800
    spectrogram_shape: tuple[int, int] = (64, 48)
    frames_shape: tuple[int, int, int, int] = (3, 64, 64, 3)
    audio_strength: float = 3.0
    audio_noise: float = 1.0
    audio_within_strength: float = 0.0
    video_strength: float = 0.06
    video_noise: float = 0.25
    class_names: tuple[str, ...] = dataclasses.field(init=False, default=())
    modalities: Mapping[str, ModalitySpec] = dataclasses.field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.spectrogram_shape = tuple(self.spectrogram_shape)
        self.frames_shape = tuple(self.frames_shape)
        if self.group_size < 1 or self.num_classes % self.group_size or self.num_classes < 2:
            raise DataError(
                f"num_classes {self.num_classes} must be >= 2 and a multiple of group_size "
                f"{self.group_size}"
            )
        if min(self.n_train, self.n_val, self.n_test) < 1 or self.seed < 0:
            raise DataError("synthetic split sizes must be >= 1 and the seed >= 0")
        self.modalities = {
            "audio": ModalitySpec("spectrogram", self.spectrogram_shape),
            "video": ModalitySpec("frames", self.frames_shape),
        }
        self.class_names = tuple(
            f"group{y // self.group_size}_{y % self.group_size}" for y in range(self.num_classes)
        )
        knobs = json.dumps(self.knobs(), sort_keys=True)
        digest = hashlib.sha256(f"{_GENERATOR_VERSION}:{knobs}".encode()).hexdigest()[:12]
        self.name = f"s{self.seed}_{digest}"
        self.description = f"mlb_jax synthetic audio-video data, generator v{_GENERATOR_VERSION}"
        self.description += f", knobs {knobs}"

    def knobs(self) -> dict[str, Any]:
        """Returns the knobs as a JSON-ready dict (the cache key is a hash of it)."""
        return {name: _jsonable(getattr(self, name)) for name in knob_names()}

    def split_size(self, split: str) -> int:
        """Number of examples of a split."""
        sizes = {"train": self.n_train, "validation": self.n_val, "test": self.n_test}
        if split not in sizes:
            raise DataError(f"synthetic data has no split {split!r}: use one of {SPLITS}")
        return sizes[split]


def knob_names() -> tuple[str, ...]:
    """Names of the knobs `ensure_synthetic` and `SyntheticConfig` accept."""
    derived = {f.name for f in dataclasses.fields(AudioVideoConfig)}
    return tuple(f.name for f in dataclasses.fields(SyntheticConfig) if f.name not in derived)


def generate(config: SyntheticConfig, split: str) -> dict[str, np.ndarray]:
    """Generates one split, deterministically from the knobs.

    Args:
        config: The knobs.
        split: ``'train'``, ``'validation'`` or ``'test'``.

    Returns:
        ``{'id': str [N], 'label': int64 [N], 'audio': float32 [N, F, T],
        'video': uint8 [N, T, H, W, 3]}`` with N the split's size and labels balanced
        (every class appears ``N // K`` or ``N // K + 1`` times) in random order.
    """
    n = config.split_size(split)
    rng = np.random.default_rng([config.seed, SPLITS.index(split)])
    labels = rng.permutation(np.arange(n) % config.num_classes)
    audio = np.empty((n, *config.spectrogram_shape), np.float32)
    video = np.empty((n, *config.frames_shape), np.uint8)
    for start in range(0, n, _CHUNK):
        chunk = labels[start : start + _CHUNK]
        audio[start : start + _CHUNK] = _audio(rng, chunk, config)
        video[start : start + _CHUNK] = _video(rng, chunk, config)
    ids = np.array([f"{split}_{i:06d}" for i in range(n)])
    return {"id": ids, "label": labels.astype(np.int64), "audio": audio, "video": video}


class SyntheticAV(AudioVideoBuilder):
    """Synthetic audio-video classification data with a modality imbalance (mlb_jax)."""

    name = "synthetic_av"

    def __init__(self, *, config: SyntheticConfig | None = None, **kwargs: Any) -> None:
        """Creates the builder; ``config`` defaults to the default knobs."""
        super().__init__(config=config or SyntheticConfig(), **kwargs)

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[Any]]:
        del dl_manager  # Nothing to download or read.
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
        data = generate(self.builder_config, split)
        for i, example_id in enumerate(data["id"]):
            yield (
                str(example_id),
                {
                    "id": str(example_id),
                    "label": int(data["label"][i]),
                    "audio": data["audio"][i],
                    "video": data["video"][i],
                },
            )


def ensure_synthetic(cache_root: paths.PathLike, **knobs: Any) -> epath.Path:
    """Returns the synthetic dataset for these knobs, building it only if it is not cached.

    Args:
        cache_root: Root of the cache; the dataset lives in
            ``<cache_root>/synthetic_av/s<seed>_<hash of the knobs>/<schema version>``.
        **knobs: Any of `knob_names` (see `SyntheticConfig`); the rest keep their defaults.

    Returns:
        The version directory, ready for `load_meta`.

    Raises:
        DataError: An unknown knob or an invalid value.
    """
    unknown = sorted(set(knobs) - set(knob_names()))
    if unknown:
        raise DataError(f"unknown synthetic knob {unknown[0]!r}: known are {knob_names()}")
    config = SyntheticConfig(**knobs)
    cache_root = paths.as_path(cache_root)
    version_dir = cache_root / SyntheticAV.name / config.name / SCHEMA_VERSION
    if (version_dir / "dataset_info.json").is_file():
        return version_dir
    try:
        return prepare(SyntheticAV, data_dir=cache_root, config=config)
    except OSError:
        # Another process built the same dataset at the same time and renamed its copy into
        # place first: TFDS's final rename then fails here, and theirs is as good as ours.
        if (version_dir / "dataset_info.json").is_file():
            return version_dir
        raise


def _jsonable(value: Any) -> Any:
    """Tuples become lists so that the knobs hash the same after a JSON round trip."""
    return list(value) if isinstance(value, tuple) else value


def _smooth_noise(rng: np.random.Generator, n: int, rows: int, cols: int, cell: int) -> np.ndarray:
    """Unit-variance noise ``[n, rows, cols]`` that varies smoothly over ``cell`` samples.

    Coarse Gaussian noise on a grid of spacing ``cell``, bilinearly interpolated and rescaled
    so that the variance is 1 everywhere (interpolation shrinks it between grid points).
    """
    coarse = rng.standard_normal((n, rows // cell + 2, cols // cell + 2), dtype=np.float32)
    r = np.arange(rows) / cell
    c = np.arange(cols) / cell
    ri, ra = r.astype(int), (r % 1).astype(np.float32)
    ci, ca = c.astype(int), (c % 1).astype(np.float32)
    x = coarse[:, ri, :] * (1 - ra)[:, None] + coarse[:, ri + 1, :] * ra[:, None]
    x = x[:, :, ci] * (1 - ca) + x[:, :, ci + 1] * ca
    variance = ((1 - ra) ** 2 + ra**2)[:, None] * ((1 - ca) ** 2 + ca**2)[None, :]
    return x / np.sqrt(variance)


def _gaussian(x: np.ndarray, centre: np.ndarray | float, width: float) -> np.ndarray:
    """Unnormalised Gaussian bump of height 1."""
    return np.exp(-0.5 * ((x - centre) / width) ** 2)


def _audio(rng: np.random.Generator, labels: np.ndarray, c: SyntheticConfig) -> np.ndarray:
    """Log-spectrogram-like audio ``[n, F, T]``: the group is a strong horizontal band.

    Background: energy falling with frequency plus smooth and white noise (std
    ``audio_noise``). Group g puts a band of height ``audio_strength`` at frequency
    ``(g + 1) F / (G + 1)`` (jittered, with a slowly varying loudness); the class within the
    group adds a faint vertical stripe at time ``(w + 1) T / (group_size + 1)`` of height
    ``audio_within_strength``.
    """
    n = len(labels)
    freq_bins, steps = c.spectrogram_shape
    groups = c.num_classes // c.group_size
    group, within = labels // c.group_size, labels % c.group_size
    f = np.arange(freq_bins, dtype=np.float32)[None, :, None]
    t = np.arange(steps, dtype=np.float32)[None, None, :]
    noise = _smooth_noise(rng, n, freq_bins, steps, cell=8)
    noise += rng.standard_normal((n, freq_bins, steps), dtype=np.float32)
    background = -2.0 * f / freq_bins + c.audio_noise * noise / np.sqrt(2.0)
    band_width = freq_bins / (4.0 * (groups + 1))
    centre = (group + 1) * freq_bins / (groups + 1) + rng.uniform(-0.5, 0.5, n) * band_width
    band = _gaussian(f, centre[:, None, None], band_width)
    loudness = 1.0 + 0.3 * _smooth_noise(rng, n, 1, steps, cell=8)
    stripe_width = steps / (4.0 * (c.group_size + 1))
    stripe = _gaussian(t, ((within + 1) * steps / (c.group_size + 1))[:, None, None], stripe_width)
    audio = background + c.audio_strength * band * loudness + c.audio_within_strength * stripe
    return audio.astype(np.float32)


def _video(rng: np.random.Generator, labels: np.ndarray, c: SyntheticConfig) -> np.ndarray:
    """Video ``[n, T, H, W, 3]`` uint8: the class is the orientation of a faint, drifting grating.

    Class (g, w) (group g, index w within it) has orientation ``pi (w G + g) / K``, so the
    classes of one group are far apart in orientation; the grating has a random phase, period
    about ``min(H, W) / 6`` and drift, amplitude ``video_strength``, on a random colour tint
    with per-pixel noise of std ``video_noise``. The random phase makes the class invisible to
    any linear function of the pixels: it takes learned texture detectors.
    """
    n = len(labels)
    frames, height, width, _ = c.frames_shape
    groups = c.num_classes // c.group_size
    group, within = labels // c.group_size, labels % c.group_size
    theta = np.pi * (within * groups + group) / c.num_classes
    period = min(height, width) / 6.0 * rng.uniform(0.9, 1.1, n)
    phase = rng.uniform(0.0, 2.0 * np.pi, n)
    drift = rng.uniform(-np.pi / 4, np.pi / 4, n)  # Phase change per frame.
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    along = (x[None] * np.cos(theta)[:, None, None] + y[None] * np.sin(theta)[:, None, None]) * (
        2.0 * np.pi / period
    )[:, None, None]
    step = np.arange(frames, dtype=np.float32)[None, :, None, None]
    angle = along[:, None] + (phase[:, None, None, None] + drift[:, None, None, None] * step)
    grating = np.sin(angle, dtype=np.float32)[..., None]
    tint = rng.uniform(0.3, 0.7, (n, 1, 1, 1, 3)).astype(np.float32)
    noise = rng.standard_normal((n, frames, height, width, 3), dtype=np.float32)
    video = tint + c.video_strength * grating + c.video_noise * noise
    return np.clip(np.rint(video * 255.0), 0, 255).astype(np.uint8)
