"""Decode one media file with PyAV and turn it into a stored feature: a log spectrogram or frames.

Audio: decode the first audio track, average the channels, resample with librosa (soxr, as
`librosa.load` does in the reference code), optionally cut an event segment, crop/tile/pad to a
fixed number of samples *before* the transform (AAC and MP3 decode to a few extra samples),
clip to [-1, 1], then one of the two reference front-ends: librosa STFT log-magnitude
(CREMA-D, UCF101) or scipy log-PSD (AVE). Video: the first frame of every whole second
(1 fps), resized and converted to RGB uint8.

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
