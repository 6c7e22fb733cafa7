"""Write small real media files and fake raw copies of CREMA-D, AVE and UCF101 for tests.

Media are encoded for real (soundfile for WAV/FLAC, PyAV for MP4/AVI/FLV with mpeg4/flv1 video
and AAC/MP3/PCM audio), so the converters decode them exactly as they decode the real
downloads. Every video frame is one flat colour whose red channel encodes the second it
belongs to (`second_value`), so a test can tell which seconds a converter sampled. The dataset
layouts, split-file formats and file names follow data_prep/README.md.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np
import soundfile as sf

# Green and blue of every fake frame; red encodes the second (see `second_value`).
_GREEN, _BLUE = 128, 64


def second_value(second: int) -> int:
    """Red-channel value of every frame shown during whole second `second` of a fake video.

    Distinct for seconds 0-5 (20, 60, ..., 220); later seconds wrap around modulo 256.
    """
    return (20 + 40 * second) % 256


def tone(seconds: float, sample_rate: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    """A sine tone of amplitude 0.5.

    Returns:
        float32 [num_samples, channels], num_samples = round(seconds * sample_rate).
    """
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1)


def write_audio(
    path: pathlib.Path, seconds: float, sample_rate: int = 16000, channels: int = 1
) -> pathlib.Path:
    """Write a tone as WAV or FLAC (format from the suffix) with soundfile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, sample_rate, channels), sample_rate, subtype="PCM_16")
    return path


def write_video(
    path: pathlib.Path,
    seconds: float,
    *,
    fps: int = 25,
    size: tuple[int, int] = (32, 24),
    video_codec: str = "mpeg4",
    audio_codec: str | None = None,
    sample_rate: int = 16000,
    channels: int = 1,
) -> pathlib.Path:
    """Write a video (container from the suffix: .mp4, .avi, .flv, .mkv) with PyAV.

    Args:
        path: output file.
        seconds: duration; the video has round(seconds * fps) frames.
        fps: frame rate.
        size: (width, height) in pixels; even numbers.
        video_codec: 'mpeg4', 'flv1' or 'libx264'.
        audio_codec: None for no audio track, else 'aac', 'mp3' or 'pcm_s16le'.
        sample_rate: audio rate in Hz.
        channels: audio channels.

    Returns:
        `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    with av.open(str(path), "w") as container:
        video = container.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = None
        if audio_codec is not None:
            audio = container.add_stream(audio_codec, rate=sample_rate)
            audio.layout = "mono" if channels == 1 else "stereo"
        for i in range(round(seconds * fps)):
            rgb = np.empty((height, width, 3), np.uint8)
            rgb[...] = (second_value(i // fps), _GREEN, _BLUE)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if audio is not None:
            _encode_audio(container, audio, tone(seconds, sample_rate, channels))
    return path


def _encode_audio(container, stream, wave: np.ndarray) -> None:
    """Encode float32 [N, C] samples in 1024-sample frames: planar float if the codec takes it
    (AAC, MP3), else packed int16 (PCM)."""
    planar = "fltp" in [f.name for f in stream.codec_context.codec.audio_formats]
    if not planar:
        wave = (wave * 32767).astype(np.int16)
    for start in range(0, wave.shape[0], 1024):
        chunk = wave[start : start + 1024]
        data = chunk.T if planar else chunk.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(data),
            format="fltp" if planar else "s16",
            layout=stream.layout.name,
        )
        frame.sample_rate, frame.pts = stream.codec_context.sample_rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def write_corrupt(path: pathlib.Path, size: int = 2048) -> pathlib.Path:
    """Write bytes that no demuxer accepts, under a media file name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size, np.uint8).tobytes())
    return path


# --- Fake raw datasets ------------------------------------------------------------------------

CREMAD_ACTORS = {"train": (1001, 1002, 1003), "val": (1004,), "test": (1005,)}
CREMAD_EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")


def make_fake_cremad(
    root: pathlib.Path, *, seconds: float = 1.4, size: tuple[int, int] = (32, 24), fps: int = 10
) -> dict[str, list[str]]:
    """Write a fake CREMA-D: AudioWAV/*.wav (16 kHz mono), VideoFlash/*.flv, VALV split file.

    Two clips per actor (two emotions each). The split file `data_splits_VALV.pkl` is JSON text
    with `<clip>.wav-<k>` entries and the five fold keys "1"…"5", all equal to the
    speaker-disjoint split of `CREMAD_ACTORS`.

    Returns:
        split -> clip names of fold "1" (key for --fold=0).
    """
    splits: dict[str, list[str]] = {}
    for i, (split, actors) in enumerate(CREMAD_ACTORS.items()):
        clips = []
        for actor in actors:
            for j, emo in enumerate(CREMAD_EMOTIONS[i : i + 2]):
                clips.append(f"{actor}_{('IEO', 'TIE')[j]}_{emo}_XX")
        splits[split] = clips
    for clip in [c for clips in splits.values() for c in clips]:
        write_audio(root / "AudioWAV" / f"{clip}.wav", seconds, 16000)
        write_video(
            root / "VideoFlash" / f"{clip}.flv", seconds, fps=fps, size=size, video_codec="flv1"
        )
    folds = {
        str(k): {
            s: [f"{c}.wav-{CREMAD_EMOTIONS.index(c.split('_')[2])}" for c in clips]
            for s, clips in splits.items()
        }
        for k in range(1, 6)
    }
    (root / "data_splits_VALV.pkl").write_text(json.dumps(folds))
    return splits


AVE_ROWS = {
    # (category, video id, start, end, clip seconds)
    "train": [
        ("Church bell", "aaaaaaaaaa1", 0, 5, 5.0),
        ("Violin, fiddle", "aaaaaaaaaa2", 1, 3, 3.0),
        ("Violin, fiddle", "aaaaaaaaaa2", 0, 3, 3.0),  # duplicate id: first row wins
        ("Rodents, rats, mice", "aaaaaaaaaa3", 0, 4, 4.0),
    ],
    "validation": [("Bark", "bbbbbbbbbb1", 0, 4, 4.0)],
    "test": [("Mandolin", "ccccccccccc", 1, 5, 5.0), ("Cat", "ccccccccccd", 0, 4, 4.0)],
}
AVE_FILES = {"train": "trainSet.txt", "validation": "valSet.txt", "test": "testSet.txt"}


def make_fake_ave(
    root: pathlib.Path, *, size: tuple[int, int] = (32, 24), fps: int = 5
) -> dict[str, list[tuple[str, str, int, int, float]]]:
    """Write a fake AVE_Dataset/: AVE/<id>.mp4 (mpeg4 + AAC 44.1 kHz stereo), split files.

    Rows follow `Category&VideoID&Quality&StartTime&EndTime` with CRLF endings, plus
    `Annotations.txt` (header line + all rows). Clips are shorter than the real 10 s.

    Returns:
        `AVE_ROWS` (split -> rows).
    """
    header = "Category&VideoID&Quality&StartTime&EndTime"
    all_rows = []
    for split, rows in AVE_ROWS.items():
        lines = [f"{cat}&{vid}&good&{start}&{end}" for cat, vid, start, end, _ in rows]
        (root / AVE_FILES[split]).parent.mkdir(parents=True, exist_ok=True)
        (root / AVE_FILES[split]).write_bytes(("\r\n".join(lines) + "\r\n").encode())
        all_rows += lines
        for _, vid, _, _, seconds in rows:
            write_video(
                root / "AVE" / f"{vid}.mp4",
                seconds,
                fps=fps,
                size=size,
                audio_codec="aac",
                sample_rate=44100,
                channels=2,
            )
    (root / "Annotations.txt").write_text("\n".join([header, *all_rows]) + "\n")
    return AVE_ROWS


# The 50 UCF50 classes: in UCF101 but without audio (data_prep/README.md, "UCF101-51").
UCF50 = (
    "BaseballPitch", "Basketball", "BenchPress", "Biking", "Billiards", "BreastStroke",
    "CleanAndJerk", "Diving", "Drumming", "Fencing", "GolfSwing", "HighJump", "HorseRace",
    "HorseRiding", "HulaHoop", "JavelinThrow", "JugglingBalls", "JumpingJack", "JumpRope",
    "Kayaking", "Lunges", "MilitaryParade", "Mixing", "Nunchucks", "PizzaTossing", "PlayingGuitar",
    "PlayingPiano", "PlayingTabla", "PlayingViolin", "PoleVault", "PommelHorse", "PullUps", "Punch",
    "PushUps", "RockClimbingIndoor", "RopeClimbing", "Rowing", "SalsaSpin", "SkateBoarding",
    "Skiing", "Skijet", "SoccerJuggling", "Swing", "TaiChi", "TennisSwing", "ThrowDiscus",
    "TrampolineJumping", "VolleyballSpiking", "WalkingWithDog", "YoYo",
)  # fmt: skip
# Classes with clips in the fake UCF101: three of the 51 with audio and one UCF50 class.
UCF_CLASSES = ("ApplyEyeMakeup", "BaseballPitch", "HandstandPushups", "Rafting")


def ucf_class_index(with_audio: Sequence[str]) -> list[str]:
    """The 101 class names in official classInd.txt order (case-insensitive alphabetical)."""
    return sorted([*with_audio, *UCF50], key=str.lower)


def ucf_clip(cls: str, group: int, clip: int) -> str:
    """`<Class>/v_<Class>_gGG_cCC.avi`, with the real `HandStandPushups` file-name spelling."""
    stem = "HandStandPushups" if cls == "HandstandPushups" else cls
    return f"{cls}/v_{stem}_g{group:02d}_c{clip:02d}.avi"


# Clips of the fake UCF101 that MLB's rules exclude: one without audio, one of 2.5 s (only 3
# whole seconds, 4 frames requested). Both are in group 1, i.e. in the test list of split 1.
UCF_NO_AUDIO = "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c02.avi"
UCF_TOO_SHORT = "Rafting/v_Rafting_g01_c02.avi"


def make_fake_ucf(
    root: pathlib.Path,
    with_audio: Sequence[str],
    *,
    groups: Sequence[int] = (1, 8, 22),
    clips_per_group: int = 2,
    seconds: float = 4.2,
    size: tuple[int, int] = (32, 24),
) -> dict[str, list[str]]:
    """Write a fake UCF101/: UCF-101/<Class>/*.avi (25 fps, mpeg4, MP3 or PCM audio), lists.

    `clips_per_group` clips per (class in `UCF_CLASSES`, group); UCF50 clips (BaseballPitch),
    `UCF_NO_AUDIO` have no audio track, `UCF_TOO_SHORT` lasts 2.5 s. `ucfTrainTestlist/` holds
    the full 101-line classInd.txt (the 51 classes `with_audio` plus `UCF50`) and
    train/testlist0{1,2,3}.txt, with CRLF endings; split k tests groups 1–7, 8–14, 15–21 for
    k = 1, 2, 3.

    Returns:
        "trainlist0k"/"testlist0k" -> the list's clip paths (all classes).
    """
    lists_dir = root / "ucfTrainTestlist"
    lists_dir.mkdir(parents=True, exist_ok=True)
    classes = ucf_class_index(with_audio)
    (lists_dir / "classInd.txt").write_bytes(
        "".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)).encode()
    )
    clips = [
        ucf_clip(cls, group, c)
        for cls in UCF_CLASSES
        for group in groups
        for c in range(1, clips_per_group + 1)
    ]
    for i, clip in enumerate(clips):
        silent = clip == UCF_NO_AUDIO or clip.startswith("BaseballPitch/")
        codec = None if silent else ("mp3", "pcm_s16le")[i % 2]
        length = 2.5 if clip == UCF_TOO_SHORT else seconds
        write_video(root / "UCF-101" / clip, length, fps=25, size=size, audio_codec=codec)
    lists: dict[str, list[str]] = {}
    for k in (1, 2, 3):
        test_groups = range(7 * k - 6, 7 * k + 1)
        test = [c for c in clips if int(c.split("_g")[1][:2]) in test_groups]
        train = [c for c in clips if c not in test]
        (lists_dir / f"trainlist0{k}.txt").write_bytes(
            "".join(f"{c} {classes.index(c.split('/')[0]) + 1}\r\n" for c in train).encode()
        )
        (lists_dir / f"testlist0{k}.txt").write_bytes("".join(f"{c}\r\n" for c in test).encode())
        lists[f"trainlist0{k}"], lists[f"testlist0{k}"] = train, test
    return lists
