"""CREMA-D's OGM-GE split (--split=ogm_ge): the shipped test list's checksums, a conversion of a
fake tree holding real clip names, and the refused flag combinations."""

import collections
import hashlib
import json
import re

import pytest
from fake_media import write_audio, write_video

from data_prep import common, cremad
from mlb_jax.data._tf import import_tfds
from mlb_jax.data.schema import DataError, load_meta

# Facts of data/CREMAD/test.csv of GeWu-Lab/OGM-GE_CVPR2022 at 65a8324 (744 rows
# "<clip>,<EMO>", no header; the emotion column equals the name's emotion in every row),
# measured on the transcription the shipped file was made from.
PER_EMOTION = {"NEU": 114, "HAP": 123, "SAD": 140, "FEA": 133, "DIS": 129, "ANG": 105}
SHA256_SORTED_NAMES = "55a0050c535df1b68cbff90bdb632a6ddf3f1d178c9ac17cfc7bdd6f8b843286"
SENTENCES = ["IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"]
SPLITS = (common.TRAIN, common.VALIDATION, common.TEST)
REFUSED = "error: --fold and --split_file choose a VAVL fold; --split=ogm_ge has none"


def is_clip_name(name):
    m = re.fullmatch(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})", name)
    if m is None or m[2] not in SENTENCES or m[3] not in cremad.EMOTIONS:
        return False
    graded = m[2] == "IEO" and m[3] != "NEU"  # only IEO is spoken at LO / MD / HI intensity
    return m[4] in ("LO", "MD", "HI") if graded else m[4] == "XX"


def test_shipped_test_list_has_the_source_checksums():
    names = cremad.shipped_ogm_ge_test()
    assert len(names) == len(set(names)) == 744
    assert names == sorted(names)
    assert all(is_clip_name(n) for n in names)
    assert collections.Counter(n.split("_")[2] for n in names) == PER_EMOTION
    digest = hashlib.sha256(("\n".join(names) + "\n").encode()).hexdigest()
    assert digest == SHA256_SORTED_NAMES
    # Every one of the 91 actors (1001-1091) is in the test list, so every one is in train too.
    assert {n.split("_")[0] for n in names} == {str(a) for a in range(1001, 1092)}
    data = json.loads(cremad.OGM_GE_FILE.read_text())
    assert data["source"] == {
        "repository": "https://github.com/GeWu-Lab/OGM-GE_CVPR2022",
        "commit": "65a8324464207f5efd41533cb362648c0cdee8a8",
        "path": "data/CREMAD/test.csv",
    }
    assert data["checksums"]["clips_per_emotion"] == PER_EMOTION
    assert data["checksums"]["speakers"] == 91
    assert cremad.OGM_GE_FILE.stat().st_size < 20_000


def test_ogm_ge_split_is_test_list_and_the_rest_of_the_download():
    test = cremad.shipped_ogm_ge_test()
    others = ["1001_DFA_ANG_XX", "1091_IEO_NEU_XX"]  # real clips, not in the test list
    assert not set(others) & set(test)
    clips = cremad.ogm_ge_split([*test[:3], *others])
    assert clips == {common.TRAIN: others, common.VALIDATION: test, common.TEST: test}


def test_damaged_or_missing_shipped_list_is_one_clear_error(tmp_path, monkeypatch):
    data = json.loads(cremad.OGM_GE_FILE.read_text())
    data["test"]["1001"] = data["test"]["1001"][1:]  # one clip lost
    damaged = tmp_path / "cremad_ogmge_test.json"
    damaged.write_text(json.dumps(data))
    monkeypatch.setattr(cremad, "OGM_GE_FILE", damaged)
    with pytest.raises(DataError, match=r"fails its checksums \(743 names, 743 distinct"):
        cremad.shipped_ogm_ge_test()
    monkeypatch.setattr(cremad, "OGM_GE_FILE", tmp_path / "gone.json")
    with pytest.raises(DataError, match=r"gone\.json\) cannot be read .*--split=vavl"):
        cremad.shipped_ogm_ge_test()


def test_converter_ogm_ge_split_on_a_fake_tree(tmp_path, capsys):
    """Test-list clips go to test and validation, the download's other clips to train."""
    test = cremad.shipped_ogm_ge_test()
    in_test = test[::300]  # 3 clips of the test list
    in_train = ["1001_DFA_ANG_XX", "1045_IEO_HAP_HI", "1091_WSI_SAD_XX"]
    assert not set(in_train) & set(test) and all(is_clip_name(n) for n in in_train)
    wav_only = "1002_DFA_ANG_XX"  # not in the test list; no .flv: listed, then unreadable
    raw = tmp_path / "CREMA-D"
    for clip in [*in_test, *in_train, wav_only]:
        write_audio(raw / "AudioWAV" / f"{clip}.wav", 1.4, 16000)
    for clip in [*in_test, *in_train]:
        write_video(
            raw / "VideoFlash" / f"{clip}.flv", 1.4, fps=10, size=(32, 24), video_codec="flv1"
        )
    out = tmp_path / "out"
    argv = [f"--raw_dir={raw}", f"--out_dir={out}", "--split=ogm_ge", "--frame_size=12x16"]
    argv += ["--no_progress", "--workers=1", "--max_unreadable_fraction=1"]
    assert cremad.main(argv) == 0
    captured = capsys.readouterr()
    assert "OGM-GE split, test list from the package (cremad_ogmge_test.json)" in captured.out
    assert "train: the other 4 clips of" in captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert warnings == [cremad.OGM_GE_WARNING]
    assert "same 91 actors appear in train and test" in warnings[0]
    assert "validation is the test set" in warnings[0]
    meta = load_meta(out)
    assert meta.name == "cremad/ogm_ge_12x16"  # never a fold's directory
    assert meta.split_sizes == {common.TRAIN: 3, common.VALIDATION: 3, common.TEST: 3}
    tfds = import_tfds()
    expected = {common.TRAIN: in_train, common.VALIDATION: in_test, common.TEST: in_test}
    for split in SPLITS:
        ds = tfds.builder_from_directory(meta.data_dir).as_dataset(split=split)
        got = {ex["id"].decode(): int(ex["label"]) for ex in tfds.as_numpy(ds)}
        assert got == {c: cremad.EMOTIONS.index(c.split("_")[2]) for c in expected[split]}
    report = json.loads((out / "cremad" / "ogm_ge_12x16" / common.REPORT_NAME).read_text())
    # The 741 absent test-list clips, once in validation and once in test, and the .wav-only one.
    unreadable = collections.Counter(u["split"] for u in report["unreadable"])
    assert unreadable == {common.TRAIN: 1, common.VALIDATION: 741, common.TEST: 741}
    assert {u["id"] for u in report["unreadable"] if u["split"] == "train"} == {wav_only}


@pytest.mark.parametrize("flag", ["--fold=0", "--fold=2", "--split_file=data_splits_VALV.pkl"])
def test_fold_or_split_file_with_ogm_ge_is_refused(tmp_path, capsys, flag):
    argv = [f"--raw_dir={tmp_path}", f"--out_dir={tmp_path / 'out'}", "--split=ogm_ge", flag]
    assert cremad.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(REFUSED), err
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="--split=ogm_ge has none"):
        cremad.make_config(1, split=cremad.OGM_GE)


def test_config_names_of_the_two_splits_differ():
    assert cremad.make_config(split=cremad.OGM_GE).name == "ogm_ge"
    assert cremad.make_config(0).name == "fold0"
    assert cremad.make_config(0, (224, 224), split=cremad.OGM_GE).name == "ogm_ge_224x224"


def test_a_stray_file_in_the_download_is_one_clear_error(tmp_path):
    raw = tmp_path / "CREMA-D"
    write_audio(raw / "AudioWAV" / "1001_DFA_ANG_XX.wav", 0.2, 16000)
    write_audio(raw / "AudioWAV" / "notes.wav", 0.2, 16000)
    (raw / "VideoFlash").mkdir()
    with pytest.raises(DataError, match=r"notes\.wav is not <actor>_<sentence>_<EMO>_<level>"):
        cremad.download_clips(raw)
