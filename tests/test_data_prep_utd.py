"""data_prep.utd_mhad on a tiny fake UTD-MHAD download (.mat files written here with scipy).

One conversion is shared by the module (3 actions x 8 subjects x 2 trials, 24x32 depth, a few
frames), with one missing file, one corrupt file, one file of the wrong shape and one stray name.
"""

import contextlib
import io
import json
import math

import numpy as np
import pytest
import scipy.io

from data_prep import utd_mhad
from mlb_jax.batch_format import length_key
from mlb_jax.data import pipeline
from mlb_jax.data._tf import import_tfds
from mlb_jax.data.schema import load_meta

ACTIONS = (1, 2, 3)
SUBJECTS = tuple(range(1, 9))
TRIALS = (1, 2)
RAW_SIZE = (24, 32)  # -> central 24x24 crop (columns 4-27) -> 12x12: 2x2 cells
FRAME_SIZE = (12, 12)
NUM_FRAMES = 4
MISSING = "a1_s2_t1"  # its Inertial file is deleted
CORRUPT = "a2_s3_t1"  # its Depth file is junk
WRONG_SHAPE = "a3_s5_t2"  # its d_skel is [20, 2, T]
OUTSIDE = "a2_s4_t2"  # has depth readings outside the crop
DROPPED = (MISSING, CORRUPT, WRONG_SHAPE)
ARGS = [
    f"--num_frames={NUM_FRAMES}",
    f"--frame_size={FRAME_SIZE[0]}x{FRAME_SIZE[1]}",
    "--val_trials=2",
    "--workers=1",
    "--no_progress",
]
CONFIG = "cross_subject_4f_12x12_val2"


def fake(a: int, s: int, t: int) -> dict[str, np.ndarray]:
    """The raw arrays of one fake sample: d_depth [24, 32, T], d_skel [20, 3, T], d_iner [T', 6]."""
    rng = np.random.default_rng([a, s, t])
    frames = 3 + (a + s + t) % 5  # 3-7
    # Readings in the crop at random (some 2x2 cells under half readings), each frame's own
    # values, so the kept frames are recognisable.
    depth = rng.integers(500, 4000, (*RAW_SIZE, frames)) + 7 * np.arange(frames)
    depth *= rng.random((*RAW_SIZE, frames)) < 0.6
    depth[:, :4] = depth[:, 28:] = 0
    if f"a{a}_s{s}_t{t}" == OUTSIDE:
        depth[5, 1, :] = 1234
    skeleton = rng.normal(0, 1, (20, 3, frames)) + np.array([[0.1], [0.2], [3.0]])
    inertial = rng.normal(0, 1, (5 + (a * s * t) % 8, 6)) * [1, 1, 1, 100, 100, 100]
    return {"d_depth": depth.astype(np.uint16), "d_skel": skeleton, "d_iner": inertial}


def write_raw(raw):
    for folder in ("Depth", "Skeleton", "Inertial"):
        (raw / folder).mkdir(parents=True)
    (raw / "Skeleton" / "Skeleton_joint_order.txt").write_text(
        "The skeleton joint order:\n\n1. head;\n2. shoulder_center;\n3. spine;\n4. hip_center;\n"
    )
    for a in ACTIONS:
        for s in SUBJECTS:
            for t in TRIALS:
                arrays = fake(a, s, t)
                for folder, suffix, var in utd_mhad.FILES.values():
                    path = raw / folder / f"a{a}_s{s}_t{t}_{suffix}.mat"
                    scipy.io.savemat(path, {var: arrays[var]})
    (raw / "Inertial" / f"{MISSING}_inertial.mat").unlink()
    (raw / "Depth" / f"{CORRUPT}_depth.mat").write_bytes(b"MATLAB 5.0 MAT-file, junk" * 9)
    bad = fake(3, 5, 2)["d_skel"][:, :2]
    scipy.io.savemat(raw / "Skeleton" / f"{WRONG_SHAPE}_skeleton.mat", {"d_skel": bad})
    scipy.io.savemat(raw / "Depth" / "a30_s1_t1_depth.mat", {"d_depth": np.ones((2, 2, 1))})


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("utd")
    raw, out = root / "raw", root / "out"
    write_raw(raw)
    stdout = io.StringIO()
    argv = [f"--raw_dir={raw}", f"--out_dir={out}", *ARGS, "--max_unreadable_fraction=0.1"]
    with contextlib.redirect_stdout(stdout):
        assert utd_mhad.main(argv) == 0
    report = json.loads((out / "utd_mhad" / CONFIG / "conversion_report.json").read_text())
    return {"raw": raw, "out": out, "argv": argv, "stdout": stdout.getvalue(), "report": report}


def examples(out):
    builder = import_tfds().builder_from_directory(load_meta(out).data_dir)
    return {
        split: {str(e["id"], "utf-8"): e for e in builder.as_dataset(split).as_numpy_iterator()}
        for split in ("train", "validation", "test")
    }


def expected_depth(d_depth):
    """Hand computation: frames floor((i + 0.5) T / N), columns 4-27, 2x2 cells >= 2 readings."""
    length = d_depth.shape[2]
    out = np.zeros((NUM_FRAMES, *FRAME_SIZE, 1), np.uint16)
    for i in range(NUM_FRAMES):
        frame = d_depth[:, 4:28, math.floor((i + 0.5) * length / NUM_FRAMES)]
        for y in range(FRAME_SIZE[0]):
            for x in range(FRAME_SIZE[1]):
                cell = frame[2 * y : 2 * y + 2, 2 * x : 2 * x + 2].astype(int)
                readings = cell[cell > 0]
                if len(readings) >= 2:
                    out[i, y, x, 0] = np.rint(readings.sum() / len(readings))
    return out


def expected_skeleton(d_skel):
    rows = []
    for t in range(d_skel.shape[2]):
        row = []
        for j in range(20):
            for c in range(3):
                row.append(d_skel[j, c, t] - d_skel[3, c, 0])  # joint 4 = hip centre, frame 0
        rows.append(row)
    return np.array(rows, np.float32)


def test_shapes_dtypes_and_values_are_the_hand_computed_ones(converted):
    meta = load_meta(converted["out"])
    longest_skeleton = max(
        3 + (a + s + t) % 5 for a in ACTIONS for s in SUBJECTS for t in TRIALS
    )  # T_max over what was written (all lengths occur among the written samples)
    longest_inertial = max(5 + (a * s * t) % 8 for a in ACTIONS for s in SUBJECTS for t in TRIALS)
    shapes = {m: (spec.kind, spec.shape, spec.dtype) for m, spec in meta.modalities.items()}
    assert shapes == {
        "depth": ("frames", (NUM_FRAMES, *FRAME_SIZE, 1), "uint16"),
        "skeleton": ("sequence", (longest_skeleton, 60), "float32"),
        "inertial": ("sequence", (longest_inertial, 6), "float32"),
    }
    checked = 0
    for split in examples(converted["out"]).values():
        for sample_id, e in split.items():
            a, s, t = (int(p[1:]) for p in sample_id.split("_"))
            raw = fake(a, s, t)
            assert e["label"] == a - 1
            assert e["depth"].dtype == np.uint16
            np.testing.assert_array_equal(e["depth"], expected_depth(raw["d_depth"]))
            length = e["skeleton"]["length"]
            assert length == raw["d_skel"].shape[2]
            np.testing.assert_allclose(
                e["skeleton"]["values"][:length], expected_skeleton(raw["d_skel"]), atol=1e-6
            )
            assert not e["skeleton"]["values"][length:].any()
            length = e["inertial"]["length"]
            assert length == len(raw["d_iner"])
            scaled = raw["d_iner"] * [1, 1, 1, math.pi / 180, math.pi / 180, math.pi / 180]
            np.testing.assert_allclose(e["inertial"]["values"][:length], scaled, rtol=1e-6)
            checked += 1
    assert checked == len(ACTIONS) * len(SUBJECTS) * len(TRIALS) - len(DROPPED)
    # The fake clips keep zeros (no reading) inside the person's area, and readings survive.
    depth = e["depth"]
    assert (depth == 0).any() and (depth > 0).any()


def test_frame_sampling_and_depth_resize_rules():
    assert utd_mhad.segment_indices(6, 4).tolist() == [0, 2, 3, 5]
    assert utd_mhad.segment_indices(3, 4).tolist() == [0, 1, 1, 2]  # short clips repeat
    assert utd_mhad.crop_box(240, 320) == (slice(0, 240), slice(40, 280))
    frames = np.array([[[0, 0, 8, 0], [0, 9, 8, 6], [100, 300, 0, 0], [0, 0, 0, 7]]], np.uint16)
    # 2x2 cells: [0,0,0,9] (1/4 readings) -> 0; [8,0,8,6] -> 7.33 -> 7; [100,300,0,0] -> 200;
    # [0,0,0,7] -> 0.
    assert utd_mhad.resize_depth(frames, (2, 2)).tolist() == [[[0, 7], [200, 0]]]
    # Upsampling (the raw frame is smaller than the output) keeps 0 where there is no reading.
    up = utd_mhad.resize_depth(np.array([[[0, 500]]], np.uint16), (2, 4))
    assert up.tolist() == [[[0, 0, 500, 500], [0, 0, 500, 500]]]
    np.testing.assert_array_equal(utd_mhad.fit_length(np.arange(10), 4), [1, 3, 6, 8])
    np.testing.assert_array_equal(utd_mhad.fit_length(np.arange(3), 4), [0, 1, 2])


def test_splits_are_cross_subject_with_validation_trials(converted):
    meta = load_meta(converted["out"])
    assert meta.class_names == utd_mhad.CLASS_NAMES
    assert meta.num_classes == 27 and meta.class_names[0] == "swipe_left"
    assert meta.class_names[-1] == "squat"
    found = examples(converted["out"])
    who = {
        split: {tuple(int(p[1:]) for p in i.split("_")[1:]) for i in ids}
        for split, ids in found.items()
    }
    subjects = {split: {s for s, _ in pairs} for split, pairs in who.items()}
    assert subjects == {"train": {1, 3, 5, 7}, "validation": {1, 3, 5, 7}, "test": {2, 4, 6, 8}}
    assert {t for _, t in who["train"]} == {1}
    assert {t for _, t in who["validation"]} == {2}
    assert {t for _, t in who["test"]} == {1, 2}
    expected = {
        "train": 12 - 1,
        "validation": 12 - 1,
        "test": 24 - 1,
    }  # CORRUPT, WRONG_SHAPE, MISSING
    assert meta.split_sizes == expected
    report = converted["report"]["splits"]
    assert {s: e["examples"] for s, e in report.items()} == expected
    assert report["validation"]["subjects"] == [1, 3, 5, 7] and report["validation"]["trials"] == [
        2
    ]
    assert report["train"]["per_class"]["swipe_left"] == 4
    assert sum(report["test"]["per_class"].values()) == 23


def test_report_names_missing_and_unreadable_files(converted):
    report, raw = converted["report"], converted["raw"]
    assert report["status"] == "ok" and report["examples"] == 45 and report["listed"] == 48
    dropped = {u["id"]: u for u in report["unreadable"]}
    assert sorted(dropped) == sorted(DROPPED)
    assert dropped[MISSING]["error"] == "MissingFile"
    assert dropped[MISSING]["files"] == {"inertial": f"Inertial/{MISSING}_inertial.mat is missing"}
    assert dropped[CORRUPT]["error"] == "UnreadableFile"
    (reason,) = dropped[CORRUPT]["files"].values()
    assert reason.startswith(f"{raw / 'Depth' / CORRUPT}_depth.mat: cannot be read (")
    assert "\n" not in reason
    assert dropped[WRONG_SHAPE]["files"] == {
        "skeleton": f"{raw / 'Skeleton' / WRONG_SHAPE}_skeleton.mat: d_skel has shape "
        f"{fake(3, 5, 2)['d_skel'][:, :2].shape}, expected [20, 3, T]"
    }
    assert (report["missing"], report["unreadable_files"]) == (1, 2)
    assert report["ignored_files"] == [
        {
            "file": str(raw / "Depth" / "a30_s1_t1_depth.mat"),
            "reason": "action 30 is not one of 1-27",
        }
    ]
    assert report["depth_outside_crop"] == [OUTSIDE]
    assert len(report["absent_from_download"]) == 27 * 8 * 4 - 48
    assert report["settings"]["skeleton"]["hip_joint"] == 4
    assert report["settings"]["skeleton"]["hip_joint_from"].endswith("Skeleton_joint_order.txt")
    assert (
        report["lengths"]["skeleton"]["max"]
        == load_meta(converted["out"]).modalities["skeleton"].shape[0]
    )
    assert report["capped"] == {"skeleton": 0, "inertial": 0}
    summary = converted["stdout"]
    assert f"utd_mhad/{CONFIG}: 45 of 48 samples" in summary
    assert "not written: 3 (1 missing, 2 unreadable files)" in summary


def test_length_caps_subsample_and_every_frame_centring(converted, tmp_path, capsys):
    out = tmp_path / "out"
    caps = ["--max_skeleton_len=4", "--max_inertial_len=6", "--skeleton_centre=every_frame"]
    assert (
        utd_mhad.main([*converted["argv"][:1], f"--out_dir={out}", *converted["argv"][2:], *caps])
        == 0
    )
    capsys.readouterr()
    meta = load_meta(out)
    assert meta.data_dir.parent.name == f"{CONFIG}_every_frame_skel4_iner6"
    assert meta.modalities["skeleton"].shape == (4, 60)
    assert meta.modalities["inertial"].shape == (6, 6)
    e = examples(out)["train"]["a2_s1_t1"]  # T = 3 + 4 % 5 = 7 skeleton frames, 7 inertial
    raw = fake(2, 1, 1)
    joints = np.moveaxis(raw["d_skel"], 2, 0)  # [T, 20, 3]
    centred = (joints - joints[:, 3:4]).reshape(len(joints), 60)  # each frame's own hip
    assert e["skeleton"]["length"] == 4
    np.testing.assert_allclose(e["skeleton"]["values"], centred[[0, 2, 4, 6]], atol=1e-6)
    assert e["inertial"]["length"] == 6
    report = json.loads((meta.data_dir.parent / "conversion_report.json").read_text())
    lengths = [3 + (a + s + t) % 5 for a in ACTIONS for s in SUBJECTS for t in TRIALS]
    assert report["capped"]["skeleton"] > 0
    assert report["lengths"]["skeleton"]["max"] == max(lengths)  # before the cap


def test_eval_batches_read_the_converted_data(converted):
    meta = load_meta(converted["out"])
    batch = next(pipeline.eval_batches(meta, "test", global_batch_size=8, process_count=1,
                                       process_index=0))  # fmt: skip
    inputs = batch["inputs"]
    assert inputs["depth"].shape == (8, NUM_FRAMES, *FRAME_SIZE, 1)
    assert inputs["skeleton"].shape == (8, meta.modalities["skeleton"].shape[0], 60)
    assert inputs["inertial"].shape == (8, meta.modalities["inertial"].shape[0], 6)
    assert inputs[length_key("skeleton")].shape == (8,)
    assert inputs["depth"].min() >= 0 and inputs["depth"].max() < 1  # mm / 4096


def test_rerun_finds_the_dataset_and_default_limit_refuses_three_bad_samples(
    converted, tmp_path, capsys
):
    assert utd_mhad.main(converted["argv"]) == 0
    assert "already converted" in capsys.readouterr().out
    out = tmp_path / "out"
    assert utd_mhad.main([f"--raw_dir={converted['raw']}", f"--out_dir={out}", *ARGS]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        "error: 3 of 48 examples are unreadable (6.2% > --max_unreadable_fraction=0.05); first: "
        f"Inertial/{MISSING}_inertial.mat is missing -- 1 of them lack one of their three files"
    )
    assert line.endswith("or raise --max_unreadable_fraction; nothing was written")
    report = json.loads((out / "utd_mhad" / CONFIG / "conversion_report.json").read_text())
    assert report["status"] == "failed"
    assert not list((out / "utd_mhad" / CONFIG).glob("*/dataset_info.json"))


def test_hip_joint_from_the_order_file_or_the_documented_default(tmp_path):
    (tmp_path / "Skeleton").mkdir()
    assert utd_mhad.hip_joint(tmp_path) == (4, "default")
    order = tmp_path / "Skeleton" / "Skeleton_joint_order.txt"
    order.write_text("1. head;\n2. hip_center;\n")
    assert utd_mhad.hip_joint(tmp_path) == (2, str(order))


@pytest.mark.parametrize("case", ["no_raw_dir", "no_depth", "no_samples"])
def test_bad_input_is_one_line_naming_the_path_and_the_fix(tmp_path, capsys, case):
    raw = tmp_path / "raw"
    if case != "no_raw_dir":
        folders = ("Depth", "Skeleton", "Inertial")[case == "no_depth" :]
        for folder in folders:
            (raw / folder).mkdir(parents=True)
    out = tmp_path / "out"
    assert utd_mhad.main([f"--raw_dir={raw}", f"--out_dir={out}", "--no_progress"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    fix = "pass --raw_dir=<the UTD-MHAD download holding Depth/, Skeleton/ and Inertial/>"
    expected = {
        "no_raw_dir": f"error: raw directory {raw} does not exist: {fix}",
        "no_depth": f"error: {raw} has no Depth/ folder: {fix}",
        "no_samples": f"error: {raw} holds no a<action>_s<subject>_t<trial>_<modality>.mat file "
        "in Depth/, Skeleton/ or Inertial/: pass --raw_dir=<the unpacked UTD-MHAD download>",
    }
    assert line == expected[case]
    assert not out.exists()


def test_bad_val_trials_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        utd_mhad.main([f"--raw_dir={tmp_path}", f"--out_dir={tmp_path}", "--val_trials=1,2,3,4"])
    assert stop.value.code == 2
    assert "is not a list of trials" in capsys.readouterr().err
    assert utd_mhad.val_trials("4,3") == (3, 4)
