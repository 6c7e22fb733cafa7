"""data_prep converters: fake raw copies of each dataset in its exact layout -> TFRecords."""

import json
import multiprocessing.spawn
import pathlib
import re
import shutil
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
import soundfile as sf
from fake_media import (
    AVE_ROWS,
    UCF_NO_AUDIO,
    UCF_TOO_SHORT,
    make_fake_ave,
    make_fake_cremad,
    make_fake_ucf,
    second_value,
    write_audio,
    write_corrupt,
    write_video,
)

from data_prep import ave, common, cremad, decode, manifest, media, ucf51
from mlb_jax.data._tf import import_tfds
from mlb_jax.data.schema import DataError, load_meta

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Tiny frames keep the tests fast; the shapes below follow from them.
SIZE = ["--frame_size=12x16", "--no_progress"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Fake raw downloads of the three datasets (written once for the module)."""
    root = tmp_path_factory.mktemp("raw")
    make_fake_cremad(root / "CREMA-D")
    make_fake_ave(root / "AVE_Dataset")
    make_fake_ucf(root / "UCF101", ucf51.CLASS_NAMES)
    return root


def examples(version_dir: pathlib.Path, split: str) -> dict[str, dict[str, np.ndarray]]:
    """id -> example (numpy) of one split of a written dataset."""
    tfds = import_tfds()
    ds = tfds.builder_from_directory(version_dir).as_dataset(split=split)
    return {ex["id"].decode(): ex for ex in tfds.as_numpy(ds)}


def seconds_of(frames: np.ndarray) -> list[int]:
    """Which fake second each frame shows (red channel, JPEG and codec error tolerated)."""
    values = frames[:, 0, 0, 0].astype(int)
    seconds = [round((v - second_value(0)) / 40) for v in values]
    np.testing.assert_allclose(values, [second_value(s) for s in seconds], atol=8)
    return seconds


def copy_raw(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    shutil.copytree(src, dst)
    return dst


def assert_nothing_written(out: pathlib.Path) -> None:
    """No dataset that load_meta accepts, and no unfinished TFDS build left behind."""
    with pytest.raises(DataError):
        load_meta(out)
    assert not list(out.glob("**/incomplete.*"))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_cremad_fold_is_speaker_independent_with_reference_shapes(raw, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [f"--raw_dir={raw / 'CREMA-D'}", f"--out_dir={out}", "--workers=2", *SIZE]
    assert cremad.main(argv) == 0
    meta = load_meta(out)
    assert meta.name == "cremad/fold0_12x16"
    assert meta.split_sizes == {"train": 6, "validation": 2, "test": 2}
    # 3 s at 22.05 kHz = 66,150 samples; centred STFT with hop 353: 1 + 66150 // 353 = 188.
    assert meta.modalities["audio"].shape == (257, 188)
    assert meta.modalities["video"].shape == (3, 12, 16, 3)
    actors = {}
    for split in meta.split_sizes:
        for clip, ex in examples(meta.data_dir, split).items():
            assert ex["label"] == cremad.EMOTIONS.index(clip.split("_")[2])
            actors.setdefault(clip.split("_")[0], set()).add(split)
            # The clips last 1.4 s: seconds 0 and 1, topped up by a frame of second 0.
            assert seconds_of(ex["video"]) == [0, 0, 1]
            wav = raw / "CREMA-D" / "AudioWAV" / f"{clip}.wav"
            np.testing.assert_array_equal(ex["audio"], media.audio_features(wav, cremad.AUDIO))
    assert len(actors) == 5 and all(len(splits) == 1 for splits in actors.values())
    report = json.loads((out / "cremad" / "fold0_12x16" / common.REPORT_NAME).read_text())
    assert report["status"] == "ok" and report["unreadable"] == [] and report["decoded"] == 10
    assert report["splits"]["test"]["per_class"] == {
        "neutral": 0, "happy": 0, "sad": 1, "fear": 1, "disgust": 0, "anger": 0
    }  # fmt: skip
    assert not (out / common.CACHE_NAME).exists()  # cache dropped after success
    split_file = raw / "CREMA-D" / "data_splits_VALV.pkl"  # found in --raw_dir: it wins
    assert f"cremad: VAVL fold key 1 from {split_file}" in capsys.readouterr().out
    assert cremad.main(argv) == 0  # a finished dataset is reused, not rebuilt
    assert "already converted" in capsys.readouterr().out


def test_cremad_split_file_flag_is_used_instead_of_the_shipped_folds(raw, tmp_path, capsys):
    root = copy_raw(raw / "CREMA-D", tmp_path / "CREMA-D")
    split_file = tmp_path / "elsewhere" / "data_splits_VALV.json"
    split_file.parent.mkdir()
    (root / "data_splits_VALV.pkl").rename(split_file)
    out = tmp_path / "out"
    argv = [f"--raw_dir={root}", f"--out_dir={out}", f"--split_file={split_file}", *SIZE]
    assert cremad.main([*argv, "--workers=2"]) == 0
    assert f"cremad: VAVL fold key 1 from {split_file}" in capsys.readouterr().out
    assert load_meta(out).split_sizes == {"train": 6, "validation": 2, "test": 2}


def test_ave_official_split_event_segments(raw, tmp_path):
    out = tmp_path / "out"
    assert ave.main([f"--raw_dir={raw / 'AVE_Dataset'}", f"--out_dir={out}", *SIZE]) == 0
    meta = load_meta(out)
    assert meta.num_classes == 28
    # The duplicated training id is kept once (first row).
    assert meta.split_sizes == {"train": 3, "validation": 1, "test": 2}
    # 10 s at 16 kHz, windows of 512 with hop 159, whole windows only: 1 + 159488 // 159.
    assert meta.modalities["audio"].shape == (257, 1004)
    assert meta.modalities["video"].shape == (4, 12, 16, 3)
    first_rows = {}  # (split, id) -> the first row of that id in the split
    for split, rows in AVE_ROWS.items():
        for row in rows:
            first_rows.setdefault((split, row[1]), row)
    for split in meta.split_sizes:
        for vid, ex in examples(meta.data_dir, split).items():
            category, _, start, end, _ = first_rows[split, vid]
            assert meta.class_names[ex["label"]] == category
            if vid == "aaaaaaaaaa2":  # event 1-3 s of a 3-s clip: seconds 1, 2, topped up
                assert seconds_of(ex["video"]) == [1, 1, 2, 2]
            else:
                assert seconds_of(ex["video"]) == [start, start + 1, start + 2, start + 3]
            mp4 = raw / "AVE_Dataset" / "AVE" / f"{vid}.mp4"
            expected = media.audio_features(mp4, ave.AUDIO, start_s=start, end_s=end)
            np.testing.assert_array_equal(ex["audio"], expected)


def test_ucf51_splits_groups_and_mlb_exclusions(raw, tmp_path):
    out = tmp_path / "out"
    base = [f"--raw_dir={raw / 'UCF101'}", f"--out_dir={out}", "--keep_cache", *SIZE]
    assert ucf51.main(base) == 0
    meta = load_meta(out / "ucf51" / "split1_12x16")
    # 3 classes with audio x 3 groups x 2 clips; group 1 is the test part of split 1, and one
    # group per class of the two training groups goes to validation. BaseballPitch (UCF50) is
    # not a class; the silent clip and the 2.5-s clip are skipped as in MLB.
    assert meta.num_classes == 51
    assert meta.split_sizes == {"train": 6, "validation": 6, "test": 4}
    # 3 s at 16 kHz = 48,000 samples, hop 353: 1 + 48000 // 353 = 136.
    assert meta.modalities["audio"].shape == (257, 136)
    assert meta.modalities["video"].shape == (4, 12, 16, 3)
    groups = {}
    for split in meta.split_sizes:
        for clip, ex in examples(meta.data_dir, split).items():
            _, cls, group, _ = clip.split("_")
            cls = "HandstandPushups" if cls == "HandStandPushups" else cls
            assert meta.class_names[ex["label"]] == cls
            assert seconds_of(ex["video"]) == [0, 1, 2, 3]
            groups.setdefault((cls, group), set()).add(split)
    assert all(len(splits) == 1 for splits in groups.values())  # no group straddles splits
    report = json.loads((out / "ucf51" / "split1_12x16" / common.REPORT_NAME).read_text())
    skipped = {pathlib.Path(s["id"]).name: s["reason"] for s in report["skipped"]}
    assert skipped.keys() == {pathlib.Path(UCF_NO_AUDIO).stem, pathlib.Path(UCF_TOO_SHORT).stem}
    assert "has no audio track" in skipped[pathlib.Path(UCF_NO_AUDIO).stem]
    assert "3 frames at 1 fps" in skipped[pathlib.Path(UCF_TOO_SHORT).stem]
    # Split 2 tests group 8; its clips were all decoded for split 1 and come from the cache.
    assert ucf51.main([*base, "--split=2"]) == 0
    meta2 = load_meta(out / "ucf51" / "split2_12x16")
    assert meta2.split_sizes["test"] == 6
    report = json.loads((out / "ucf51" / "split2_12x16" / common.REPORT_NAME).read_text())
    assert report["decoded"] == 0 and report["from_cache"] == 16 and len(report["skipped"]) == 2


def test_manifest_any_format_and_options(tmp_path):
    data = tmp_path / "data"
    write_audio(data / "a" / "x.wav", 1.2, 22050)
    write_video(data / "v" / "x.mp4", 2.5, fps=5)
    write_audio(data / "a" / "y.flac", 0.6, 8000, channels=2)
    write_video(data / "v" / "y.avi", 2.2, fps=25, audio_codec="mp3")
    write_video(data / "v" / "z.mkv", 2.0, fps=10, audio_codec="aac")
    csv = data / "list.csv"
    csv.write_text(
        "id,split,label,audio,video\n"
        "x,train,dog,a/x.wav,v/x.mp4\n"
        "y,train,cat,a/y.flac,v/y.avi\n"
        "z,test,cat,v/z.mkv,v/z.mkv\n"  # audio track of the video itself
    )
    out = tmp_path / "out"
    argv = [f"--manifest={csv}", f"--out_dir={out}", "--sample_rate=8000", "--audio_seconds=1",
            "--stft_window=256", "--stft_hop=128", "--num_frames=2", "--frame_size=8",
            "--no_progress", "--workers=1"]  # fmt: skip
    assert manifest.main(argv) == 0
    meta = load_meta(out)
    assert meta.name == "manifest/list"
    assert meta.class_names == ("cat", "dog")  # sorted labels
    assert meta.split_sizes == {"train": 2, "test": 1}
    assert meta.modalities["audio"].shape == (129, 1 + 8000 // 128)
    assert meta.modalities["video"].shape == (2, 8, 8, 3)
    train = examples(meta.data_dir, "train")
    assert {k: int(v["label"]) for k, v in train.items()} == {"x": 1, "y": 0}
    assert all(seconds_of(ex["video"]) == [0, 1] for ex in train.values())


def test_corrupt_file_fraction_limit_and_resume(raw, tmp_path, capsys):
    cremad_raw = copy_raw(raw / "CREMA-D", tmp_path / "CREMA-D")
    write_corrupt(cremad_raw / "AudioWAV" / "1001_IEO_NEU_XX.wav")
    out = tmp_path / "out"
    argv = [f"--raw_dir={cremad_raw}", f"--out_dir={out}", "--workers=2", *SIZE]
    report_path = out / "cremad" / "fold0_12x16" / common.REPORT_NAME
    # 1 of 10 unreadable is over the default 5 %: one line, nothing written, report kept.
    assert cremad.main(argv) == 1
    line = one_error_line(capsys)
    assert "1 of 10 examples are unreadable (10.0% > --max_unreadable_fraction=0.05)" in line
    assert "1001_IEO_NEU_XX.wav: cannot be opened as media" in line
    assert_nothing_written(out)
    failed = json.loads(report_path.read_text())
    assert failed["status"] == "failed" and failed["decoded"] == 9
    assert [u["id"] for u in failed["unreadable"]] == ["1001_IEO_NEU_XX"]
    cache = sorted((out / common.CACHE_NAME / "cremad").glob("*.npz"))
    stamps = [p.stat().st_mtime_ns for p in cache]
    assert len(cache) == 9
    # Re-run with a higher limit: the 9 decoded clips come from the cache, the bad one is
    # retried, listed and left out.
    assert cremad.main([*argv, "--max_unreadable_fraction=0.2", "--keep_cache"]) == 0
    assert [p.stat().st_mtime_ns for p in cache] == stamps
    report = json.loads(report_path.read_text())
    assert (report["decoded"], report["from_cache"]) == (0, 9)
    assert report["unreadable_fraction"] == pytest.approx(0.1)
    assert [u["id"] for u in report["unreadable"]] == ["1001_IEO_NEU_XX"]
    assert load_meta(out).split_sizes == {"train": 5, "validation": 2, "test": 2}


def _cremad_split_file_missing(raw, tmp):
    return cremad, [f"--raw_dir={raw / 'CREMA-D'}", f"--split_file={tmp / 'nope.pkl'}"]


def _cremad_actor_in_two_splits(raw, tmp):
    root = copy_raw(raw / "CREMA-D", tmp / "CREMA-D")
    folds = json.loads((root / "data_splits_VALV.pkl").read_text())
    folds["1"]["test"].append(folds["1"]["train"][0])
    (root / "data_splits_VALV.pkl").write_text(json.dumps(folds))
    return cremad, [f"--raw_dir={root}"]


def _ave_without_val_list(raw, tmp):
    root = copy_raw(raw / "AVE_Dataset", tmp / "AVE_Dataset")
    (root / "valSet.txt").unlink()
    return ave, [f"--raw_dir={root}"]


def _ave_unknown_category(raw, tmp):
    root = copy_raw(raw / "AVE_Dataset", tmp / "AVE_Dataset")
    with open(root / "testSet.txt", "a") as f:
        f.write("Kazoo&zzzzzzzzzzz&good&0&10\r\n")
    return ave, [f"--raw_dir={root}"]


def _ucf_without_test_list(raw, tmp):
    root = copy_raw(raw / "UCF101", tmp / "UCF101")
    (root / "ucfTrainTestlist" / "testlist01.txt").unlink()
    return ucf51, [f"--raw_dir={root}"]


def _manifest(tmp, rows, *extra):
    data = tmp / "data"
    write_audio(data / "a.wav", 1.0)
    write_video(data / "a.mp4", 2.5, fps=4)  # 10 frames: seconds 0, 1, 2
    (data / "m.csv").write_text("id,split,label,audio,video\n" + "".join(r + "\n" for r in rows))
    return manifest, [f"--manifest={data / 'm.csv'}", *extra]


def _manifest_unknown_label(raw, tmp):
    return _manifest(tmp, ["a,train,cat,a.wav,a.mp4", "b,train,dog,a.wav,a.mp4"], "--classes=cat")


def _manifest_empty_audio(raw, tmp):
    sf.write(tmp / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    return _manifest(tmp, ["a,train,x,a.wav,a.mp4", f"b,train,x,{tmp / 'empty.wav'},a.mp4"])


def _manifest_short_video(raw, tmp):
    return _manifest(tmp, ["a,train,x,a.wav,a.mp4"], "--num_frames=4")


def _manifest_short_video_topped_up(raw, tmp):
    return _manifest(tmp, ["a,train,x,a.wav,a.mp4"], "--num_frames=11", "--top_up_frames")


BAD_INPUTS = {
    "raw dir missing": (lambda raw, tmp: (ave, [f"--raw_dir={tmp / 'nope'}"]),
                        r"raw directory .*nope does not exist"),
    "wrong raw dir": (lambda raw, tmp: (cremad, [f"--raw_dir={raw / 'AVE_Dataset'}"]),
                      r"AVE_Dataset has no AudioWAV/: pass --raw_dir=<the CREMA-D checkout"),
    "CREMA-D split file missing": (_cremad_split_file_missing,
                                   r"CREMA-D split file .*nope\.pkl does not exist: pass "
                                   r"--split_file=.*or leave it out"),
    "CREMA-D actor in two splits": (_cremad_actor_in_two_splits,
                                    r"actor 1001 is in both train and test"),
    "AVE split file missing": (_ave_without_val_list, r"AVE split file missing: .*valSet\.txt"),
    "AVE unknown category": (_ave_unknown_category,
                             r"testSet\.txt:3: unknown category 'Kazoo'"),
    "UCF list missing": (_ucf_without_test_list, r"list file missing: .*testlist01\.txt"),
    "manifest missing": (lambda raw, tmp: (manifest, [f"--manifest={tmp / 'no.csv'}"]),
                         r"manifest .*no\.csv does not exist: pass --manifest="),
    "manifest unknown label": (_manifest_unknown_label,
                               r"line 3: label 'dog' is not one of --classes \(cat\)"),
    "empty audio": (_manifest_empty_audio, r"empty\.wav: audio is empty \(0 samples"),
    "short video": (_manifest_short_video,
                    r"a\.mp4: video is too short: 3 frames at 1 fps .* 4 requested -- 1 of them "
                    r"are shorter than --num_frames=4 seconds: pass --top_up_frames \(adds evenly "
                    r"spaced frames\) or a smaller --num_frames; otherwise fix or remove"),
    "short video, topped up": (_manifest_short_video_topped_up,
                               r"11 requested -- 1 of them have fewer than --num_frames=11 frames "
                               r"in all: pass a smaller --num_frames; otherwise fix or remove"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_writes_nothing(raw, tmp_path, capsys, case):
    setup, message = BAD_INPUTS[case]
    module, argv = setup(raw, tmp_path)
    out = tmp_path / "out"
    assert module.main([*argv, f"--out_dir={out}", "--workers=1", *SIZE]) == 1
    line = one_error_line(capsys)
    assert re.search(message, line), line
    assert_nothing_written(out)


def test_cli_process_fails_with_one_line(tmp_path):
    module, argv = _manifest_short_video(None, tmp_path)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", module.__name__, *argv, f"--out_dir={out}", *SIZE],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert_nothing_written(out)
    assert result.stderr.strip().splitlines() == [
        "error: 1 of 1 examples are unreadable (100.0% > --max_unreadable_fraction=0.05); "
        f"first: {tmp_path / 'data' / 'a.mp4'}: video is too short: 3 frames at 1 fps (10 "
        "frames in all) in [0 s, end], 4 requested -- 1 of them are shorter than "
        "--num_frames=4 seconds: pass --top_up_frames (adds evenly spaced frames) or a smaller "
        "--num_frames; otherwise fix or remove the files listed in the report, or raise "
        "--max_unreadable_fraction; nothing was written"
    ]


def test_too_short_clips_in_an_empty_split_name_the_frame_options(tmp_path, capsys):
    # Within the unreadable limit, but the only test clip is too short: the split is empty.
    module, argv = _manifest(
        tmp_path, ["a,train,x,a.wav,a.mp4", "b,test,x,a.wav,short.mp4"], "--num_frames=3"
    )
    write_video(tmp_path / "data" / "short.mp4", 1.5, fps=4)  # seconds 0 and 1 only
    out = tmp_path / "out"
    argv = [*argv, f"--out_dir={out}", "--max_unreadable_fraction=0.5", "--workers=1", *SIZE]
    assert module.main(argv) == 1
    assert one_error_line(capsys) == (
        "error: split 'test' has no readable example (see the report): 1 of them are shorter than "
        "--num_frames=3 seconds: pass --top_up_frames (adds evenly spaced frames) or a smaller "
        "--num_frames; otherwise check the raw files of that split; nothing was written"
    )
    assert_nothing_written(out)


# A worker started by fork would inherit these modules from the test process.
HEAVY = "sorted(m for m in __import__('sys').modules if m.split('.')[0] in {'jax', 'tensorflow'})"


def test_decode_workers_are_spawned_import_no_tf_or_jax_and_match_one_process(raw, tmp_path):
    jax.devices()  # JAX's threads are running: forking now is what JAX warns about
    clips = sorted((raw / "CREMA-D" / "AudioWAV").glob("*.wav"))
    listed = [
        decode.Example("train", c.stem, 0, c, raw / "CREMA-D" / "VideoFlash" / f"{c.stem}.flv")
        for c in clips
    ]
    settings = {"audio": cremad.AUDIO, "frames": media.FrameSettings(3, 12, 16, top_up=True)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        one = decode.decode_all(
            listed, **settings, cache_dir=tmp_path / "one", workers=1, progress=False
        )
        two = decode.decode_all(
            listed, **settings, cache_dir=tmp_path / "two", workers=2, progress=False
        )
    assert [str(w.message) for w in caught if "fork" in str(w.message)] == []
    assert decode.START_METHOD != "fork"
    assert [o.status for o in one] == [o.status for o in two] == ["decoded"] * len(clips)
    assert [o.example for o in two] == listed  # in the listed order
    for a, b in zip(one, two, strict=True):
        with np.load(a.cache_file) as x, np.load(b.cache_file) as y:
            np.testing.assert_array_equal(x["audio"], y["audio"])
            np.testing.assert_array_equal(x["video"], y["video"])
    # One worker runs a real decode, then reports what it has imported: no TF, no JAX, although
    # this process has both (and its __main__ is not re-run in the worker).
    (tmp_path / "three").mkdir()
    with decode.process_pool(1) as pool, decode.without_main_module():
        outcome = pool.submit(
            decode.decode_example, listed[0], **settings, cache_dir=tmp_path / "three"
        ).result()
        assert outcome.status == "decoded"
        assert pool.submit(eval, HEAVY).result() == []
    assert "jax" in sys.modules and "tensorflow" in sys.modules
    # What a spawned worker is told to re-import before its first task: not the main module.
    with decode.without_main_module():
        data = multiprocessing.spawn.get_preparation_data("worker")
    assert not {"init_main_from_name", "init_main_from_path"} & data.keys()


def test_default_frames_are_large_enough_to_crop_224_from():
    """Defaults keep the 4:3 sources' aspect at 256 on the short side (UCF: its own 240x320)."""
    assert cremad.make_config(0).modalities["video"].shape == (3, 256, 341, 3)
    assert ave.make_config().modalities["video"].shape == (4, 256, 341, 3)
    assert ucf51.make_config(1).modalities["video"].shape == (4, 240, 320, 3)
    assert (cremad.make_config(0).name, ucf51.make_config(1).name) == ("fold0", "split1")
    assert cremad.make_config(0, (224, 224)).name == "fold0_224x224"
    assert common.parser("x").parse_args(["--out_dir=o", "--raw_dir=r"]).frame_size == (256, 341)
