"""Decode one media file with PyAV and turn it into a stored feature: a log spectrogram or frames.

Audio: decode the first audio track, average the channels, resample with librosa (soxr, as
`librosa.load` does in the reference code), optionally cut an event segment, crop/tile/pad to a
fixed number of samples *before* the transform (AAC and MP3 decode to a few extra samples),
clip to [-1, 1], then one of the two reference front-ends: librosa STFT log-magnitude
(CREMA-D, UCF101) or scipy log-PSD (AVE). Video: the first frame of every whole second
(1 fps), resized and converted to RGB uint8. Arrays (``.npy``, numpy only): a float ``[T, D]``
array becomes a float32 sequence (checked, cut to a maximum length); a uint8 / uint16
``[T, H, W(, C)]`` array becomes frames of a fixed count and size (sampled, resized with PyAV's
area interpolation, dtype and channels kept). `decode` picks the function from the settings'
type (`Settings`).

Every problem with a file raises `MediaError` (message: the file and the reason), so the
converter can count it instead of crashing. This module must not import TensorFlow: it runs in
the decode worker processes.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Iterator
from typing import Literal

import av
import numpy as np
import scipy.signal

# Imported by name, not used as librosa.<fn>: librosa loads its submodules at first attribute
# access; loading them here makes a decode worker pay that once, when it starts, not inside the
# timing of its first clip.
from librosa import resample, stft

# Added before the logarithm, as in the reference code: ln(x + 1e-7).
LOG_EPS = 1e-7


class MediaError(ValueError):
    """A media file that cannot be turned into a feature; the message names file and reason."""

    def __init__(self, path: str | pathlib.Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class NoAudioError(MediaError):
    """The file has no audio track, or the requested part of it holds fewer than 2 samples."""


class TooFewFramesError(MediaError):
    """The video has fewer frames than requested in the requested time window."""


class BadArrayError(MediaError):
    """A ``.npy`` file that cannot be stored as its modality's array.

    Missing, unreadable, of the wrong dtype / rank / size, empty, or not finite; the reason
    names the modality (the manifest column: "column 'mfcc': ...").
    """


@dataclasses.dataclass(frozen=True)
class AudioSettings:
    """How a waveform becomes a spectrogram.

    Attributes:
        sample_rate: rate the audio is resampled to, Hz.
        num_samples: length the (segment of the) waveform is brought to before the transform.
        fit: 'tile' repeats a shorter waveform cyclically (reference CREMA-D, AVE);
            'pad' appends zeros. Both crop a longer waveform to its first `num_samples`.
        transform: 'log_stft' = ln(|STFT| + 1e-7), Hann window, centred with reflect padding
            (librosa); 'log_psd' = ln(PSD + 1e-7) from scipy.signal.spectrogram (Tukey(0.25)
            window, constant detrend, density scaling, no centring).
        n_fft: window length in samples; gives n_fft // 2 + 1 frequency bins.
        hop_length: hop in samples.
    """

    sample_rate: int
    num_samples: int
    fit: Literal["tile", "pad"]
    transform: Literal["log_stft", "log_psd"] = "log_stft"
    n_fft: int = 512
    hop_length: int = 353

    def __post_init__(self):
        if self.fit not in ("tile", "pad"):
            raise ValueError(f"AudioSettings.fit must be 'tile' or 'pad', got {self.fit!r}")
        if self.transform not in ("log_stft", "log_psd"):
            raise ValueError(
                f"AudioSettings.transform must be 'log_stft' or 'log_psd', got {self.transform!r}"
            )
        if not 0 < self.hop_length <= self.n_fft <= self.num_samples:
            raise ValueError(
                f"AudioSettings needs 0 < hop_length <= n_fft <= num_samples, got hop_length="
                f"{self.hop_length}, n_fft={self.n_fft}, num_samples={self.num_samples}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """[frequency bins, time frames] of the spectrogram."""
        if self.transform == "log_stft":  # centred: one frame per hop, plus one
            frames = 1 + self.num_samples // self.hop_length
        else:  # scipy: only whole windows
            frames = 1 + (self.num_samples - self.n_fft) // self.hop_length
        return (self.n_fft // 2 + 1, frames)


@dataclasses.dataclass(frozen=True)
class FrameSettings:
    """How a video becomes a fixed number of frames.

    Attributes:
        num_frames: frames kept: the first frame of each of the first `num_frames` whole
            seconds of the window.
        height: output height in pixels (frames are resized to exactly height x width: the
            source's aspect ratio is kept only if they share it; the defaults do, see
            `data_prep.common.DEFAULT_FRAME_SIZE`).
        width: output width in pixels.
        top_up: when the window has fewer whole seconds than `num_frames`, add frames evenly
            spaced over the remaining frames of the window (the reference adds random ones:
            CREMA-D, AVE); if False such a video raises `TooFewFramesError` (reference UCF
            drops it).
    """

    num_frames: int
    height: int
    width: int
    top_up: bool

    def __post_init__(self):
        if min(self.num_frames, self.height, self.width) < 1:
            raise ValueError(f"FrameSettings needs positive sizes, got {self}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """[T, H, W, 3]."""
        return (self.num_frames, self.height, self.width, 3)


def _open(path: pathlib.Path) -> av.container.InputContainer:
    if not path.is_file():
        raise MediaError(path, "file not found")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as e:
        raise MediaError(path, f"cannot be opened as media ({e.strerror or e})") from e


def load_audio(path: str | pathlib.Path, sample_rate: int) -> np.ndarray:
    """Decode the first audio track, average its channels and resample.

    Args:
        path: any file PyAV can demux (wav, flac, mp3, mp4, avi, flv, ...).
        sample_rate: output rate, Hz.

    Returns:
        float32 [num_samples] mono waveform, nominally in [-1, 1].

    Raises:
        NoAudioError: the file has no audio track.
        MediaError: the file is missing or cannot be decoded.
    """
    path = pathlib.Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise NoAudioError(path, "has no audio track")
        stream = container.streams.audio[0]
        # Planar float keeps every codec's samples on one scale with channels on axis 0.
        resampler = av.AudioResampler(format="fltp")
        chunks = []
        try:
            for frame in container.decode(stream):
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
        except av.error.FFmpegError as e:
            raise MediaError(path, f"audio cannot be decoded ({e.strerror or e})") from e
        native_rate = stream.codec_context.sample_rate
    if not chunks:
        return np.zeros(0, np.float32)
    wave = np.concatenate(chunks, axis=1).mean(axis=0)
    if native_rate != sample_rate:
        wave = resample(wave, orig_sr=native_rate, target_sr=sample_rate)
    return wave.astype(np.float32)


def fit_length(wave: np.ndarray, num_samples: int, fit: Literal["tile", "pad"]) -> np.ndarray:
    """Crop to the first `num_samples`, or lengthen by cyclic repetition ('tile') or zeros ('pad').

    Args:
        wave: [n] with n >= 1.
        num_samples: output length.
        fit: 'tile' or 'pad'.

    Returns:
        [num_samples], same dtype.
    """
    if fit == "tile":
        return np.resize(wave, num_samples)  # repeats cyclically, then crops
    return np.pad(wave[:num_samples], (0, max(0, num_samples - wave.shape[0])))


def spectrogram(wave: np.ndarray, settings: AudioSettings) -> np.ndarray:
    """Log spectrogram of a waveform already brought to `settings.num_samples`.

    Args:
        wave: float [settings.num_samples].
        settings: transform and window.

    Returns:
        float32 `settings.shape` = [n_fft // 2 + 1, frames].
    """
    if settings.transform == "log_stft":
        spec = stft(
            wave,
            n_fft=settings.n_fft,
            hop_length=settings.hop_length,
            window="hann",
            center=True,
            pad_mode="reflect",  # librosa >= 0.10 defaults to zeros; the reference padded so
        )
        return np.log(np.abs(spec) + LOG_EPS).astype(np.float32)
    _, _, psd = scipy.signal.spectrogram(
        wave,
        fs=settings.sample_rate,
        nperseg=settings.n_fft,
        noverlap=settings.n_fft - settings.hop_length,
    )
    return np.log(psd + LOG_EPS).astype(np.float32)


def audio_features(
    path: str | pathlib.Path,
    settings: AudioSettings,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
) -> np.ndarray:
    """Log spectrogram of the segment [start_s, end_s) of a file's audio.

    Args:
        path: media file with an audio track.
        settings: rate, length and transform.
        start_s: segment start in seconds.
        end_s: segment end in seconds (exclusive); None = end of the audio.

    Returns:
        float32 `settings.shape`.

    Raises:
        NoAudioError: no audio track, or fewer than 2 samples in the segment.
        MediaError: the file is missing or cannot be decoded.
    """
    wave = load_audio(path, settings.sample_rate)
    total = wave.shape[0]
    start = int(start_s * settings.sample_rate)
    wave = wave[start : None if end_s is None else int(end_s * settings.sample_rate)]
    if wave.shape[0] < 2:  # the reference treats a 1-sample array as "no audio"
        where = "" if (start_s, end_s) == (0.0, None) else f" in [{start_s:g} s, {end_s:g} s)"
        raise NoAudioError(path, f"audio is empty{where} ({total} samples in the file)")
    wave = np.clip(fit_length(wave, settings.num_samples, settings.fit), -1.0, 1.0)
    return spectrogram(wave, settings)


def _frame_times(container: av.container.InputContainer, path: pathlib.Path) -> Iterator:
    """Yield (i / frame rate, av.VideoFrame) for the i-th decoded frame.

    Time comes from the frame index, as in the reference code (frame i is in second k when
    i // fps == k), not from timestamps: muxers shift timestamps to make room for audio priming
    (an AVI with MP3 starts its video 2 frames late), which would move every 1 fps pick.
    """
    if not container.streams.video:
        raise MediaError(path, "has no video track")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise MediaError(path, "video frame rate is unknown")
    try:
        for i, frame in enumerate(container.decode(stream)):
            yield i / float(rate), frame
    except av.error.FFmpegError as e:
        raise MediaError(path, f"video cannot be decoded ({e.strerror or e})") from e


def _rgb(frame: av.VideoFrame, settings: FrameSettings) -> np.ndarray:
    # AREA averages source pixels when shrinking (anti-aliased, like Resize(antialias=True)).
    out = frame.reformat(
        width=settings.width, height=settings.height, format="rgb24", interpolation="AREA"
    )
    return out.to_ndarray()


def sample_frames(
    path: str | pathlib.Path,
    settings: FrameSettings,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
) -> np.ndarray:
    """The first frame of each whole second in [start_s, end_s], resized, RGB.

    Seconds ceil(start_s), ceil(start_s) + 1, ... up to end_s inclusive (the reference's
    "[Start, End]" for AVE); the frame of second k is the first one at or after k s, frame i
    being at i / (average frame rate). Only the first `settings.num_frames` such seconds are
    kept. With fewer seconds and
    `settings.top_up`, frames evenly spaced over the other frames in [start_s, end_s) are
    added, and the result is in time order.

    Args:
        path: video file.
        settings: number of frames, output size, top-up rule.
        start_s: window start, seconds.
        end_s: window end, seconds (inclusive for the 1 fps frames); None = end of video.

    Returns:
        uint8 `settings.shape` = [T, H, W, 3].

    Raises:
        TooFewFramesError: not enough frames in the window.
        MediaError: the file is missing, has no video track or cannot be decoded.
    """
    path = pathlib.Path(path)
    stop = math.inf if end_s is None else end_s + 1  # frames at or after `stop` are not needed
    picked: dict[int, np.ndarray] = {}  # decode index -> frame
    window: list[int] = []  # decode indices of the frames in [start_s, end_s)
    with _open(path) as container:
        next_second = math.ceil(start_s)
        for i, (t, frame) in enumerate(_frame_times(container, path)):
            if t >= stop or len(picked) == settings.num_frames:
                break
            if t >= next_second:
                picked[i] = _rgb(frame, settings)
                next_second = math.floor(t) + 1
            if start_s <= t < (math.inf if end_s is None else end_s):
                window.append(i)
    missing = settings.num_frames - len(picked)
    if missing:
        where = f"in [{start_s:g} s, {'end' if end_s is None else f'{end_s:g} s'}]"
        rest = [i for i in window if i not in picked]
        if not settings.top_up or len(rest) < missing:
            raise TooFewFramesError(
                path,
                f"video is too short: {len(picked)} frames at 1 fps ({len(window)} frames in all)"
                f" {where}, {settings.num_frames} requested",
            )
        # Centres of `missing` equal bins over the unpicked frames: deterministic, spread out.
        extra = {rest[int((j + 0.5) * len(rest) / missing)] for j in range(missing)}
        with _open(path) as container:
            for i, (_, frame) in enumerate(_frame_times(container, path)):
                if i in extra:
                    picked[i] = _rgb(frame, settings)
                if i >= max(extra):
                    break
    return np.stack([picked[i] for i in sorted(picked)])


# --- Arrays (.npy) ----------------------------------------------------------------------------

SEQUENCE_DTYPES = ("float16", "float32", "float64")
FRAME_DTYPES = ("uint8", "uint16")
FRAME_CHANNELS = (1, 3)
# PyAV pixel formats of the frame arrays that are resized: (dtype, channels) -> format.
_PIXEL_FORMATS = {
    ("uint8", 1): "gray",
    ("uint8", 3): "rgb24",
    ("uint16", 1): "gray16le",
    ("uint16", 3): "rgb48le",
}


@dataclasses.dataclass(frozen=True)
class SequenceSettings:
    """How a float ``[T, D]`` ``.npy`` array becomes a stored sequence.

    Attributes:
        width: D, the features per step every array of the modality has.
        max_length: T_max, the stored maximum length; a longer array is brought to it by `fit`.
        fit: 'crop' keeps the first `max_length` steps; 'resample' interpolates all T steps
            linearly onto `max_length` evenly spaced positions (first and last kept).
    """

    width: int
    max_length: int
    fit: Literal["crop", "resample"] = "crop"

    def __post_init__(self):
        if min(self.width, self.max_length) < 1:
            raise ValueError(f"SequenceSettings needs positive sizes, got {self}")
        if self.fit not in ("crop", "resample"):
            raise ValueError(f"SequenceSettings.fit must be 'crop' or 'resample', got {self.fit!r}")

    @property
    def shape(self) -> tuple[int, int]:
        """[T_max, D]."""
        return (self.max_length, self.width)


@dataclasses.dataclass(frozen=True)
class ArrayFrameSettings:
    """How a uint8 / uint16 ``[T, H, W]`` or ``[T, H, W, C]`` ``.npy`` array becomes frames.

    Attributes:
        num_frames: T stored: frames at the centres of `num_frames` equal parts of the array's
            T (all of them, in order, when T == num_frames; repeated when T is smaller).
        height: stored height; other sizes are resized (PyAV, area interpolation).
        width: stored width.
        channels: C, 1 (grayscale, depth) or 3 (RGB); a [T, H, W] array has C = 1.
        dtype: 'uint8' (stored as JPEG) or 'uint16' (depth, stored exactly); never converted.
    """

    num_frames: int
    height: int
    width: int
    channels: int
    dtype: Literal["uint8", "uint16"]

    def __post_init__(self):
        if min(self.num_frames, self.height, self.width) < 1:
            raise ValueError(f"ArrayFrameSettings needs positive sizes, got {self}")
        if self.channels not in FRAME_CHANNELS or self.dtype not in FRAME_DTYPES:
            raise ValueError(f"ArrayFrameSettings needs C 1 or 3 and uint8 / uint16, got {self}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """[T, H, W, C]."""
        return (self.num_frames, self.height, self.width, self.channels)


Settings = AudioSettings | FrameSettings | SequenceSettings | ArrayFrameSettings


def decode(
    path: str | pathlib.Path,
    settings: Settings,
    *,
    column: str,
    start_s: float = 0.0,
    end_s: float | None = None,
) -> np.ndarray:
    """One cell of an example -> its stored array, by the type of `settings`.

    Args:
        path: the file.
        settings: `AudioSettings` (the file's audio -> spectrogram), `FrameSettings` (video ->
            RGB frames), `SequenceSettings` / `ArrayFrameSettings` (a ``.npy`` array).
        column: the modality name, for the messages of ``.npy`` cells.
        start_s: window start in seconds (audio and video files).
        end_s: window end in seconds; None = the end (audio and video files).

    Returns:
        The array (`audio_features`, `sample_frames`, `load_sequence`, `load_frames`).

    Raises:
        MediaError: the file cannot be turned into the feature.
    """
    if isinstance(settings, AudioSettings):
        return audio_features(path, settings, start_s=start_s, end_s=end_s)
    if isinstance(settings, FrameSettings):
        return sample_frames(path, settings, start_s=start_s, end_s=end_s)
    if isinstance(settings, SequenceSettings):
        return load_sequence(path, settings, column=column)
    if isinstance(settings, ArrayFrameSettings):
        return load_frames(path, settings, column=column)
    raise TypeError(f"unknown settings type {type(settings).__name__}")


def _load_npy(path: pathlib.Path, column: str) -> np.ndarray:
    """The whole array of a ``.npy`` file (no pickles)."""
    if not path.is_file():
        raise BadArrayError(path, f"column {column!r}: missing file")
    if path.suffix.lower() != ".npy":
        raise BadArrayError(
            path, f"column {column!r}: is not a .npy file (the column holds arrays)"
        )
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        first = (str(e).splitlines() or [""])[0]
        raise BadArrayError(
            path, f"column {column!r}: cannot be read as .npy ({type(e).__name__}: {first})"
        ) from e
    if not isinstance(array, np.ndarray):  # an .npz under a .npy name
        raise BadArrayError(path, f"column {column!r}: is not a single .npy array")
    return array


def array_dtype_problem(dtype: np.dtype) -> str | None:
    """Why a ``.npy`` dtype is neither a sequence's nor frames', or None if it is one of them."""
    if str(dtype) in SEQUENCE_DTYPES + FRAME_DTYPES:
        return None
    return f"dtype {dtype} is not float or uint8/uint16"


def load_sequence(
    path: str | pathlib.Path, settings: SequenceSettings, *, column: str
) -> np.ndarray:
    """A float ``[T, D]`` ``.npy`` array, checked, as float32 ``[min(T, T_max), D]``.

    Args:
        path: the ``.npy`` file.
        settings: D, T_max and how a longer array is fitted.
        column: the modality name (in the messages).

    Returns:
        float32 ``[T, D]`` with T <= ``settings.max_length`` (unpadded).

    Raises:
        BadArrayError: missing or unreadable file, dtype not float, rank not 2, T = 0, another
            D, NaN or inf (after the cast to float32).
    """
    path = pathlib.Path(path)
    array = _load_npy(path, column)
    where = f"column {column!r}"
    problem = array_dtype_problem(array.dtype)
    if problem is None and str(array.dtype) not in SEQUENCE_DTYPES:
        problem = f"dtype {array.dtype} is not float (the column holds sequences)"
    if problem:
        raise BadArrayError(path, f"{where}: {problem}")
    if array.ndim != 2:
        raise BadArrayError(
            path, f"{where}: wrong rank {array.ndim} for a sequence (expected [T, D])"
        )
    if array.shape[0] == 0:
        raise BadArrayError(path, f"{where}: empty (T = 0)")
    if array.shape[1] != settings.width:
        raise BadArrayError(
            path,
            f"{where}: width D={array.shape[1]} differs from the column's D={settings.width}",
        )
    values = array.astype(np.float32)
    if np.isnan(values).any():
        raise BadArrayError(path, f"{where}: contains NaN")
    if np.isinf(values).any():
        raise BadArrayError(path, f"{where}: contains inf (or values beyond float32's range)")
    return fit_sequence(values, settings.max_length, settings.fit)


def fit_sequence(
    values: np.ndarray, max_length: int, fit: Literal["crop", "resample"]
) -> np.ndarray:
    """Brings a ``[T, D]`` sequence longer than `max_length` to it; a shorter one is unchanged.

    Args:
        values: float32 ``[T, D]``, T >= 1.
        max_length: the longest sequence kept.
        fit: 'crop' (the first `max_length` steps) or 'resample' (linear interpolation onto
            `max_length` evenly spaced positions of [0, T - 1]; the first and last step kept).

    Returns:
        float32 ``[min(T, max_length), D]``.
    """
    length = values.shape[0]
    if length <= max_length:
        return values
    if fit == "crop":
        return values[:max_length]
    positions = np.arange(max_length) * ((length - 1) / max(max_length - 1, 1))
    low = np.floor(positions).astype(int)
    high = np.minimum(low + 1, length - 1)
    weight = (positions - low)[:, None]
    out = values[low].astype(np.float64) * (1 - weight) + values[high] * weight
    return out.astype(np.float32)


def load_frames(
    path: str | pathlib.Path, settings: ArrayFrameSettings, *, column: str
) -> np.ndarray:
    """A uint8 / uint16 ``[T, H, W]`` or ``[T, H, W, C]`` ``.npy`` array as frames.

    Args:
        path: the ``.npy`` file.
        settings: the stored T, H, W, C and dtype.
        column: the modality name (in the messages).

    Returns:
        `settings.shape`, `settings.dtype`: ``settings.num_frames`` frames sampled evenly over T
        (`frame_indices`), resized to H x W if the array's size differs.

    Raises:
        BadArrayError: missing or unreadable file, a dtype other than uint8 / uint16 or than
            the column's, rank not 3 or 4, C not the column's, T, H or W = 0.
    """
    path = pathlib.Path(path)
    array = _load_npy(path, column)
    where = f"column {column!r}"
    dtype = str(array.dtype)
    problem = array_dtype_problem(array.dtype)
    if problem is None and dtype not in FRAME_DTYPES:
        problem = f"dtype {dtype} is not uint8/uint16 (the column holds frames)"
    if problem:
        raise BadArrayError(path, f"{where}: {problem}")
    if array.ndim not in (3, 4):
        raise BadArrayError(
            path,
            f"{where}: wrong rank {array.ndim} for frames (expected [T, H, W] or [T, H, W, C])",
        )
    if array.ndim == 3:
        array = array[..., None]
    if 0 in array.shape[:3]:
        t, h, w = array.shape[:3]
        what = "T = 0" if t == 0 else f"H x W = {h} x {w}"
        raise BadArrayError(path, f"{where}: empty ({what})")
    if dtype != settings.dtype:
        raise BadArrayError(
            path, f"{where}: dtype {dtype} differs from the column's {settings.dtype}"
        )
    if array.shape[3] != settings.channels:
        raise BadArrayError(
            path,
            f"{where}: C={array.shape[3]} channels differ from the column's C={settings.channels}",
        )
    array = np.asarray(array[frame_indices(array.shape[0], settings.num_frames)])
    if array.shape[1:3] != (settings.height, settings.width):
        pixel_format = _PIXEL_FORMATS[dtype, settings.channels]
        array = np.stack([_resize(frame, settings, pixel_format) for frame in array])
    return np.ascontiguousarray(array)


def frame_indices(length: int, num_frames: int) -> np.ndarray:
    """Indices of the frames kept: the centres of `num_frames` equal parts of [0, length).

    All frames in order when ``num_frames == length``; evenly spread when fewer are kept;
    repeated when more are kept than there are.
    """
    return ((np.arange(num_frames) + 0.5) * length / num_frames).astype(int)


def _resize(frame: np.ndarray, settings: ArrayFrameSettings, pixel_format: str) -> np.ndarray:
    # The video path's area interpolation, in the array's own dtype and channels.
    image = frame[..., 0] if frame.shape[-1] == 1 else frame
    out = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=pixel_format).reformat(
        width=settings.width, height=settings.height, format=pixel_format, interpolation="AREA"
    )
    return out.to_ndarray().reshape(settings.height, settings.width, settings.channels)
