"""data_prep.media: decoding real media files into the reference spectrograms and frames."""

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile as sf
from fake_media import second_value, write_audio, write_corrupt, write_video

from data_prep import media

# Reference front-ends (data_prep/README.md, one section per dataset): CREMA-D, AVE, UCF101.
CREMAD = media.AudioSettings(22050, 3 * 22050, "tile", "log_stft", 512, 353)
AVE = media.AudioSettings(16000, 160000, "tile", "log_psd", 512, 159)
UCF = media.AudioSettings(16000, 48000, "pad", "log_stft", 512, 353)


def red(frames: np.ndarray) -> list[int]:
    """Red channel of each frame's top-left pixel, rounded to the nearest fake second."""
    values = frames[:, 0, 0, 0].astype(int)
    seconds = [round((v - second_value(0)) / 40) for v in values]
    np.testing.assert_allclose(values, [second_value(s) for s in seconds], atol=6)
    return seconds


@pytest.mark.parametrize(
    ("settings", "shape"), [(CREMAD, (257, 188)), (AVE, (257, 1004)), (UCF, (257, 136))]
)
def test_reference_shapes(tmp_path, settings, shape):
    wav = write_audio(tmp_path / "a.wav", 1.3)
    assert settings.shape == shape
    out = media.audio_features(wav, settings)
    assert out.shape == shape and out.dtype == np.float32


def test_cremad_front_end_equals_the_reference_recipe(tmp_path):
    # librosa.load at 22.05 kHz, tile 3x, first 3 s, clip, centred reflect STFT, ln(|X| + 1e-7).
    wav = write_audio(tmp_path / "a.wav", 1.3, 16000)
    wave, _ = librosa.load(wav, sr=22050)
    wave = np.clip(np.tile(wave, 3)[:66150], -1, 1)
    expected = np.log(
        np.abs(librosa.stft(wave, n_fft=512, hop_length=353, pad_mode="reflect")) + 1e-7
    )
    np.testing.assert_allclose(media.audio_features(wav, CREMAD), expected, atol=1e-5)


def test_ave_front_end_equals_the_reference_recipe_on_the_event_segment(tmp_path):
    # 16 kHz, cut [16000 * 1, 16000 * 3), tile to >= 10 s, truncate, scipy PSD, ln(. + 1e-7).
    wav = write_audio(tmp_path / "a.wav", 4.0, 16000)
    wave, _ = librosa.load(wav, sr=16000)
    segment = wave[16000:48000]
    wave = np.tile(segment, 160000 // segment.size + 1)[:160000]
    _, _, psd = scipy.signal.spectrogram(wave, fs=16000, nperseg=512, noverlap=353)
    out = media.audio_features(wav, AVE, start_s=1, end_s=3)
    np.testing.assert_allclose(out, np.log(psd + 1e-7), atol=1e-5)
    # The 440 Hz tone sits in bin 440 / (16000 / 512) = 14.1.
    assert np.argmax(out.mean(axis=1)) == 14


def test_fit_length_tiles_pads_and_crops():
    wave = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(media.fit_length(wave, 7, "tile"), [1, 2, 3, 1, 2, 3, 1])
    np.testing.assert_array_equal(media.fit_length(wave, 5, "pad"), [1, 2, 3, 0, 0])
    np.testing.assert_array_equal(media.fit_length(wave, 2, "pad"), [1, 2])
    np.testing.assert_array_equal(media.fit_length(wave, 2, "tile"), [1, 2])


def test_stereo_flac_is_averaged_and_resampled(tmp_path):
    flac = write_audio(tmp_path / "a.flac", 1.5, 22050, channels=2)
    wave = media.load_audio(flac, 16000)
    assert wave.ndim == 1 and wave.size == 24000
    # Both channels carry the same tone, so the average keeps amplitude 0.5.
    assert np.abs(wave).max() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize(
    ("name", "video_codec", "audio_codec", "rate"),
    [
        ("a.mp4", "mpeg4", "aac", 44100),
        ("a.avi", "mpeg4", "mp3", 16000),
        ("b.avi", "mpeg4", "pcm_s16le", 16000),
        ("a.flv", "flv1", "mp3", 22050),  # FLV takes MP3 at 11.025 / 22.05 / 44.1 kHz only
        ("a.mkv", "libx264", "aac", 16000),
    ],
)
def test_containers_and_codecs_decode_to_fixed_shapes(
    tmp_path, name, video_codec, audio_codec, rate
):
    path = write_video(
        tmp_path / name,
        3.3,
        fps=10,
        video_codec=video_codec,
        audio_codec=audio_codec,
        sample_rate=rate,
    )
    wave = media.load_audio(path, 16000)
    if audio_codec in ("aac", "mp3"):  # encoder padding: more samples than were written
        assert wave.size > 3.3 * 16000
    assert media.audio_features(path, UCF).shape == (257, 136)
    frames = media.sample_frames(path, media.FrameSettings(3, 12, 8, top_up=False))
    assert frames.shape == (3, 12, 8, 3) and frames.dtype == np.uint8
    assert red(frames) == [0, 1, 2]


def test_frames_come_from_the_event_window(tmp_path):
    path = write_video(tmp_path / "a.mp4", 5.0, fps=5)
    settings = media.FrameSettings(3, 8, 8, top_up=False)
    assert red(media.sample_frames(path, settings, start_s=1, end_s=4)) == [1, 2, 3]
    assert red(media.sample_frames(path, settings, start_s=2, end_s=4)) == [2, 3, 4]


def test_short_video_is_topped_up_or_rejected(tmp_path):
    path = write_video(tmp_path / "a.flv", 1.4, fps=10, video_codec="flv1")
    # 1 fps gives seconds 0 and 1 (frames 0 and 10); the extra frame is the middle one of the
    # 12 others (frame 7, in second 0), so the time-ordered result is seconds 0, 0, 1.
    topped = media.sample_frames(path, media.FrameSettings(3, 8, 8, top_up=True))
    assert red(topped) == [0, 0, 1]
    with pytest.raises(media.TooFewFramesError, match=r"2 frames at 1 fps .* 3 requested"):
        media.sample_frames(path, media.FrameSettings(3, 8, 8, top_up=False))
    with pytest.raises(media.TooFewFramesError, match="14 frames in all"):
        media.sample_frames(path, media.FrameSettings(20, 8, 8, top_up=True))


def test_bad_files_raise_media_errors_naming_the_file(tmp_path):
    frames = media.FrameSettings(1, 8, 8, top_up=False)
    corrupt = write_corrupt(tmp_path / "bad.mp4")
    with pytest.raises(media.MediaError, match=r"bad\.mp4: cannot be opened as media"):
        media.audio_features(corrupt, UCF)
    with pytest.raises(media.MediaError, match=r"bad\.mp4: cannot be opened as media"):
        media.sample_frames(corrupt, frames)
    with pytest.raises(media.MediaError, match=r"nope\.wav: file not found"):
        media.audio_features(tmp_path / "nope.wav", UCF)
    silent = write_video(tmp_path / "silent.avi", 1.0, fps=5)
    with pytest.raises(media.NoAudioError, match=r"silent\.avi: has no audio track"):
        media.audio_features(silent, UCF)
    wav = write_audio(tmp_path / "a.wav", 1.0)
    with pytest.raises(media.MediaError, match=r"a\.wav: has no video track"):
        media.sample_frames(wav, frames)
    with pytest.raises(media.NoAudioError, match=r"audio is empty in \[2 s, 3 s\)"):
        media.audio_features(wav, UCF, start_s=2, end_s=3)
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(media.NoAudioError, match=r"empty\.wav: audio is empty \(0 samples"):
        media.audio_features(tmp_path / "empty.wav", UCF)


def test_settings_reject_impossible_values():
    with pytest.raises(ValueError, match="hop_length <= n_fft <= num_samples"):
        media.AudioSettings(16000, 100, "pad", n_fft=512)
    with pytest.raises(ValueError, match="'tile' or 'pad'"):
        media.AudioSettings(16000, 16000, "loop")
    with pytest.raises(ValueError, match="positive sizes"):
        media.FrameSettings(0, 8, 8, top_up=False)
