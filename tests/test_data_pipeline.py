"""Input pipeline: deterministic, resumable training epochs; padded, complete evaluation; to_global.

The test dataset stores each example's index in its spectrogram, so every batch row can be
traced back to the example it came from.
"""

import itertools
import pathlib

import jax
import numpy as np
import pytest

from mlb_jax.data.builder import AudioVideoBuilder, AudioVideoConfig, prepare
from mlb_jax.data.pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    batches_per_epoch,
    eval_batch_count,
    eval_batches,
    to_global,
    train_batches,
)
from mlb_jax.data.schema import DataError, ModalitySpec, load_meta

SIZES = {"train": 21, "test": 13}
NUM_CLASSES = 3


def _colour(i: int) -> np.ndarray:
    """The flat RGB colour of example i's frames (flat: JPEG keeps it within a level)."""
    return np.array([(37 * i) % 256, (91 * i + 40) % 256, 128], np.uint8)


class Indexed(AudioVideoBuilder):
    """Example i: label i % 3, spectrogram filled with i, frames of a flat colour from i."""

    BUILDER_CONFIGS = [  # noqa: RUF012 (TFDS declares it as a plain class attribute)
        AudioVideoConfig(
            name="base",
            class_names=tuple(f"c{k}" for k in range(NUM_CLASSES)),
            modalities={
                "audio": ModalitySpec("spectrogram", (2, 3)),
                "video": ModalitySpec("frames", (2, 8, 8, 3)),
            },
        )
    ]

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in SIZES}

    def _generate_examples(self, split):
        for i in range(SIZES[split]):
            yield (
                f"{split}{i}",
                {
                    "id": f"{split}{i}",
                    "label": i % NUM_CLASSES,
                    "audio": np.full((2, 3), i, np.float32),
                    "video": np.broadcast_to(_colour(i), (2, 8, 8, 3)),
                },
            )


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    root: pathlib.Path = tmp_path_factory.mktemp("indexed")
    return load_meta(prepare(Indexed, data_dir=root))


def _rows(batch: dict) -> list[int]:
    """Example indices of the real (masked-in) rows of a batch, checking their contents."""
    index = batch["inputs"]["audio"][:, 0, 0].astype(int)
    mask = batch["mask"]
    assert (batch["inputs"]["audio"][mask] == index[mask, None, None]).all()
    np.testing.assert_array_equal(batch["label"][mask], index[mask] % NUM_CLASSES)
    expected = (np.stack([_colour(i) for i in index]) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    got = batch["inputs"]["video"][mask]  # [B, T, H, W, 3]
    np.testing.assert_allclose(
        got,
        np.broadcast_to(expected[mask, None, None, None], got.shape),
        atol=2.01 / 255 / min(IMAGENET_STD),
    )
    return index[mask].tolist()


def _flat(lists) -> list[int]:
    return list(itertools.chain.from_iterable(lists))


def _epoch(meta, **kwargs) -> list[list[int]]:
    args = {"global_batch_size": 4, "seed": 7, "epoch": 0} | kwargs
    batches = list(train_batches(meta, "train", **args))
    for batch in batches:
        assert batch["mask"].all()
        assert batch["label"].dtype == np.int32
        assert batch["inputs"]["audio"].dtype == batch["inputs"]["video"].dtype == np.float32
    return [_rows(b) for b in batches]


@pytest.mark.parametrize("cache", [False, True])
def test_kept_partial_batch_holds_the_largest_multiple_of_the_devices(meta, cache):
    # 21 examples, batch 8: two full batches, 5 left. With 2 devices 4 of them are kept
    # (one dropped), with 1 device all 5; a resume skips into the partial epoch exactly.
    two = _epoch(meta, global_batch_size=8, cache=cache, keep_partial=2)
    assert [len(rows) for rows in two] == [8, 8, 4]
    assert batches_per_epoch(meta, "train", 8, keep_partial=2) == 3
    assert len(set(_flat(two))) == 20
    one = _epoch(meta, global_batch_size=8, cache=cache, keep_partial=1)
    assert [len(rows) for rows in one] == [8, 8, 5]
    assert sorted(_flat(one)) == list(range(21))  # every example, once
    if cache:  # a permutation of the whole split: the full batches do not change
        assert one[:2] == two[:2] == _epoch(meta, global_batch_size=8, cache=cache)
    assert _epoch(meta, global_batch_size=8, cache=cache, keep_partial=1, start_batch=2) == [one[2]]
    # Two processes: each yields half of every batch, the partial one too.
    halves = [
        _epoch(
            meta, global_batch_size=8, cache=cache, keep_partial=2, process_index=p, process_count=2
        )
        for p in (0, 1)
    ]
    assert [[len(rows) for rows in h] for h in halves] == [[4, 4, 2], [4, 4, 2]]
    with pytest.raises(DataError, match=r"keep_partial=3 must be 0 or divide the global batch"):
        batches_per_epoch(meta, "train", 8, keep_partial=3)


@pytest.mark.parametrize("cache", [False, True])
def test_train_epoch_is_deterministic_shuffled_and_resumable(meta, cache):
    epoch0 = _epoch(meta, cache=cache)
    assert len(epoch0) == batches_per_epoch(meta, "train", 4) == 21 // 4
    assert all(len(rows) == 4 for rows in epoch0)
    seen = _flat(epoch0)
    assert len(set(seen)) == len(seen) == 20  # each example at most once, remainder dropped
    assert set(seen) <= set(range(21))
    assert seen != sorted(seen)  # shuffled

    assert _epoch(meta, cache=cache) == epoch0  # same (seed, epoch): same batches
    assert _epoch(meta, cache=cache, start_batch=2) == epoch0[2:]  # exact resume
    assert _epoch(meta, cache=cache, start_batch=5) == []
    assert _epoch(meta, cache=cache, epoch=1) != epoch0  # another epoch, another order
    assert _epoch(meta, cache=cache, seed=8) != epoch0


@pytest.mark.parametrize("cache", [False, True])
def test_train_processes_read_disjoint_parts(meta, cache):
    parts = [
        _epoch(meta, cache=cache, process_index=p, process_count=2, global_batch_size=4)
        for p in range(2)
    ]
    assert [len(p) for p in parts] == [5, 5]  # 21 // 2 = 10 local examples, 2 per batch
    assert all(len(rows) == 2 for part in parts for rows in part)
    seen = [_flat(part) for part in parts]
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0] + seen[1])) == 20


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("batch_size", [4, 5, 13, 32])
def test_eval_covers_the_split_once_with_padding(meta, cache, batch_size):
    batches = list(eval_batches(meta, "test", global_batch_size=batch_size, cache=cache))
    assert len(batches) == eval_batch_count(meta, "test", batch_size) == -(-13 // batch_size)
    assert all(len(b["mask"]) == batch_size for b in batches)
    assert sum(int(b["mask"].sum()) for b in batches) == 13
    assert sorted(_flat(_rows(b) for b in batches)) == list(range(13))
    last = batches[-1]
    pad = ~last["mask"]
    assert (last["inputs"]["audio"][pad] == 0).all() and (last["label"][pad] == 0).all()


@pytest.mark.parametrize("cache", [False, True])
def test_eval_over_two_processes_covers_the_split_once(meta, cache):
    # 13 examples over 2 processes: 7 and 6, local batch 2 -> 4 and 3 batches, padded to 4.
    parts = [
        list(
            eval_batches(
                meta, "test", global_batch_size=4, process_index=p, process_count=2, cache=cache
            )
        )
        for p in range(2)
    ]
    assert (
        [len(p) for p in parts]
        == [4, 4]
        == [eval_batch_count(meta, "test", 4, process_count=2)] * 2
    )
    assert all(len(b["mask"]) == 2 for part in parts for b in part)
    rows = [_flat(_rows(b) for b in part) for part in parts]
    assert [len(r) for r in rows] == [7, 6]
    assert sorted(rows[0] + rows[1]) == list(range(13))


def _stored_order(meta) -> list[int]:
    """Example ids in the split's stored order (TFDS's, not the generation order)."""
    batches = list(eval_batches(meta, "test", global_batch_size=16))
    return _flat(_rows(b) for b in batches)


@pytest.mark.parametrize("cache", [False, True])
def test_eval_index_is_the_position_in_the_stored_order(meta, cache):
    stored = _stored_order(meta)
    assert sorted(stored) == list(range(13)) and stored != list(range(13))  # TFDS reorders
    for p, (start, stop) in enumerate([(0, 7), (7, 13)]):  # tfds.even_splits: 7 then 6
        batches = list(
            eval_batches(
                meta, "test", global_batch_size=4, process_index=p, process_count=2, cache=cache
            )
        )
        index = np.concatenate([b["index"][b["mask"]] for b in batches])
        np.testing.assert_array_equal(index, np.arange(start, stop))
        assert _flat(_rows(b) for b in batches) == stored[start:stop]
        assert all((b["index"][~b["mask"]] == -1).all() for b in batches)
        assert batches[0]["index"].dtype == np.int32


@pytest.mark.parametrize("cache", [False, True])
def test_eval_subset_yields_exactly_the_chosen_examples_in_order(meta, cache):
    stored = _stored_order(meta)
    indices = np.array([0, 3, 4, 9, 12])
    batches = list(eval_batches(meta, "test", global_batch_size=4, indices=indices, cache=cache))
    assert len(batches) == eval_batch_count(meta, "test", 4, indices=indices) == 2
    assert [int(b["mask"].sum()) for b in batches] == [4, 1]
    assert _flat(_rows(b) for b in batches) == [stored[i] for i in indices]
    np.testing.assert_array_equal(batches[0]["index"], [0, 3, 4, 9])
    np.testing.assert_array_equal(batches[1]["index"], [12, -1, -1, -1])

    # Two processes: positions 0-6 belong to process 0 (0, 3, 4), 7-12 to process 1 (9, 12);
    # local batch 2, so both yield 2 batches and process 1 pads one row.
    parts = [
        list(
            eval_batches(
                meta,
                "test",
                global_batch_size=4,
                indices=indices,
                process_index=p,
                process_count=2,
                cache=cache,
            )
        )
        for p in range(2)
    ]
    assert [len(p) for p in parts] == [2, 2]
    assert eval_batch_count(meta, "test", 4, process_count=2, indices=indices) == 2
    assert _flat(_rows(b) for b in parts[0]) == [stored[i] for i in (0, 3, 4)]
    assert _flat(_rows(b) for b in parts[1]) == [stored[i] for i in (9, 12)]
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in parts[1]]), [9, 12, -1, -1])


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ([], "non-empty 1-D integer array"),
        ([0.0, 1.0], "non-empty 1-D integer array"),
        ([3, 1], r"strictly increasing positions in \[0, 13\)"),
        ([1, 1], "strictly increasing"),
        ([-1, 2], "strictly increasing"),
        ([12, 13], "strictly increasing"),
    ],
)
def test_bad_eval_subsets_are_one_clear_error(meta, indices, message):
    with pytest.raises(DataError, match=message):
        eval_batches(meta, "test", global_batch_size=4, indices=indices)
    with pytest.raises(DataError, match=message):
        eval_batch_count(meta, "test", 4, indices=indices)


def test_cached_and_streamed_eval_batches_are_identical(meta):
    streamed = list(eval_batches(meta, "test", global_batch_size=4))
    cached = list(eval_batches(meta, "test", global_batch_size=4, cache=True))
    for a, b in zip(streamed, cached, strict=True):
        jax.tree.map(np.testing.assert_array_equal, a, b)


def test_only_requested_modalities_are_read(meta):
    audio_only = load_meta(meta.data_dir, modalities=["audio"])
    (batch,) = eval_batches(audio_only, "test", global_batch_size=16)
    assert list(batch["inputs"]) == ["audio"]


def test_frame_normalisation_is_overridable(meta):
    (batch,) = eval_batches(
        meta, "test", global_batch_size=16, frame_mean=(0.5, 0.5, 0.5), frame_std=(0.5, 0.5, 0.5)
    )
    index = batch["inputs"]["audio"][:13, 0, 0].astype(int)
    expected = np.stack([_colour(i) for i in index]) / 255 * 2 - 1
    np.testing.assert_allclose(batch["inputs"]["video"][:13, 0, 0, 0], expected, atol=4.1 / 255)


def test_to_global_shards_the_batch_over_the_data_axis(meta):
    mesh = jax.make_mesh((8,), ("data",))
    local = next(eval_batches(meta, "test", global_batch_size=8))
    batch = to_global(local, mesh)
    leaves = jax.tree.leaves(batch)
    assert len(leaves) == 5  # audio, video, label, mask, index
    for array, expected in zip(leaves, jax.tree.leaves(local), strict=True):
        assert isinstance(array, jax.Array)
        assert array.shape == expected.shape and array.dtype == expected.dtype
        assert array.sharding.spec == jax.P("data")
        assert len(array.addressable_shards) == 8
        assert all(shard.data.shape[0] == 1 for shard in array.addressable_shards)
        np.testing.assert_array_equal(np.asarray(array), expected)


def test_to_global_errors(meta):
    local = next(eval_batches(meta, "test", global_batch_size=4))
    with pytest.raises(DataError, match=r"global batch 4 does not split over the 8 devices"):
        to_global(local, jax.make_mesh((8,), ("data",)))
    with pytest.raises(DataError, match=r"the mesh has axes \('batch',\), not 'data'"):
        to_global(local, jax.make_mesh((8,), ("batch",)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "validation"}, r"has no split 'validation' \(it has \['test', 'train'\]\)"),
        ({"global_batch_size": 5, "process_count": 2}, "does not split over 2 processes"),
        ({"global_batch_size": 0}, "global batch size 0 does not split"),
        ({"global_batch_size": 22}, r"larger than split 'train' .* \(21 examples\)"),
        ({"start_batch": 6}, "start_batch 6 is outside the epoch's 5 batches"),
        ({"seed": -1}, r"seed \(-1\) and epoch \(0\) must be >= 0"),
        ({"process_index": 2, "process_count": 2}, r"process_index 2 is outside \[0, 2\)"),
        ({"frame_std": (1, 0, 1)}, "must be 3 values"),
    ],
)
def test_bad_requests_are_one_clear_error(meta, kwargs, message):
    args = {"split": "train", "global_batch_size": 4, "seed": 0, "epoch": 0} | kwargs
    with pytest.raises(DataError, match=message):
        train_batches(meta, **args)  # raised on the call, before any iteration


def test_batch_counts_reject_bad_batch_sizes(meta):
    with pytest.raises(DataError, match="global batch size 0 does not split"):
        batches_per_epoch(meta, "train", 0)
    with pytest.raises(DataError, match="global batch size 3 does not split over 2 processes"):
        eval_batch_count(meta, "test", 3, process_count=2)


def test_eval_allows_a_batch_larger_than_the_split(meta):
    (batch,) = eval_batches(meta, "test", global_batch_size=64)
    assert batch["mask"].sum() == 13
    with pytest.raises(DataError, match="has no split 'dev'"):
        eval_batches(meta, "dev", global_batch_size=4)
