"""Schema, builder and load_meta: round trip through TFDS and every load_meta error."""

import json
import pathlib
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


def test_prepare_writes_a_tfds_version_directory(tiny_root):
    version_dir = tiny_root / "tiny" / "base" / SCHEMA_VERSION
    assert (version_dir / "dataset_info.json").is_file()
    assert (version_dir / "features.json").is_file()
    assert list(version_dir.glob("tiny-train.tfrecord-*"))
    # A second prepare reuses the finished dataset.
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
    assert list(load_meta(tiny_root, modalities=["video"]).modalities) == ["video"]
    with pytest.raises(DataError, match=r"has no modality 'depth' \(it has \['audio', 'video'\]\)"):
        load_meta(tiny_root, modalities=["audio", "depth"])


def test_round_trip_ids_labels_shapes_and_values(tiny_root):
    # The raw TFDS view: every id once, with its label and arrays.
    builder = tfds.builder_from_directory(load_meta(tiny_root).data_dir)
    for split, size in SIZES.items():
        stored = {ex["id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}
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
    written = {_example("test", i)["audio"].tobytes(): _example("test", i) for i in range(5)}
    for row in range(5):
        example = written[batch["inputs"]["audio"][row].tobytes()]
        assert batch["label"][row] == example["label"]
        np.testing.assert_allclose(
            batch["inputs"]["video"][row] * 255, example["video"], atol=3.01, rtol=0
        )


def test_load_meta_missing_directory(tmp_path):
    with pytest.raises(DataError, match=r"data directory .*nowhere does not exist: prepare"):
        load_meta(tmp_path / "nowhere")


def test_load_meta_empty_directory(tmp_path):
    (tmp_path / "unrelated").mkdir()
    with pytest.raises(DataError, match=r"no prepared dataset in .*: run the converter"):
        load_meta(tmp_path)


def test_load_meta_schema_version_mismatch(tmp_path):
    prepare(TinyOld, data_dir=tmp_path)
    message = (
        rf"0\.9\.0 was written with schema 0\.9\.0, this mlb_jax reads {SCHEMA_VERSION}: "
        "re-run the converter"
    )
    with pytest.raises(DataError, match=message):
        load_meta(tmp_path)
    with pytest.raises(DataError, match=message):
        load_meta(tmp_path / "tiny" / "base" / "0.9.0")
    # Once the dataset is rewritten with this schema, the current version is picked.
    prepare(Tiny, data_dir=tmp_path)
    assert load_meta(tmp_path).schema_version == SCHEMA_VERSION


def test_load_meta_rejects_an_interrupted_build(tmp_path, monkeypatch):
    snapshot = tmp_path / "killed"
    monkeypatch.setattr(Tiny, "snapshot_to", snapshot)
    version_dir = prepare(Tiny, data_dir=tmp_path / "finished")
    (building,) = (snapshot / "tiny" / "base").iterdir()
    assert building.name.startswith("incomplete.")
    with pytest.raises(DataError, match=r"holds only an unfinished build .*: delete it"):
        load_meta(snapshot)
    # Killed after TFDS wrote dataset_info.json but before its final rename.
    renamed = version_dir.parent / f"incomplete.ABCDEF_{SCHEMA_VERSION}"
    version_dir.rename(renamed)
    with pytest.raises(DataError, match=r"is an unfinished build .*: delete it and re-run"):
        load_meta(renamed)
    with pytest.raises(DataError, match=r"holds only an unfinished build"):
        load_meta(tmp_path / "finished")


def test_load_meta_rejects_ambiguous_parent(tiny_root, tmp_path):
    for config in ("base", "other"):
        shutil.copytree(tiny_root / "tiny" / "base", tmp_path / "tiny" / config)
    with pytest.raises(DataError, match=r"holds several prepared datasets .*: pass the version"):
        load_meta(tmp_path)


def test_load_meta_rejects_damaged_info(tiny_root, tmp_path):
    copy = shutil.copytree(tiny_root / "tiny" / "base" / SCHEMA_VERSION, tmp_path / SCHEMA_VERSION)
    (copy / "dataset_info.json").write_text("{not json")
    with pytest.raises(DataError, match=r"dataset_info\.json is unreadable .*: re-run"):
        load_meta(copy)
    info = json.loads(
        (tiny_root / "tiny" / "base" / SCHEMA_VERSION / "dataset_info.json").read_text()
    )
    (copy / "dataset_info.json").write_text(json.dumps(info))
    (copy / "features.json").unlink()
    with pytest.raises(DataError, match=r"cannot read the dataset in .*: re-run the converter"):
        load_meta(copy)


def test_modality_spec_and_features_validation():
    with pytest.raises(DataError, match=r"spectrogram has shape \(F, T\)"):
        ModalitySpec("spectrogram", (1, 2, 3))
    with pytest.raises(DataError, match=r"frames have shape \(T, H, W, 3\)"):
        ModalitySpec("frames", (2, 8, 8))
    with pytest.raises(DataError, match="unknown modality kind 'depth'"):
        ModalitySpec("depth", (2, 2))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="modality name 'label' is reserved"):
        make_features(["a"], {"label": ModalitySpec("spectrogram", (2, 2))})
    features = make_features(["x", "y"], MODALITIES)
    assert set(features.keys()) == {"id", "label", "audio", "video"}
    assert features["label"].names == ["x", "y"]
    assert features["video"].shape == (2, 16, 16, 3)


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
    with pytest.raises(DataError, match=r"from_raw is converted from raw files: pass manual_dir"):
        prepare(FromRaw, data_dir=tmp_path / "out")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "labels.txt").write_text("2\n0\n1\n1\n")
    version_dir = prepare(FromRaw, data_dir=tmp_path / "out", manual_dir=raw)
    assert load_meta(version_dir).split_sizes == {"train": 4}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["from_raw"]  # no downloads/
    # Once written, the raw files are no longer needed.
    assert prepare(FromRaw, data_dir=tmp_path / "out") == version_dir


def test_builder_without_config_is_a_clear_error(tmp_path):
    class NoConfig(AudioVideoBuilder):
        def _split_generators(self, dl_manager):
            return {}

        def _generate_examples(self):
            yield from ()

    with pytest.raises(DataError, match="NoConfig has no AudioVideoConfig"):
        prepare(NoConfig, data_dir=tmp_path)
