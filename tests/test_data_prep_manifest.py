"""data_prep.manifest with any modality columns: .npy sequences and frames, options, bad cells.

One raw directory (a 3-modality manifest of .npy files: MFCC-like float sequences [T, 13] of
varying T, uint8 grayscale frames [T, 8, 8], uint16 depth [T, 8, 8, 1]; good rows and one bad
cell per kind of problem) is written once and converted twice for the module: as stored, and
with per-modality options (plus a wav column). Values are read back through the input
pipeline (`eval_batches`) and compared with what was written.
"""

import importlib.util
import json
import pathlib
import re

import numpy as np
import pytest
from fake_media import write_audio
from test_data_prep import assert_nothing_written, examples, one_error_line

from data_prep import common, manifest, media
from mlb_jax.batch_format import length_key
from mlb_jax.data import pipeline
from mlb_jax.data.schema import DataError, ModalitySpec, load_meta

ROOT = pathlib.Path(__file__).resolve().parents[1]
D = 13  # MFCC coefficients
GRAY_T, DEPTH_T, SIZE = 4, 3, 8
FLAGS = ["--no_progress", "--workers=1"]
# The 8 good rows' sequence lengths: the longest (10) is the stored T_max.
LENGTHS = (3, 4, 5, 6, 7, 8, 9, 10)


def gray_frames(i: int) -> np.ndarray:
    """Smooth uint8 [T, 8, 8] frames (JPEG keeps them within a few levels)."""
    t, y, x = np.meshgrid(np.arange(GRAY_T), np.arange(SIZE), np.arange(SIZE), indexing="ij")
    return (30 + 40 * t + 3 * x + 2 * y + 5 * i).astype(np.uint8)


def save(path: pathlib.Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return path.relative_to(path.parents[1]).as_posix()


# One bad cell per row: (id, column, what is written, the reason's text).
BAD_CELLS = [
    ("b_rank", "mfcc", np.zeros((2, 3, D), np.float32),
     "wrong rank 3 for a sequence (expected [T, D])"),
    ("b_dtype", "mfcc", np.zeros((4, D), np.int64), "dtype int64 is not float or uint8/uint16"),
    ("b_nan", "mfcc", np.full((4, D), np.nan, np.float32), "contains NaN"),
    ("b_empty", "mfcc", np.zeros((0, D), np.float32), "empty (T = 0)"),
    ("b_width", "mfcc", np.zeros((4, 12), np.float32),
     "width D=12 differs from the column's D=13"),
    ("b_missing", "depth", None, "missing file"),
    ("b_frame_rank", "gray", np.zeros((SIZE, SIZE), np.uint8),
     "wrong rank 2 for frames (expected [T, H, W] or [T, H, W, C])"),
]  # fmt: skip


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """The raw directory: manifest.csv (3 .npy modalities), with_wav.csv, and what was written.

    Returns:
        (the directory, {id: {'split', 'label', 'mfcc', 'gray', 'depth'}} of the good rows).
    """
    root = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    written, lines = {}, []
    for i, length in enumerate(LENGTHS):
        ex = f"g{i}"
        mfcc = rng.standard_normal((length, D)).astype(np.float32)
        stored = {1: mfcc.astype(np.float64), 2: mfcc.astype(np.float16)}.get(i, mfcc)
        depth = rng.integers(0, 65536, (DEPTH_T, SIZE, SIZE, 1)).astype(np.uint16)
        written[ex] = {
            "split": "train" if i < 5 else "test",
            "label": ("no", "yes")[i % 2],
            "mfcc": stored.astype(np.float32),  # float16 / float64 read back as float32
            "gray": gray_frames(i),
            "depth": depth,
        }
        cells = [save(root / m / f"{ex}.npy", written[ex][m]) for m in ("gray", "depth")]
        cells.insert(0, save(root / "mfcc" / f"{ex}.npy", stored))
        lines.append(f"{ex},{written[ex]['split']},{written[ex]['label']},{','.join(cells)}")
    for ex, column, bad, _ in BAD_CELLS:
        cells = {
            "mfcc": save(root / "mfcc" / f"{ex}.npy", np.zeros((4, D), np.float32)),
            "gray": save(root / "gray" / f"{ex}.npy", gray_frames(0)),
            "depth": save(root / "depth" / f"{ex}.npy", np.zeros((DEPTH_T, SIZE, SIZE, 1), "u2")),
        }
        (root / cells[column]).unlink()
        if bad is not None:
            save(root / cells[column], bad)
        lines.append(f"{ex},train,no,{cells['mfcc']},{cells['gray']},{cells['depth']}")
    (root / "manifest.csv").write_text("id,split,label,mfcc,gray,depth\n" + "\n".join(lines))
    write_audio(root / "voice.wav", 0.3, 8000)
    good = [line.split(",") for line in lines[: len(LENGTHS)]]
    (root / "with_wav.csv").write_text(
        "id,split,label,mfcc,gray,voice\n"
        + "".join(f"{','.join(row[:5])},voice.wav\n" for row in good)
    )
    return root, written


@pytest.fixture(scope="module")
def converted(raw, tmp_path_factory):
    """The 3-modality manifest converted as stored (bad rows allowed): (version dir, report)."""
    root, _ = raw
    out = tmp_path_factory.mktemp("out")
    argv = [f"--manifest={root / 'manifest.csv'}", f"--out_dir={out}", *FLAGS]
    assert manifest.main([*argv, "--max_unreadable_fraction=0.5"]) == 0
    report = json.loads((out / "manifest" / "manifest" / common.REPORT_NAME).read_text())
    return load_meta(out), report


@pytest.fixture(scope="module")
def with_options(raw, tmp_path_factory):
    """with_wav.csv converted with per-modality options: sequences resampled, frames resized."""
    root, _ = raw
    out = tmp_path_factory.mktemp("out")
    argv = [
        f"--manifest={root / 'with_wav.csv'}", f"--out_dir={out}", *FLAGS,
        "--modality_options=mfcc:max_length=6,fit=resample",
        "--modality_options=gray:num_frames=2,frame_size=4x6",
        "--sample_rate=8000", "--audio_seconds=0.25", "--stft_window=128", "--stft_hop=64",
    ]  # fmt: skip
    assert manifest.main(argv) == 0
    return load_meta(out)


def read_back(meta, split: str) -> dict[str, dict[str, np.ndarray]]:
    """id -> the batch rows (inputs) of one split, through `eval_batches`."""
    ids = list(examples(meta.data_dir, split))  # the stored order, which 'index' counts in
    rows = {}
    batches = pipeline.eval_batches(
        meta, split, global_batch_size=4, process_index=0, process_count=1
    )
    for batch in batches:
        for r in np.flatnonzero(batch["mask"]):
            rows[ids[batch["index"][r]]] = {
                "label": batch["label"][r],
                **{k: v[r] for k, v in batch["inputs"].items()},
            }
    return rows


def test_kinds_shapes_and_dtypes_in_the_meta(converted):
    meta, report = converted
    assert meta.name == "manifest/manifest"
    assert meta.class_names == ("no", "yes")
    assert meta.modalities == {
        "depth": ModalitySpec("frames", (DEPTH_T, SIZE, SIZE, 1), "uint16"),
        "gray": ModalitySpec("frames", (GRAY_T, SIZE, SIZE, 1), "uint8"),
        "mfcc": ModalitySpec("sequence", (max(LENGTHS), D), "float32"),
    }
    assert meta.split_sizes == {"train": 5, "test": 3}
    settings = report["settings"]["modalities"]
    assert settings["mfcc"] == {
        "kind": "sequence", "shape": [10, D], "dtype": "float32", "from": "SequenceSettings",
        "width": D, "max_length": 10, "fit": "crop",
    }  # fmt: skip
    assert settings["depth"]["from"] == "ArrayFrameSettings"


def test_values_read_back_through_the_pipeline_equal_the_inputs(raw, converted):
    _, written = raw
    meta, _ = converted
    for split, size in meta.split_sizes.items():
        rows = read_back(meta, split)
        assert len(rows) == size
        for ex, row in rows.items():
            inputs = written[ex]
            assert meta.class_names[row["label"]] == inputs["label"] and inputs["split"] == split
            length = len(inputs["mfcc"])
            assert row[length_key("mfcc")] == length
            np.testing.assert_array_equal(row["mfcc"][:length], inputs["mfcc"])  # exact
            assert not row["mfcc"][length:].any()
            # uint16 depth: x / 4096 (mlb_jax.data.pipeline.DEPTH_SCALE), exact.
            np.testing.assert_array_equal(row["depth"] * pipeline.DEPTH_SCALE, inputs["depth"])
            # uint8 grayscale: (x / 255 - mean) / std, stored as JPEG.
            gray = (row["gray"] * pipeline.GRAYSCALE_STD + pipeline.GRAYSCALE_MEAN) * 255
            np.testing.assert_allclose(gray[..., 0], inputs["gray"], atol=4)


def test_each_bad_cell_is_reported_with_a_one_line_reason_naming_the_column(raw, converted):
    root, _ = raw
    _, report = converted
    assert report["status"] == "ok" and report["examples"] == len(LENGTHS)
    reasons = {u["id"]: u["reason"] for u in report["unreadable"]}
    assert reasons.keys() == {ex for ex, *_ in BAD_CELLS}
    for ex, column, _, message in BAD_CELLS:
        path = root / column / f"{ex}.npy"
        assert reasons[ex] == f"{path}: column {column!r}: {message}"
    assert {u["error"] for u in report["unreadable"]} == {"BadArrayError"}
    assert report["unreadable_fraction"] == pytest.approx(7 / 15)


def test_too_many_bad_cells_write_nothing(raw, tmp_path, capsys):
    root, _ = raw
    out = tmp_path / "out"
    assert manifest.main([f"--manifest={root / 'manifest.csv'}", f"--out_dir={out}", *FLAGS]) == 1
    line = one_error_line(capsys)
    first = f"{root / 'mfcc' / 'b_rank.npy'}: column 'mfcc': wrong rank 3 for a sequence"
    assert line.startswith(
        "error: 7 of 15 examples are unreadable (46.7% > --max_unreadable_fraction=0.05); "
        f"first: {first}"
    ), line
    assert_nothing_written(out)
    failed = json.loads((out / "manifest" / "manifest" / common.REPORT_NAME).read_text())
    assert failed["status"] == "failed" and len(failed["unreadable"]) == 7


def test_per_modality_options_fit_sequences_and_frames(raw, with_options):
    _, written = raw
    meta = with_options
    assert meta.modalities == {
        "gray": ModalitySpec("frames", (2, 4, 6, 1), "uint8"),
        "mfcc": ModalitySpec("sequence", (6, D), "float32"),
        "voice": ModalitySpec("spectrogram", (65, 1 + 2000 // 64)),  # an audio file column
    }
    stored = examples(meta.data_dir, "train") | examples(meta.data_dir, "test")
    assert stored.keys() == written.keys()
    for ex, row in stored.items():
        mfcc = written[ex]["mfcc"]
        # Longer than 6: resampled onto 6 steps (first and last kept); shorter: kept whole.
        expected = media.fit_sequence(mfcc, 6, "resample")
        assert row["mfcc"]["length"] == min(len(mfcc), 6)
        np.testing.assert_array_equal(row["mfcc"]["values"][: len(expected)], expected)
        if len(mfcc) > 6:
            np.testing.assert_allclose(expected[[0, -1]], mfcc[[0, -1]], rtol=1e-6)
        # 2 of 4 frames (the centres of two halves: 1 and 3), area-resized 8x8 -> 4x6.
        gray = row["gray"][..., 0].astype(float)
        source = written[ex]["gray"][[1, 3]].astype(float)
        np.testing.assert_allclose(gray.mean(axis=(1, 2)), source.mean(axis=(1, 2)), atol=3)


def _csv(tmp_path, header, rows) -> pathlib.Path:
    path = tmp_path / "m.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_a_column_mixing_kinds_is_one_line_naming_two_rows(tmp_path, capsys):
    save(tmp_path / "x" / "seq.npy", np.zeros((3, D), np.float32))
    save(tmp_path / "x" / "img.npy", np.zeros((3, 8, 8), np.uint8))
    write_audio(tmp_path / "a.wav", 0.2)
    csv = _csv(tmp_path, "id,split,label,a,b", [
        "1,train,x,x/seq.npy,a.wav", "2,train,x,x/seq.npy,a.wav", "3,train,x,x/img.npy,a.wav",
    ])  # fmt: skip
    out = tmp_path / "out"
    assert manifest.main([f"--manifest={csv}", f"--out_dir={out}", *FLAGS]) == 1
    assert one_error_line(capsys) == (
        f"error: manifest {csv}: column 'a' mixes kinds: line 2 (x/seq.npy) is a float32 .npy "
        "(sequence), line 4 (x/img.npy) is a uint8 .npy (frames): all cells of a column must be "
        "one kind (or force one with --modality_options='a:kind=...')"
    )
    assert_nothing_written(out)
    # An audio file and a video file in one column, too.
    csv = _csv(tmp_path, "id,split,label,a,b", ["1,train,x,a.wav,a.wav", "2,train,x,a.wav,v.mp4"])
    assert manifest.main([f"--manifest={csv}", f"--out_dir={out}", *FLAGS]) == 1
    assert "column 'b' mixes kinds: line 2 (a.wav) is an audio file, line 3 (v.mp4) is a video " \
        "file" in one_error_line(capsys)  # fmt: skip


OPTION_ERRORS = {
    "mfcc max_length=4": r"'mfcc max_length=4' is not <modality>:<key>=<value>",
    "mfcc:max_length": r"'mfcc:max_length' is not <modality>:<key>=<value>",
    "mfcc:colour=red": r"mfcc:colour=red: unknown option 'colour' \(options: kind, max_length",
    "mfcc:max_length=0": r"mfcc:max_length=0: not an integer >= 1$",
    "mfcc:fit=stretch,max_length=4": r"mfcc:fit=stretch: not one of crop, resample$",
    "lips:frame_size=8y8": r"lips:frame_size=8y8: not a size: use e\.g\. 88 or 88x120",
    "mfcc:kind=text": r"mfcc:kind=text: not one of audio, video, sequence, frames$",
    "mfcc:fit=resample": r"mfcc:fit=resample needs mfcc:max_length=N",
    "mfcc:max_length=4;mfcc:max_length=5": r"mfcc:max_length is given twice",
}


@pytest.mark.parametrize("text", OPTION_ERRORS)
def test_option_syntax_errors_are_one_line_naming_the_option(text):
    with pytest.raises(DataError) as e:
        manifest.parse_modality_options([text])
    message = str(e.value)
    assert "\n" not in message and message.startswith("--modality_options: ")
    assert re.search(OPTION_ERRORS[text], message), message


def test_options_for_a_missing_column_or_another_kind_are_one_line(tmp_path, capsys):
    save(tmp_path / "s.npy", np.zeros((3, D), np.float32))
    save(tmp_path / "f.npy", np.zeros((3, 8, 8), np.uint8))
    csv = _csv(tmp_path, "id,split,label,mfcc,lips", ["1,train,x,s.npy,f.npy"])
    cases = {
        "lipz:num_frames=2": "--modality_options: 'lipz' is not a modality column of "
        f"{csv} (its modality columns: mfcc, lips)",
        "mfcc:num_frames=2": "--modality_options: mfcc:num_frames: num_frames applies to "
        "video and frames columns, and column 'mfcc' holds sequence",
        "lips:max_length=2": "--modality_options: lips:max_length: max_length applies to "
        "sequence columns, and column 'lips' holds frames",
    }
    for option, message in cases.items():
        argv = [
            f"--manifest={csv}",
            f"--out_dir={tmp_path / 'out'}",
            f"--modality_options={option}",
        ]
        assert manifest.main(argv) == 1
        assert one_error_line(capsys) == f"error: {message}"


def test_header_rules(tmp_path, capsys):
    cases = {
        "id,split,label,mfcc": "has 1 modality column(s) (mfcc): list at least two",
        "id,split,label,mfcc,2d": "column '2d' is not a modality name: use letters, digits",
        "id,split,label,a,a": "column 'a' appears twice in the header",
        "id,split,a,b": "has no column 'label'",
    }
    for header, message in cases.items():
        row = ",".join(["1", "train", "x", "s.npy", "s.npy"][: header.count(",") + 1])
        csv = _csv(tmp_path, header, [row])
        assert manifest.main([f"--manifest={csv}", f"--out_dir={tmp_path / 'out'}"]) == 1
        assert message in one_error_line(capsys)


def test_npy_frames_of_different_sizes_need_an_option(tmp_path, capsys):
    save(tmp_path / "s.npy", np.zeros((3, D), np.float32))
    save(tmp_path / "a.npy", np.zeros((3, 8, 8), np.uint8))
    save(tmp_path / "b.npy", np.zeros((5, 8, 8), np.uint8))
    csv = _csv(tmp_path, "id,split,label,s,f", ["1,train,x,s.npy,a.npy", "2,train,x,s.npy,b.npy"])
    assert manifest.main([f"--manifest={csv}", f"--out_dir={tmp_path / 'out'}"]) == 1
    assert one_error_line(capsys).endswith(
        "column 'f': frame counts T differ (line 2: 3, line 3: 5): store them alike or set one "
        "with --modality_options='f:num_frames=N'"
    )


# ----------------------------------------------------------------------- end-to-end training


def learnable_manifest(root: pathlib.Path, per_class: int = 24) -> pathlib.Path:
    """2 classes told apart by both modalities: MFCC-like 'audio' .npy sequences [T, 13] (the
    class shifts coefficient 0) and grayscale 'video' .npy frames [4, 16, 16] (bright or dark).
    """
    rng = np.random.default_rng(1)
    lines = []
    for i in range(2 * per_class):
        label = i % 2
        split = ("train", "train", "train", "validation", "test")[i % 5]
        audio = rng.standard_normal((int(rng.integers(20, 40)), D)).astype(np.float32)
        audio[:, 0] += 3.0 if label else -3.0
        video = rng.integers(0, 64, (4, 16, 16)) + (160 if label else 0)
        a = save(root / "audio" / f"{i}.npy", audio)
        v = save(root / "video" / f"{i}.npy", video.astype(np.uint8))
        lines.append(f"{i},{split},c{label},{a},{v}")
    path = root / "list.csv"
    path.write_text("id,split,label,audio,video\n" + "\n".join(lines) + "\n")
    return path


def test_train_on_a_converted_npy_manifest(tmp_path):
    """Convert a .npy manifest, then train on it with configs/custom.py, tiny settings.

    As on the command line: ``python -m mlb_jax.train --config=configs/custom.py
    --config.data.dir=<out>/manifest/list --workdir=<run>`` plus the overrides below: no
    modality, encoder or shape is configured.
    """
    from mlb_jax import trainer

    csv = learnable_manifest(tmp_path / "raw")
    out = tmp_path / "out"
    assert manifest.main([f"--manifest={csv}", f"--out_dir={out}", *FLAGS]) == 0
    meta = load_meta(out / "manifest" / "list")
    assert meta.modalities["audio"].kind == "sequence"
    assert meta.modalities["video"] == ModalitySpec("frames", (4, 16, 16, 1), "uint8")

    spec = importlib.util.spec_from_file_location("custom", ROOT / "configs" / "custom.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()  # --config=configs/custom.py
    config.data.dir = str(out / "manifest" / "list")  # --config.data.dir=...
    # configs/tiny.py's sizes.
    config.progress = False
    config.model.base_width = 2
    config.model.conv = "xla"  # the CPU plan compiles longer and buys nothing at width 2
    config.train.epochs = 2
    config.train.batch_size = 8
    config.train.eval_batch_size = 8
    config.train.warmup_steps = 0
    config.train.lr = 0.01
    config.probe.steps = 20
    config.evaluate.enabled = False
    results = trainer.train_and_evaluate(config, tmp_path / "run")
    assert results["num_test_examples"] == meta.split_sizes["test"]
    assert np.isfinite(results["accuracy"]) and results["accuracy"] > 0.5
    # The encoders were picked from the stored kinds, and config.json records them.
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["model"]["modalities"]
    assert recorded == {
        "audio": {"kind": "tcn", "in_features": 13},  # MFCC-like [T, 13]: temporal convolution
        "video": {"kind": "video", "in_channels": 1},  # grayscale frames: 1-channel ResNet
    }
