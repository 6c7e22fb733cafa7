"""Schema, builder and load_meta: round trip through TFDS and every load_meta error."""

import json
import pathlib
import re
import shutil

import numpy as np
import pytest

from mlb_jax.data._tf import import_tfds
from mlb_jax.data.builder import AudioVideoBuilder, AudioVideoConfig, prepare
from mlb_jax.data.pipeline import eval_batches
from mlb_jax.data.schema import (
    SCHEMA_VERSION,
    DataError,
    ModalitySpec,
    load_meta,
    make_features,
)

tfds = import_tfds()

MODALITIES = {
    "audio": ModalitySpec("spectrogram", (5, 7)),
    "video": ModalitySpec("frames", (2, 16, 16, 3)),
}
SIZES = {"train": 6, "test": 5}


def _exactly(message: str) -> str:
    """A `pytest.raises` pattern matching exactly ``message``."""
    return f"^{re.escape(message)}$"


def _example(split: str, i: int) -> dict:
    rng = np.random.default_rng([SIZES[split], i])
    return {
        "id": f"{split}-{i}",
        "label": i % 3,
        "audio": rng.standard_normal((5, 7)).astype(np.float32),
        # One flat colour per frame: JPEG keeps flat colours within a level or two.
        "video": np.broadcast_to(
            rng.integers(0, 256, (2, 1, 1, 3), dtype=np.uint8), (2, 16, 16, 3)
        ).copy(),
    }


class Tiny(AudioVideoBuilder):
    """A tiny two-modality dataset."""

    BUILDER_CONFIGS = [  # noqa: RUF012 (TFDS declares it as a plain class attribute)
        AudioVideoConfig(name="base", class_names=("a", "b", "c"), modalities=MODALITIES)
    ]
    # Set by a test to copy the build directory while the build is running.
    snapshot_to: pathlib.Path | None = None

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in SIZES}

    def _generate_examples(self, split):
        for i in range(SIZES[split]):
            if (split, i) == ("train", 3) and self.snapshot_to is not None:
                # Mid-build state, as a kill at this moment would leave it.
                (building,) = pathlib.Path(self.data_dir).parent.glob("incomplete.*")
                shutil.copytree(building, self.snapshot_to / "tiny" / "base" / building.name)
            example = _example(split, i)
            yield example["id"], example


class TinyOld(Tiny):
    """The same data written with an older schema version."""

    name = "tiny"
    VERSION = tfds.core.Version("0.9.0")
    RELEASE_NOTES = {"0.9.0": "old"}  # noqa: RUF012


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("tiny")
    prepare(Tiny, data_dir=root)
    return root


def test_prepare_writes_a_tfds_version_directory(tiny_root, monkeypatch):
    version_dir = tiny_root / "tiny" / "base" / SCHEMA_VERSION
    # Nothing but the dataset: no downloads/ folder, no incomplete.* build left behind.
    assert [p.name for p in tiny_root.iterdir()] == ["tiny"]
    assert not list(tiny_root.rglob("incomplete.*"))
    assert [p.name for p in (tiny_root / "tiny" / "base").iterdir()] == [SCHEMA_VERSION]
    assert (version_dir / "dataset_info.json").is_file()
    assert (version_dir / "features.json").is_file()
    assert json.loads((version_dir / "dataset_info.json").read_text())["version"] == SCHEMA_VERSION
    for split in SIZES:
        assert len(list(version_dir.glob(f"tiny-{split}.tfrecord-*"))) >= 1, split

    # A second prepare reuses the finished dataset without generating anything.
    def no_generation(self, split):
        raise AssertionError("the finished dataset was regenerated")

    monkeypatch.setattr(Tiny, "_generate_examples", no_generation)
    mtime = (version_dir / "dataset_info.json").stat().st_mtime_ns
    assert prepare(Tiny, data_dir=tiny_root) == version_dir
    assert (version_dir / "dataset_info.json").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_load_meta_finds_the_version_directory_from_any_parent(tiny_root, level):
    version_dir = tiny_root / "tiny" / "base" / SCHEMA_VERSION
    meta = load_meta(version_dir.parents[level - 1] if level else version_dir)
    assert meta.data_dir == version_dir
    assert meta.name == "tiny/base"
    assert meta.class_names == ("a", "b", "c")
    assert meta.num_classes == 3
    assert meta.modalities == MODALITIES
    assert meta.split_sizes == SIZES
    assert meta.schema_version == SCHEMA_VERSION


def test_load_meta_selects_modalities(tiny_root):
    assert load_meta(tiny_root, modalities=["video"]).modalities == {"video": MODALITIES["video"]}
    # In the order requested; all of them (sorted by name) when none are named.
    assert list(load_meta(tiny_root, modalities=["video", "audio"]).modalities) == [
        "video",
        "audio",
    ]
    assert list(load_meta(tiny_root).modalities) == ["audio", "video"]
    version_dir = (tiny_root / "tiny" / "base" / SCHEMA_VERSION).resolve()
    message = (
        f"{version_dir} has no modality 'depth' (it has ['audio', 'video']): fix the modality "
        "names in the config or convert the data with that modality"
    )
    with pytest.raises(DataError, match=_exactly(message)):
        load_meta(tiny_root, modalities=["audio", "depth"])


def test_round_trip_ids_labels_shapes_and_values(tiny_root):
    # The raw TFDS view: every id once, with its label and arrays.
    builder = tfds.builder_from_directory(load_meta(tiny_root).data_dir)
    for split, size in SIZES.items():
        examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
        assert len(examples) == size
        stored = {ex["id"].decode(): ex for ex in examples}
        assert sorted(stored) == sorted(f"{split}-{i}" for i in range(size))
        for i in range(size):
            written, read = _example(split, i), stored[f"{split}-{i}"]
            assert read["label"] == written["label"]
            assert read["audio"].dtype == np.float32
            np.testing.assert_array_equal(read["audio"], written["audio"])  # exact
            assert read["video"].dtype == np.uint8 and read["video"].shape == (2, 16, 16, 3)
            assert np.abs(read["video"].astype(int) - written["video"]).max() <= 3  # JPEG

    # The input pipeline's view: same values, frames scaled to [0, 1] (mean 0, std 1 here).
    meta = load_meta(tiny_root)
    (batch,) = eval_batches(
        meta, "test", global_batch_size=8, frame_mean=(0, 0, 0), frame_std=(1, 1, 1)
    )
    assert batch["inputs"]["audio"].shape == (8, 5, 7)
    assert batch["inputs"]["audio"].dtype == np.float32
    assert batch["inputs"]["video"].shape == (8, 2, 16, 16, 3)
    assert batch["inputs"]["video"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["mask"].dtype == np.bool_
    assert batch["mask"].tolist() == [True] * 5 + [False] * 3
    written = {_example("test", i)["audio"].tobytes(): i for i in range(5)}
    rows = [written.get(batch["inputs"]["audio"][row].tobytes()) for row in range(5)]
    assert sorted(rows) == list(range(5))  # every example once, its audio bit-exact
    for row, i in enumerate(rows):
        example = _example("test", i)
        assert batch["label"][row] == example["label"]
        np.testing.assert_allclose(
            batch["inputs"]["video"][row] * 255, example["video"], atol=3.01, rtol=0
        )
    # Padding rows are zeros.
    assert not batch["inputs"]["audio"][5:].any()
    assert not batch["inputs"]["video"][5:].any()


def test_load_meta_missing_directory(tmp_path):
    path = tmp_path.resolve() / "nowhere"
    message = (
        f"data directory {path} does not exist: prepare the dataset first (a data_prep "
        "converter, or mlb_jax.data.ensure_synthetic) or fix the path"
    )
    with pytest.raises(DataError, match=_exactly(message)):
        load_meta(tmp_path / "nowhere")


def test_load_meta_file_instead_of_directory(tmp_path):
    path = tmp_path.resolve() / "dataset_info.json"
    path.write_text("{}")
    message = f"data directory {path} is a file: pass the dataset's directory"
    with pytest.raises(DataError, match=_exactly(message)):
        load_meta(path)


def test_load_meta_empty_directory(tmp_path):
    (tmp_path / "unrelated").mkdir()
    message = (
        f"no prepared dataset in {tmp_path.resolve()} (expected "
        "<dataset>/<config>/<version>/dataset_info.json): run the converter into this directory "
        "or fix the path"
    )
    with pytest.raises(DataError, match=_exactly(message)):
        load_meta(tmp_path)


def test_load_meta_schema_version_mismatch(tmp_path):
    old = prepare(TinyOld, data_dir=tmp_path).resolve()
    assert old == tmp_path.resolve() / "tiny" / "base" / "0.9.0"
    message = (
        f"{old} was written with schema 0.9.0, this mlb_jax reads 1.0.0 and {SCHEMA_VERSION}: "
        "re-run the converter with this mlb_jax to rewrite the dataset"
    )
    with pytest.raises(DataError, match=_exactly(message)):
        load_meta(tmp_path)
    with pytest.raises(DataError, match=_exactly(message)):
        load_meta(old)
    # Once the dataset is rewritten with this schema, the current version is picked.
    current = prepare(Tiny, data_dir=tmp_path)
    meta = load_meta(tmp_path)
    assert meta.data_dir == current.resolve()
    assert meta.schema_version == SCHEMA_VERSION


def test_load_meta_reads_schema_1_and_asks_for_an_upgrade_for_a_newer_one(tmp_path):
    class TinyV1(Tiny):
        name = "tiny"
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "spectrograms and RGB frames"}  # noqa: RUF012

    class TinyNext(Tiny):
        name = "tiny"
        VERSION = tfds.core.Version("3.0.0")
        RELEASE_NOTES = {"3.0.0": "future"}  # noqa: RUF012

    # 1.0.0's layout is a subset of this schema: read as it is, no rewrite asked for.
    meta = load_meta(prepare(TinyV1, data_dir=tmp_path / "v1"))
    assert meta.schema_version == "1.0.0"
    assert meta.modalities == MODALITIES
    newer = prepare(TinyNext, data_dir=tmp_path / "next").resolve()
    message = (
        f"{newer} was written with schema 3.0.0, this mlb_jax reads 1.0.0 and {SCHEMA_VERSION}: "
        "upgrade mlb_jax (pip install -U mlb_jax) to read it"
    )
    with pytest.raises(DataError, match=_exactly(message)):
        load_meta(newer)


def test_load_meta_rejects_an_interrupted_build(tmp_path, monkeypatch):
    snapshot = tmp_path / "killed"
    monkeypatch.setattr(Tiny, "snapshot_to", snapshot)
    version_dir = prepare(Tiny, data_dir=tmp_path / "finished")
    (building,) = (snapshot / "tiny" / "base").iterdir()
    assert re.fullmatch(rf"incomplete\.\w+_{re.escape(SCHEMA_VERSION)}", building.name)
    # The snapshot has no dataset_info.json yet; the finished build does.
    assert not (building / "dataset_info.json").exists()
    assert (version_dir / "dataset_info.json").is_file()

    def unfinished(path, name):
        return (
            f"{path.resolve()} holds only an unfinished build ({name}: its converter was "
            "interrupted): delete it and re-run the converter"
        )

    with pytest.raises(DataError, match=_exactly(unfinished(snapshot, building.name))):
        load_meta(snapshot)
    with pytest.raises(DataError, match=_exactly(unfinished(snapshot / "tiny", building.name))):
        load_meta(snapshot / "tiny")
    # Killed after TFDS wrote dataset_info.json but before its final rename.
    renamed = version_dir.parent / f"incomplete.ABCDEF_{SCHEMA_VERSION}"
    version_dir.rename(renamed)
    message = (
        f"{renamed.resolve()} is an unfinished build (its converter was interrupted): delete it "
        "and re-run the converter"
    )
    with pytest.raises(DataError, match=_exactly(message)):
        load_meta(renamed)
    with pytest.raises(DataError, match=_exactly(unfinished(tmp_path / "finished", renamed.name))):
        load_meta(tmp_path / "finished")


def test_load_meta_rejects_ambiguous_parent(tiny_root, tmp_path):
    for config in ("base", "other"):
        shutil.copytree(tiny_root / "tiny" / "base", tmp_path / "tiny" / config)
    message = (
        f"{tmp_path.resolve()} holds several prepared datasets (tiny/base/{SCHEMA_VERSION}, "
        f"tiny/other/{SCHEMA_VERSION}): pass the version directory of the one to use"
    )
    with pytest.raises(DataError, match=_exactly(message)):
        load_meta(tmp_path)
    # The config directory of one of them is not ambiguous.
    assert load_meta(tmp_path / "tiny" / "other").data_dir == (
        tmp_path.resolve() / "tiny" / "other" / SCHEMA_VERSION
    )


def test_load_meta_rejects_damaged_info(tiny_root, tmp_path):
    copy = shutil.copytree(tiny_root / "tiny" / "base" / SCHEMA_VERSION, tmp_path / SCHEMA_VERSION)
    (copy / "dataset_info.json").write_text("{not json")
    message = (
        f"{copy.resolve() / 'dataset_info.json'} is unreadable (Expecting property name enclosed "
        "in double quotes: line 1 column 2 (char 1)): re-run the converter to rewrite it"
    )
    with pytest.raises(DataError, match=_exactly(message)):
        load_meta(copy)
    info = json.loads(
        (tiny_root / "tiny" / "base" / SCHEMA_VERSION / "dataset_info.json").read_text()
    )
    (copy / "dataset_info.json").write_text(json.dumps(info))
    (copy / "features.json").unlink()
    # The middle is TFDS's own exception, whose text is not ours to pin.
    pattern = (
        f"(?s)^cannot read the dataset in {re.escape(str(copy.resolve()))} \\(\\w+: .+\\): "
        "re-run the converter to rewrite it$"
    )
    with pytest.raises(DataError, match=pattern):
        load_meta(copy)


def test_modality_spec_validation():
    # Shapes are normalised to tuples of ints.
    spec = ModalitySpec("frames", [2, np.int64(8), 8, 3])
    assert spec.shape == (2, 8, 8, 3) and all(type(d) is int for d in spec.shape)
    assert spec == ModalitySpec("frames", (2, 8, 8, 3))
    errors = [
        (("spectrogram", (1, 2, 3)), "a spectrogram has shape (F, T), got (1, 2, 3)"),
        (("frames", (2, 8, 8)), "frames have shape (T, H, W, C) with C 1 or 3, got (2, 8, 8)"),
        (
            ("frames", (2, 8, 8, 2)),
            "frames have shape (T, H, W, C) with C 1 or 3, got (2, 8, 8, 2)",
        ),
        (
            ("spectrogram", (4, 0)),
            "modality shape (4, 0) has a non-positive size: sizes must be >= 1",
        ),
        (
            ("depth", (2, 2)),
            "unknown modality kind 'depth': use 'spectrogram', 'frames' or 'sequence'",
        ),
    ]
    for (kind, shape), message in errors:
        with pytest.raises(DataError, match=_exactly(message)):
            ModalitySpec(kind, shape)  # type: ignore[arg-type]


def test_make_features():
    features = make_features(["x", "y"], MODALITIES)
    assert list(features.keys()) == ["id", "label", "audio", "video"]
    assert isinstance(features["id"], tfds.features.Text)
    assert isinstance(features["label"], tfds.features.ClassLabel)
    assert features["label"].names == ["x", "y"]
    audio = features["audio"]
    assert isinstance(audio, tfds.features.Tensor)
    assert audio.shape == (5, 7) and audio.np_dtype == np.float32
    assert audio._encoding == tfds.features.Encoding.BYTES  # exact floats
    assert isinstance(features["video"], tfds.features.Video)
    new = make_features(
        ["x"],
        {
            "imu": ModalitySpec("sequence", (9, 6)),
            "depth": ModalitySpec("frames", (2, 4, 4, 1), "uint16"),
            "lips": ModalitySpec("frames", (2, 4, 4, 1)),
        },
    )
    assert set(new["imu"].keys()) == {"values", "length"}
    assert new["imu"]["values"].shape == (9, 6)
    assert new["imu"]["values"]._encoding == tfds.features.Encoding.ZLIB  # padding ~free
    assert new["depth"].np_dtype == np.uint16  # exact, zlib (JPEG has no 16-bit form)
    assert new["depth"]._encoding == tfds.features.Encoding.ZLIB
    assert isinstance(new["lips"], tfds.features.Video) and new["lips"].shape == (2, 4, 4, 1)
    assert features["video"].shape == (2, 16, 16, 3)
    errors = [
        (([], MODALITIES), "a dataset needs at least one class name"),
        ((["a"], {}), "a dataset needs at least one modality"),
        (
            (["a"], {"label": ModalitySpec("spectrogram", (2, 2))}),
            "modality name 'label' is reserved: rename the modality",
        ),
        (
            (["a"], {"id": ModalitySpec("spectrogram", (2, 2))}),
            "modality name 'id' is reserved: rename the modality",
        ),
    ]
    for args, message in errors:
        with pytest.raises(DataError, match=_exactly(message)):
            make_features(*args)


class FromRaw(Tiny):
    """Reads its labels from a raw file, like a converter."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Put labels.txt (one label per line) in manual_dir."

    def _split_generators(self, dl_manager):
        labels = (dl_manager.manual_dir / "labels.txt").read_text().split()
        return {"train": self._from_labels([int(y) for y in labels])}

    def _from_labels(self, labels):
        for i, label in enumerate(labels):
            yield str(i), _example("train", i) | {"id": str(i), "label": label}


def test_prepare_reads_raw_files_from_manual_dir(tmp_path):
    message = (
        "from_raw is converted from raw files: pass manual_dir (the directory holding them). "
        "Put labels.txt (one label per line) in manual_dir."
    )
    with pytest.raises(DataError, match=_exactly(message)):
        prepare(FromRaw, data_dir=tmp_path / "out")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "labels.txt").write_text("2\n0\n1\n1\n")
    version_dir = prepare(FromRaw, data_dir=tmp_path / "out", manual_dir=raw)
    assert load_meta(version_dir).split_sizes == {"train": 4}
    # The labels are the ones in the raw file.
    stored = tfds.as_numpy(tfds.builder_from_directory(version_dir).as_dataset(split="train"))
    assert {ex["id"].decode(): int(ex["label"]) for ex in stored} == {
        "0": 2,
        "1": 0,
        "2": 1,
        "3": 1,
    }
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["from_raw"]  # no downloads/
    # Once written, the raw files are no longer needed.
    shutil.rmtree(raw)
    assert prepare(FromRaw, data_dir=tmp_path / "out") == version_dir


def test_builder_without_config_is_a_clear_error(tmp_path):
    class NoConfig(AudioVideoBuilder):
        def _split_generators(self, dl_manager):
            return {}

        def _generate_examples(self):
            yield from ()

    message = (
        "NoConfig has no AudioVideoConfig: define BUILDER_CONFIGS or pass "
        "config=AudioVideoConfig(name=..., class_names=..., modalities=...)"
    )
    with pytest.raises(DataError, match=_exactly(message)):
        prepare(NoConfig, data_dir=tmp_path)


def _foreign_builder(feature_dict, example):
    """A TFDS builder (not an `AudioVideoBuilder`) writing one example with these features."""

    class Foreign(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(SCHEMA_VERSION)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(feature_dict)
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            yield "0", example

    return Foreign


_TEXT, _LABEL = tfds.features.Text(), tfds.features.ClassLabel(names=["a"])
_NEITHER = "{dir}: feature {name!r} (Tensor) is not a spectrogram, frames or a sequence: re-run "
_NEITHER += "the converter with this mlb_jax"


@pytest.mark.parametrize(
    ("features", "modality", "message"),
    [
        pytest.param(
            {"id": _TEXT, "audio": tfds.features.Tensor(shape=(2, 2), dtype=np.float32)},
            np.zeros((2, 2), np.float32),
            "{dir} lacks the 'id'/'label' features of the mlb_jax schema: it was not written by "
            "an mlb_jax converter; convert the raw data with data_prep/",
            id="no_label",
        ),
        pytest.param(
            {
                "id": _TEXT,
                "label": _LABEL,
                "depth": tfds.features.Tensor(shape=(2, 2), dtype=np.int32),
            },
            np.zeros((2, 2), np.int32),
            _NEITHER,
            id="int_tensor",
        ),
        pytest.param(
            {
                "id": _TEXT,
                "label": _LABEL,
                "audio": tfds.features.Tensor(shape=(2, 2, 2), dtype=np.float32),
            },
            np.zeros((2, 2, 2), np.float32),
            _NEITHER,
            id="three_dims",
        ),
        pytest.param(
            {
                "id": _TEXT,
                "label": _LABEL,
                "audio": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
            },
            np.zeros((3, 2), np.float32),
            "{dir}: modality {name!r} has a variable shape (None, 2): converters must write fixed "
            "shapes; re-run the converter",
            id="variable_shape",
        ),
        pytest.param(
            {
                "id": _TEXT,
                "label": _LABEL,
                "depth": tfds.features.Tensor(shape=(2, 4, 4, 2), dtype=np.uint16),
            },
            np.zeros((2, 4, 4, 2), np.uint16),
            "{dir}: modality {name!r}: frames have shape (T, H, W, C) with C 1 or 3, got "
            "(2, 4, 4, 2)",
            id="two_channel_frames",
        ),
        pytest.param(
            {"id": _TEXT, "label": _LABEL},
            None,
            "{dir} has no modality feature: re-run the converter",
            id="no_modality",
        ),
    ],
)
def test_load_meta_rejects_a_dataset_outside_the_schema(tmp_path, features, modality, message):
    names = [name for name in features if name not in ("id", "label")]
    example = {name: 0 if name == "label" else "x" for name in features if name in ("id", "label")}
    example |= {name: modality for name in names}
    version_dir = prepare(_foreign_builder(features, example), data_dir=tmp_path).resolve()
    expected = message.format(dir=version_dir, name=names[0] if names else None)
    with pytest.raises(DataError, match=_exactly(expected)):
        load_meta(tmp_path)
