"""The CREMA-D VAVL folds shipped with data_prep: checksums, equality with the reference layout,
and the converter's default (no split file) on a fake tree holding a few of the fold's clips."""

import collections
import json
import random
import re
import shutil

import pytest
from fake_media import write_audio, write_video

from data_prep import common, cremad
from mlb_jax.data._tf import import_tfds
from mlb_jax.data.schema import DataError, load_meta

# Facts of datasets/CREMAD/data_splits_VALV.pkl (kkontras/MLB), docs: shared/reference
# DATASETS.md §1.5. Fold key -> (train, val, test) clips.
SIZES = {
    "1": (4043, 878, 899),
    "2": (4024, 881, 915),
    "3": (4017, 869, 934),
    "4": (4046, 896, 878),
    "5": (4068, 844, 908),
}
TEST_SPEAKERS = {
    "1": "1004 1008 1011 1013 1015 1030 1046 1050 1059 1066 1073 1074 1082 1083",
    "2": "1011 1029 1031 1039 1050 1060 1065 1068 1071 1072 1075 1078 1081 1086",
    "3": "1009 1012 1013 1028 1031 1041 1048 1053 1056 1068 1075 1077 1087 1089",
}
# CREMA-D has 1,271 clips of each emotion but 1,087 neutral (7,442); the folds leave out 1,622.
EXCLUDED = {"NEU": 85, "HAP": 55, "SAD": 470, "FEA": 369, "DIS": 358, "ANG": 285}
ALL_CLIPS = {e: 1087 if e == "NEU" else 1271 for e in EXCLUDED}
SENTENCES = ["IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"]
SPLITS = (common.TRAIN, common.VALIDATION, common.TEST)


def speakers(names):
    return {n.split("_")[0] for n in names}


def is_clip_name(name):
    m = re.fullmatch(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})", name)
    if m is None or m[2] not in SENTENCES or m[3] not in cremad.EMOTIONS:
        return False
    graded = m[2] == "IEO" and m[3] != "NEU"  # only IEO is spoken at LO / MD / HI intensity
    return m[4] in ("LO", "MD", "HI") if graded else m[4] == "XX"


@pytest.mark.parametrize("fold", range(5))
def test_shipped_fold_has_the_reference_checksums(fold):
    key = str(fold + 1)
    clips = cremad.shipped_fold(fold)
    assert tuple(len(clips[s]) for s in SPLITS) == SIZES[key]
    spk = [speakers(clips[s]) for s in SPLITS]
    assert [len(s) for s in spk] == [63, 14, 14]
    assert not (spk[0] & spk[1] or spk[0] & spk[2] or spk[1] & spk[2])
    if key in TEST_SPEAKERS:
        assert spk[2] == set(TEST_SPEAKERS[key].split())
    everything = [n for s in SPLITS for n in clips[s]]
    assert len(set(everything)) == len(everything) == 5820
    assert all(is_clip_name(n) for n in everything)
    # Every fold covers the same clips, split by speaker.
    assert set(everything) == {n for s in SPLITS for n in cremad.shipped_fold(0)[s]}
    per_emotion = collections.Counter(n.split("_")[2] for n in everything)
    assert per_emotion == {e: ALL_CLIPS[e] - EXCLUDED[e] for e in EXCLUDED}
    assert len(speakers(everything)) == 91


def test_shipped_file_names_its_source_and_checksums():
    data = json.loads(cremad.FOLDS_FILE.read_text())
    assert data["source"] == {
        "repository": "https://github.com/kkontras/MLB",
        "commit": "68ad48d45fe001499e1506fa9e36a793ef0e5d84",
        "path": "datasets/CREMAD/data_splits_VALV.pkl",
    }
    sizes = {
        k: tuple(v[s] for s in ("train", "val", "test"))
        for k, v in data["checksums"]["split_sizes"].items()
    }
    assert sizes == SIZES
    assert cremad.FOLDS_FILE.stat().st_size < 150_000


def reference_layout(suffix):
    """The five folds in the layout of data_splits_VALV.pkl, built from the shipped data.

    Entries ``<clip>.wav<suffix(clip)>``, shuffled (the reference lists are in no order).
    """
    rng = random.Random(0)
    folds = {}
    for fold in range(5):
        clips = cremad.shipped_fold(fold)
        folds[str(fold + 1)] = {}
        for raw_key, split in (
            ("train", common.TRAIN),
            ("val", common.VALIDATION),
            ("test", common.TEST),
        ):
            entries = [f"{c}.wav{suffix(c)}" for c in clips[split]]
            rng.shuffle(entries)
            folds[str(fold + 1)][raw_key] = entries
    return folds


@pytest.mark.parametrize(
    "name, suffix",
    [
        # .pkl: "-<k>", the consensus label, which need not be the file name's emotion.
        ("data_splits_VALV.pkl", lambda c: f"-{sum(map(ord, c)) % 5}"),
        ("data_splits_VALV.json", lambda c: ""),
    ],
)
def test_read_fold_of_the_reference_layout_equals_the_shipped_fold(tmp_path, name, suffix):
    path = tmp_path / name
    path.write_text(json.dumps(reference_layout(suffix)))
    for fold in range(5):
        from_file = cremad.read_fold(path, fold)
        shipped = cremad.shipped_fold(fold)
        assert {s: set(v) for s, v in from_file.items()} == {s: set(v) for s, v in shipped.items()}
        assert cremad.load_fold(fold, path) == from_file
        assert cremad.load_fold(fold) == shipped


def test_damaged_or_missing_shipped_file_is_one_clear_error(tmp_path, monkeypatch):
    data = json.loads(cremad.FOLDS_FILE.read_text())
    data["clips"]["1001"] = data["clips"]["1001"][1:]  # a train clip of fold key "1" lost
    damaged = tmp_path / "cremad_folds.json"
    damaged.write_text(json.dumps(data))
    monkeypatch.setattr(cremad, "FOLDS_FILE", damaged)
    with pytest.raises(DataError, match=r"fail their checksums: fold '1' has split sizes"):
        cremad.shipped_fold(0)
    monkeypatch.setattr(cremad, "FOLDS_FILE", tmp_path / "gone.json")
    with pytest.raises(DataError, match=r"gone\.json\) cannot be read .*pass --split_file"):
        cremad.shipped_fold(0)
    monkeypatch.setattr(cremad, "FOLDS_FILE", damaged)
    with pytest.raises(DataError, match=r"no fold key '6'"):
        cremad.shipped_fold(5)


def test_converter_defaults_to_the_shipped_folds(tmp_path, capsys):
    """No split file: the shipped fold; clips missing from the raw tree are unreadable."""
    clips = cremad.shipped_fold(1)
    present = {split: names[:: len(names) // 2][:2] for split, names in clips.items()}
    raw = tmp_path / "CREMA-D"
    for names in present.values():
        for clip in names:
            write_audio(raw / "AudioWAV" / f"{clip}.wav", 1.4, 16000)
            write_video(
                raw / "VideoFlash" / f"{clip}.flv", 1.4, fps=10, size=(32, 24), video_codec="flv1"
            )
    out = tmp_path / "out"
    argv = [f"--raw_dir={raw}", f"--out_dir={out}", "--fold=1", "--frame_size=12x16"]
    argv += ["--no_progress", "--workers=2"]
    # Nearly all of the 5,820 clips are missing: refused at the default limit ...
    assert cremad.main(argv) == 1
    err = capsys.readouterr().err
    assert "5814 of 5820 examples are unreadable" in err and "nothing was written" in err
    # ... and written, with the missing clips in the report, when the limit allows it.
    assert cremad.main([*argv, "--max_unreadable_fraction=1"]) == 0
    assert "VAVL fold key 2 from the folds shipped with the package" in capsys.readouterr().out
    meta = load_meta(out)
    assert meta.split_sizes == {s: 2 for s in SPLITS}
    tfds = import_tfds()
    for split in SPLITS:
        ds = tfds.builder_from_directory(meta.data_dir).as_dataset(split=split)
        assert {ex["id"].decode() for ex in tfds.as_numpy(ds)} == set(present[split])
    report = json.loads((out / "cremad" / "fold1_12x16" / common.REPORT_NAME).read_text())
    assert len(report["unreadable"]) == 5814
    assert {u["reason"].rsplit(": ", 1)[-1] for u in report["unreadable"]} == {"file not found"}
    shutil.rmtree(out)
