"""Schema 2.0.0's new kinds through TFDS and the pipeline: sequences, gray and depth frames.

One tiny dataset with a variable-length sequence, 1-channel uint8 frames and uint16 depth frames
is written once; the tests read it back raw and through `eval_batches` / `train_batches` and
compare with hand-computed values (sequence fits, normalisation constants, lengths, padding).
"""

import re

import numpy as np
import pytest

from mlb_jax.batch_format import length_key
from mlb_jax.data._tf import import_tfds
from mlb_jax.data.builder import AudioVideoBuilder, AudioVideoConfig, prepare
from mlb_jax.data.pipeline import eval_batches, input_shapes, length_keys, train_batches
from mlb_jax.data.schema import DataError, ModalitySpec, SequenceFit, load_meta

tfds = import_tfds()

MODALITIES = {
    "imu": ModalitySpec("sequence", (6, 2)),
    "lips": ModalitySpec("frames", (2, 8, 8, 1)),
    "depth": ModalitySpec("frames", (2, 4, 4, 1), "uint16"),
}
LENGTHS = (1, 3, 6, 4)  # example i's sequence length


def _exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def _example(i: int) -> dict:
    """Example i: imu rows [10 i + t, -t], flat gray frames, depth i * 1000 mm + a hole."""
    t = np.arange(LENGTHS[i], dtype=np.float32)
    depth = np.full((2, 4, 4, 1), 1000 * i + 1, np.uint16)
    depth[:, 0, 0, 0] = 0  # no reading
    return {
        "id": f"x{i}",
        "label": i % 2,
        "imu": np.stack([10 * i + t, -t], axis=1),
        "lips": np.full((2, 8, 8, 1), 40 * i, np.uint8),
        "depth": depth,
    }


class Kinds(AudioVideoBuilder):
    """Four examples of the three new kinds, all in split 'test'."""

    name = "kinds"
    BUILDER_CONFIGS = [  # noqa: RUF012 (TFDS declares it as a plain class attribute)
        AudioVideoConfig(name="base", class_names=("a", "b"), modalities=MODALITIES)
    ]

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples()}

    def _generate_examples(self):
        for i in range(len(LENGTHS)):
            ex = _example(i)
            yield ex["id"], ex | {m: spec.encode(ex[m]) for m, spec in MODALITIES.items()}


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    return load_meta(prepare(Kinds, data_dir=tmp_path_factory.mktemp("kinds")))


def _by_example(batch):
    """Batch rows keyed by example index (recovered from the depth value), padding dropped."""
    rows = {}
    for row in np.flatnonzero(batch["mask"]):
        rows[int(np.round(batch["inputs"]["depth"][row, 0, 1, 1, 0] * 4.096))] = row
    return rows


def test_load_meta_reports_the_new_kinds(meta):
    assert meta.modalities == {m: MODALITIES[m] for m in sorted(MODALITIES)}
    assert meta.modalities["depth"].dtype == "uint16"
    assert meta.modalities["lips"].dtype == "uint8"
    assert meta.modalities["imu"].dtype == "float32"
    assert meta.sequence_fits == {"imu": SequenceFit(6, "head")}  # stored maximum
    assert length_keys(meta) == ["imu.length"]
    assert input_shapes(meta) == {"depth": (2, 4, 4, 1), "imu": (6, 2), "lips": (2, 8, 8, 1)}


def test_stored_values_are_exact_where_promised(meta):
    builder = tfds.builder_from_directory(meta.data_dir)
    stored = {ex["id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split="test"))}
    for i, length in enumerate(LENGTHS):
        ex, read = _example(i), stored[f"x{i}"]
        assert read["imu"]["length"] == length
        np.testing.assert_array_equal(read["imu"]["values"][:length], ex["imu"])
        assert not read["imu"]["values"][length:].any()  # padded with zeros
        assert read["depth"].dtype == np.uint16
        np.testing.assert_array_equal(read["depth"], ex["depth"])  # zlib: exact
        assert read["lips"].dtype == np.uint8 and read["lips"].shape == (2, 8, 8, 1)
        assert np.abs(read["lips"].astype(int) - ex["lips"]).max() <= 2  # JPEG, flat gray


@pytest.mark.parametrize("cache", [False, True])
def test_eval_batches_normalise_per_source_type_and_pass_lengths(meta, cache):
    (batch,) = eval_batches(
        meta, "test", global_batch_size=6, cache=cache, process_index=0, process_count=1
    )
    inputs = batch["inputs"]
    assert sorted(inputs) == ["depth", "imu", "imu.length", "lips"]
    assert inputs["imu"].shape == (6, 6, 2) and inputs["imu"].dtype == np.float32
    assert inputs["imu.length"].dtype == np.int32
    assert inputs["depth"].shape == (6, 2, 4, 4, 1) and inputs["lips"].shape == (6, 2, 8, 8, 1)
    rows = _by_example(batch)
    assert sorted(rows) == [0, 1, 2, 3]
    for i, row in rows.items():
        ex = _example(i)
        assert inputs["imu.length"][row] == LENGTHS[i]
        np.testing.assert_array_equal(inputs["imu"][row, : LENGTHS[i]], ex["imu"])
        assert not inputs["imu"][row, LENGTHS[i] :].any()
        # uint16 depth: x / 4096, no reading stays 0.
        np.testing.assert_allclose(inputs["depth"][row], ex["depth"] / 4096.0, rtol=1e-6)
        assert inputs["depth"][row, 0, 0, 0, 0] == 0.0
        # 1-channel uint8: (x / 255 - 0.449) / 0.226, within JPEG's two levels.
        np.testing.assert_allclose(
            inputs["lips"][row], (40 * i / 255 - 0.449) / 0.226, atol=2 / 255 / 0.226
        )
    # Padding rows: zeros, length 0.
    pad = ~batch["mask"]
    assert pad.sum() == 2
    assert not inputs["imu"][pad].any() and not inputs["imu.length"][pad].any()


@pytest.mark.parametrize(
    ("fit", "expected", "lengths"),
    [
        # head, L = 2: the first two steps; a 1-step sequence is padded.
        (SequenceFit(2, "head"), {0: [[0, 0], [0, 0]], 2: [[20, 0], [21, -1]]}, [1, 2, 2, 2]),
        # center, L = 2: a 6-step sequence keeps steps 2, 3; a 4-step one 1, 2.
        (
            SequenceFit(2, "center"),
            {2: [[22, -2], [23, -3]], 3: [[31, -1], [32, -2]]},
            [1, 2, 2, 2],
        ),
        # resample, L = 3: positions 0, (n-1)/2, n-1 linearly interpolated; n = 1 repeats step 0.
        (
            SequenceFit(3, "resample"),
            {
                0: [[0, 0]] * 3,
                1: [[10, 0], [11, -1], [12, -2]],
                3: [[30, 0], [31.5, -1.5], [33, -3]],
            },
            [3, 3, 3, 3],
        ),
        # head, L = 8 > T_max = 6: zero-padded to 8.
        (
            SequenceFit(8, "head"),
            {2: [[20 + t, -t] for t in range(6)] + [[0, 0]] * 2},
            [1, 3, 6, 4],
        ),
    ],
    ids=["head", "center", "resample", "longer"],
)
def test_sequence_fits_by_hand(meta, fit, expected, lengths):
    fitted = meta.with_sequence_fits({"imu": fit})
    assert input_shapes(fitted)["imu"] == (fit.length, 2)
    for cache in (False, True):
        (batch,) = eval_batches(
            fitted, "test", global_batch_size=4, cache=cache, process_index=0, process_count=1
        )
        rows = _by_example(batch)
        assert [int(batch["inputs"]["imu.length"][rows[i]]) for i in range(4)] == lengths
        for i, values in expected.items():
            np.testing.assert_allclose(batch["inputs"]["imu"][rows[i]], values, atol=1e-5)


def test_train_batches_carry_the_lengths(meta):
    fitted = meta.with_sequence_fits({"imu": SequenceFit(3, "resample")})
    batches = list(
        train_batches(
            fitted, "test", global_batch_size=2, seed=0, epoch=0, process_index=0, process_count=1
        )
    )
    assert len(batches) == 2
    for batch in batches:
        assert batch["inputs"]["imu"].shape == (2, 3, 2)
        assert batch["inputs"][length_key("imu")].tolist() == [3, 3]


def test_spec_and_fit_errors(meta):
    with pytest.raises(DataError, match=_exactly("a sequence has shape (T_max, D), got (3,)")):
        ModalitySpec("sequence", (3,))
    with pytest.raises(DataError, match=_exactly("frames are uint8 or uint16, got float32")):
        ModalitySpec("frames", (1, 2, 2, 3), "float32")
    with pytest.raises(DataError, match=_exactly("a sequence is float32, got uint8")):
        ModalitySpec("sequence", (3, 2), "uint8")
    spec = MODALITIES["imu"]
    with pytest.raises(
        DataError, match=_exactly("a sequence of this dataset is [T <= 6, 2], got (7, 2)")
    ):
        spec.encode(np.zeros((7, 2)))
    with pytest.raises(
        DataError,
        match=_exactly("sequence fit 'tail' is unknown: use 'head', 'center' or 'resample'"),
    ):
        SequenceFit(4, "tail")
    with pytest.raises(
        DataError, match=_exactly("sequence length must be a positive integer, got 0")
    ):
        SequenceFit(0)
    message = (
        "kinds/base has no sequence modality 'lips' (its sequence modalities: ['imu']): fix the "
        "modality name"
    )
    with pytest.raises(DataError, match=_exactly(message)):
        meta.with_sequence_fits({"lips": SequenceFit(2)})


def test_encoders_and_sequence_fits_from_the_dataset(meta):
    from mlb_jax import trainer
    from mlb_jax.config_base import custom_dataset

    config = custom_dataset()
    filled = trainer.modalities_from_dataset(config, meta)
    assert filled.model.modalities.to_dict() == {
        "depth": {"kind": "video", "in_channels": 1},
        "imu": {"kind": "tcn", "in_features": 2},  # D = 2 < 64: the temporal convolution
        "lips": {"kind": "video", "in_channels": 1},
    }
    assert not len(config.model.modalities)  # the caller's config is left as it was
    assert trainer.modalities_from_dataset(filled, meta) is filled  # listed: kept
    config.model.encoders = "imu=conformer"
    filled = trainer.modalities_from_dataset(config, meta)
    assert filled.model.modalities.imu.to_dict() == {"kind": "conformer", "in_features": 2}
    config.model.encoders = "lips=tcn"
    message = (
        "config.model.encoders: 'lips' is a frames modality, which encoder 'tcn' cannot read: "
        "choose one of ['video']"
    )
    with pytest.raises(ValueError, match=_exactly(message)):
        trainer.modalities_from_dataset(config, meta)
    config.model.encoders = "audio=tcn"
    with pytest.raises(ValueError, match="'audio' is not one of the modalities"):
        trainer.modalities_from_dataset(config, meta)

    data = config.data
    assert trainer.sequence_fits(data, meta) == {"imu": SequenceFit(6, "head")}
    data.sequence_length, data.sequence_fit = "3", "resample"
    assert trainer.sequence_fits(data, meta) == {"imu": SequenceFit(3, "resample")}
    data.sequence_length, data.sequence_fit = "imu=4", "imu=center"
    assert trainer.sequence_fits(data, meta) == {"imu": SequenceFit(4, "center")}
    data.sequence_length = "imu=-1"
    message = "config.data.sequence_length: 'imu' gets '-1', not a positive integer"
    with pytest.raises(ValueError, match=_exactly(message)):
        trainer.sequence_fits(data, meta)
    data.sequence_length, data.sequence_fit = "", "tail"
    with pytest.raises(ValueError, match="config.data.sequence_fit: 'imu': sequence fit 'tail'"):
        trainer.sequence_fits(data, meta)


def test_a_sequence_unimodal_run_hands_its_weights_but_not_its_dropout_streams(
    meta, tmp_path, monkeypatch
):
    from mlb_jax import conv_auto, trainer
    from mlb_jax.config_base import custom_dataset
    from mlb_jax.finished_runs import modality_weights

    config = custom_dataset()  # modalities and encoders from the dataset: imu -> tcn
    config.data.dir = str(meta.data_dir)
    config.data.train_split = config.data.val_split = config.data.test_split = "test"
    config.method.name, config.method.modality = "unimodal", "imu"
    config.progress = False
    # 'auto' without a ResNet encoder: nothing to choose, so nothing is timed.
    config.model.base_width, config.model.conv = 2, "auto"
    monkeypatch.setattr(conv_auto, "time_steps", lambda *a, **k: pytest.fail("timed"))
    config.train.epochs, config.train.batch_size, config.train.eval_batch_size = 1, 2, 8
    config.train.num_devices, config.train.warmup_steps = 2, 0
    config.probe.steps = 5
    config.evaluate.enabled = False
    results = trainer.train_and_evaluate(config, tmp_path)
    assert (results["conv_resolved"], results["conv_auto"]) == ("plan", None)
    weights = modality_weights(tmp_path, "imu", 2, "test")
    # The TCN's convolutions, norms and head, for pre_frozen / pre_finetuned to graft; its
    # dropout stream (a typed PRNG key, not an array to copy) stays with each run.
    assert "params/encoders/imu/convs/0/kernel" in weights
    assert "params/heads/imu/kernel" in weights
    assert not [name for name in weights if "/rngs/" in name]
    assert all(isinstance(w, np.ndarray) for w in weights.values())
