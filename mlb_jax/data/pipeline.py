"""The input pipeline: a prepared dataset -> tf.data -> numpy batches -> global jax arrays.

Each process reads only its own part of a split (``tfds.split_for_jax_process``), decodes it in
parallel with tf.data and yields local numpy batches; `to_global` assembles them into arrays
sharded over the ``'data'`` axis of a mesh. Training batches depend only on (seed, epoch), so a
run killed mid-epoch resumes exactly with ``start_batch``; evaluation batches cover every example
(or a chosen subset) once, padded with masked-out rows.

Batch format (numpy; ``B`` = global batch size // process count)::

    {'inputs': {<modality>: float32 array}, 'label': int32 [B], 'mask': bool [B]}

evaluation batches also carry ``'index'``: int32 [B], each row's position in the split's stored
order (-1 on padding rows), so outputs gathered from several processes can be put back in order.

spectrograms are ``[B, F, T]`` as stored; frames are ``[B, T, H, W, C]`` normalised per source
type: uint8 RGB ``(x / 255 - mean) / std`` per channel (ImageNet's by default), uint8 grayscale
``(x / 255 - 0.449) / 0.226`` (ImageNet's mean over channels), uint16 depth ``x / 4096`` (0-4.1 m
in millimetres -> [0, 1]; 0, no reading, stays 0). A sequence modality ``m`` is ``[B, L, D]``
at its `SequenceFit` (``meta.sequence_fits``), zero after each example's valid steps, with
``inputs[length_key(m)]`` int32 ``[B]`` (`mlb_jax.batch_format`). With ``frame_size`` frames
are resized to it (evaluation, and training without augmentation); with ``augment`` training
frames get a random resized crop and flip (`mlb_jax.data.augment`) keyed by (seed, epoch,
process, position in the epoch's order), so augmentation is as reproducible and resumable as the
order.
"""

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath

from mlb_jax.batch_format import length_key
from mlb_jax.data import augment as augment_lib
from mlb_jax.data._tf import import_tf, import_tfds
from mlb_jax.data.schema import DataError, DatasetMeta, ModalitySpec, SequenceFit

tf = import_tf()
tfds = import_tfds()

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# One-channel uint8 frames (grayscale): ImageNet's statistics averaged over its channels.
GRAYSCALE_MEAN = 0.449
GRAYSCALE_STD = 0.226
# uint16 frames are depth maps in millimetres: / 4096 maps a depth sensor's 0-4.1 m to [0, 1]
# and keeps 0 (no reading) at 0. No mean is subtracted: BatchNorm follows the first conv.
DEPTH_SCALE = 4096.0

# Examples held in the shuffle buffer of the streaming (uncached) training pipeline, on top of
# TFDS's shuffled shard order. They are held encoded (JPEG), before decoding.
DEFAULT_SHUFFLE_BUFFER = 2048


def batches_per_epoch(
    meta: DatasetMeta, split: str, global_batch_size: int, keep_partial: int = 0
) -> int:
    """Number of training batches `train_batches` yields per epoch.

    Args:
        meta: The dataset.
        split: Split name.
        global_batch_size: Examples per step over all processes.
        keep_partial: 0 drops the examples that do not fill a last batch; n > 0 keeps a last,
            smaller batch of the largest multiple of n of them (n = the device count, so it
            splits evenly; see `partial_batch_size`).

    Returns:
        ``split_size // global_batch_size``, plus one if a partial batch is kept: the same for
        any process count dividing the batch.

    Raises:
        DataError: Unknown split, a batch size < 1 or a negative ``keep_partial``.
    """
    _process_args(meta, split, global_batch_size, 0, 1)
    full = meta.split_sizes[split] // global_batch_size
    return full + (partial_batch_size(meta, split, global_batch_size, keep_partial) > 0)


def partial_batch_size(
    meta: DatasetMeta, split: str, global_batch_size: int, keep_partial: int
) -> int:
    """Global size of the kept last partial training batch (0: none; see `batches_per_epoch`).

    Raises:
        DataError: a negative ``keep_partial``, or one that does not divide the batch.
    """
    if keep_partial < 0 or (keep_partial and global_batch_size % keep_partial):
        raise DataError(
            f"keep_partial={keep_partial} must be 0 or divide the global batch size "
            f"{global_batch_size} (it is the device count)"
        )
    if not keep_partial:
        return 0
    remaining = meta.split_sizes[split] % global_batch_size
    return remaining // keep_partial * keep_partial


def eval_batch_count(
    meta: DatasetMeta,
    split: str,
    global_batch_size: int,
    *,
    process_count: int | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
) -> int:
    """Number of batches `eval_batches` yields on every process.

    Args:
        meta: The dataset.
        split: Split name.
        global_batch_size: Examples per step over all processes.
        process_count: Number of processes; defaults to ``jax.process_count()``.
        indices: The subset `eval_batches` is given (None: the whole split).

    Returns:
        Enough batches for the process holding the most examples (the others pad).

    Raises:
        DataError: Unknown split, a batch size that does not split over the processes, or bad
            ``indices`` (see `eval_batches`).
    """
    _, process_count, local_batch = _process_args(meta, split, global_batch_size, 0, process_count)
    total = meta.split_sizes[split]
    if indices is None:
        most_local = -(-total // process_count)
    else:
        indices = check_indices(indices, total, split)
        bounds = _process_bounds(total, process_count)
        most_local = int(np.diff(np.searchsorted(indices, bounds)).max())
    return -(-most_local // local_batch)


def train_batches(
    meta: DatasetMeta,
    split: str,
    *,
    global_batch_size: int,
    seed: int,
    epoch: int,
    start_batch: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    cache: bool = False,
    shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER,
    frame_mean: Sequence[float] = IMAGENET_MEAN,
    frame_std: Sequence[float] = IMAGENET_STD,
    frame_size: Sequence[int] | None = None,
    augment: augment_lib.Augment | None = None,
    keep_partial: int = 0,
) -> Iterator[dict[str, Any]]:
    """One epoch of shuffled training batches of this process, the last one maybe smaller.

    The order depends only on ``(seed, epoch)`` (and on ``cache``, which changes how it is
    drawn): two calls with the same arguments yield the same batches, and ``start_batch=n``
    yields exactly the batches after the first ``n``, for an exact resume. Every example
    appears at most once. Augmentation draws depend on the same arguments (and the process),
    so resuming with ``start_batch`` also repeats the crops of an uninterrupted run.

    Args:
        meta: The dataset (from `load_meta`); only ``meta.modalities`` are read.
        split: Split name, e.g. ``'train'``.
        global_batch_size: Examples per step over all processes; each process yields
            ``global_batch_size // process_count`` of them.
        seed: Non-negative shuffling seed.
        epoch: Non-negative epoch number; each epoch has its own order.
        start_batch: Number of batches of this epoch to skip (already trained on).
        process_index: This process; defaults to ``jax.process_index()``.
        process_count: Number of processes; defaults to ``jax.process_count()``.
        cache: Keep the decoded split in memory across calls (small datasets): the order is then
            a uniform permutation. Otherwise the split is streamed from disk with shuffled
            shards and a ``shuffle_buffer_size`` example buffer.
        shuffle_buffer_size: Shuffle buffer of the streaming pipeline.
        frame_mean: Per-channel mean of frames scaled to [0, 1].
        frame_std: Per-channel std of frames scaled to [0, 1].
        frame_size: Output ``(H, W)`` of every frames modality; None: the stored size. Without
            ``augment`` frames are resized to it as `eval_batches` does.
        augment: Random resized crop (to ``frame_size``) and flip of frames; None: none.
        keep_partial: 0 drops the examples left after the full batches; n > 0 yields them as
            a last, smaller batch (the largest multiple of n of them, split evenly over the
            processes), as the reference's loaders keep their last batch. Pass the device
            count: the batch then shards over the devices; the train step compiles once more
            for its shape.

    Returns:
        An iterator over batches in the format of the module docstring (``mask`` all True).

    Raises:
        DataError: Unknown split, bad batch size / process arguments, negative seed or epoch,
            or ``start_batch`` beyond the epoch.
    """
    process_index, process_count, local_batch = _process_args(
        meta, split, global_batch_size, process_index, process_count
    )
    sizes = _frame_sizes(meta, frame_size)
    to_batch = _batch_formatter(meta, frame_mean, frame_std, {} if augment else sizes)
    num_batches = batches_per_epoch(meta, split, global_batch_size, keep_partial)
    partial = partial_batch_size(meta, split, global_batch_size, keep_partial)
    if partial % process_count:
        raise DataError(
            f"keep_partial={keep_partial} must be a multiple of the {process_count} processes"
        )
    if num_batches == 0:
        raise DataError(
            f"global batch size {global_batch_size} is larger than split {split!r} of "
            f"{meta.name} ({meta.split_sizes[split]} examples): use a smaller batch"
        )
    if seed < 0 or epoch < 0:
        raise DataError(f"seed ({seed}) and epoch ({epoch}) must be >= 0")
    if not 0 <= start_batch <= num_batches:
        raise DataError(
            f"start_batch {start_batch} is outside the epoch's {num_batches} batches of "
            f"{split!r}: resume from a data position written with this batch size"
        )
    # Independent seeds for the shard order and the shuffle buffer, from (seed, epoch) only.
    file_seed, buffer_seed = (
        int(s) for s in np.random.SeedSequence([seed, epoch]).generate_state(2)
    )
    subsplit = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count, drop_remainder=True
    )
    # Same on every process: the sub-splits are equal, and each holds its share of `partial`.
    used = (num_batches - (partial > 0)) * local_batch + partial // process_count
    start = start_batch * local_batch
    # Every example's position in this process's order of the epoch, assigned before skipping
    # `start`: the augmentation key of a resumed run's example is an uninterrupted run's.
    augmenter = _augmenter(meta, sizes, augment, augment_lib.epoch_key(seed, epoch, process_index))
    if cache:
        examples = _cached_examples(meta, subsplit)
        order = np.random.default_rng([seed, epoch]).permutation(len(examples["label"]))
        ds = _gather(examples, order[start:used])
        positions = tf.data.Dataset.range(start, used)
        ds = tf.data.Dataset.zip((positions, ds)).map(
            augmenter, num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        ds = _read(meta.data_dir, meta.modalities, subsplit, shuffle_seed=file_seed)
        ds = ds.shuffle(min(shuffle_buffer_size, used), seed=buffer_seed)
        # Skip before decoding, so a resume does not decode what it throws away.
        ds = ds.take(used).enumerate().skip(start)
        decode = _decoder(meta)
        ds = ds.map(lambda i, ex: augmenter(i, decode(ex)), num_parallel_calls=tf.data.AUTOTUNE)
    # `used` ends with the partial batch's examples, if one is kept: nothing else is dropped.
    ds = ds.batch(local_batch, drop_remainder=not partial)
    return _finish(ds, to_batch)


def eval_batches(
    meta: DatasetMeta,
    split: str,
    *,
    global_batch_size: int,
    indices: Sequence[int] | np.ndarray | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    cache: bool = False,
    frame_mean: Sequence[float] = IMAGENET_MEAN,
    frame_std: Sequence[float] = IMAGENET_STD,
    frame_size: Sequence[int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every example of this process's part of a split (or of a subset of it) once, in order.

    Process ``p`` owns a contiguous part of the split's stored order (``tfds.even_splits``: the
    first ``size % process_count`` processes hold one example more). The last batches are padded
    with zero rows whose ``mask`` is False and whose ``index`` is -1; every process yields
    `eval_batch_count` batches, so all take part in every step.

    Args:
        meta: The dataset (from `load_meta`); only ``meta.modalities`` are read.
        split: Split name, e.g. ``'test'``.
        global_batch_size: Examples per step over all processes (may exceed the split).
        indices: Optional subset: strictly increasing positions in the split's stored order
            (the same array on every process). Only those examples are yielded, each by the
            process whose part holds it, in increasing order; the others are read but never
            decoded. None: the whole split.
        process_index: This process; defaults to ``jax.process_index()``.
        process_count: Number of processes; defaults to ``jax.process_count()``.
        cache: Keep the decoded split in memory across calls (small datasets).
        frame_mean: Per-channel mean of frames scaled to [0, 1].
        frame_std: Per-channel std of frames scaled to [0, 1].
        frame_size: Output ``(H, W)`` of every frames modality, the whole frame resized
            (bilinear, antialiased; no augmentation); None: the stored size.

    Returns:
        An iterator over batches in the format of the module docstring, with ``'index'``.

    Raises:
        DataError: Unknown split, bad batch size / process arguments, or ``indices`` that are
            empty, not increasing, or outside the split.
    """
    process_index, process_count, local_batch = _process_args(
        meta, split, global_batch_size, process_index, process_count
    )
    total = meta.split_sizes[split]
    to_batch = _batch_formatter(meta, frame_mean, frame_std, _frame_sizes(meta, frame_size))
    subsplit = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count, drop_remainder=False
    )
    start, stop = _process_bounds(total, process_count)[process_index : process_index + 2]
    if indices is None:
        local = np.arange(stop - start)
    else:
        indices = check_indices(indices, total, split)
        local = indices[(indices >= start) & (indices < stop)] - start
    if cache:
        examples = _cached_examples(meta, subsplit)
        ds = _gather(examples, local)
    else:
        ds = _read(meta.data_dir, meta.modalities, subsplit, shuffle_seed=None)
        if indices is not None:
            # Keep the chosen examples before decoding: the others are never decoded.
            keep = np.zeros(stop - start, bool)
            keep[local] = True
            keep = tf.constant(keep)
            ds = ds.enumerate().filter(lambda i, _: tf.gather(keep, i)).map(lambda _, ex: ex)
        ds = ds.map(_decoder(meta), num_parallel_calls=tf.data.AUTOTUNE)
    positions = tf.data.Dataset.from_tensor_slices((local + start).astype(np.int32))
    ds = tf.data.Dataset.zip((ds, positions)).map(lambda ex, i: ex | {"index": i})
    num_batches = eval_batch_count(
        meta, split, global_batch_size, process_count=process_count, indices=indices
    )
    padding = tf.data.Dataset.from_tensors(_padding_example(meta)).repeat(
        num_batches * local_batch - len(local)
    )
    ds = ds.concatenate(padding).batch(local_batch, drop_remainder=True)
    return _finish(ds, to_batch)


def to_global(
    batch: dict[str, Any], mesh: jax.sharding.Mesh, *, run_axis: bool = False
) -> dict[str, Any]:
    """Assembles the processes' local batches into global arrays sharded over ``'data'``.

    Args:
        batch: This process's batch (any pytree of numpy arrays with the batch dimension first).
        mesh: A mesh with a ``'data'`` axis; other axes hold replicas of the batch, but for a
            ``'runs'`` axis with ``run_axis``.
        run_axis: The leaves have a leading run axis (the members of a sweep, each member's
            batch stacked: [N, B, ...]), split over the mesh's ``'runs'`` axis if it has one
            (else whole on every device); dimension 1 is the batch dimension.

    Returns:
        The same pytree of ``jax.Array``, global batch = local batch x process count, the batch
        dimension sharded over ``'data'``.

    Raises:
        DataError: The mesh has no ``'data'`` axis, or the global batch does not split evenly
            over it.
    """
    if "data" not in mesh.shape:
        raise DataError(f"the mesh has axes {tuple(mesh.shape)}, not 'data': build it with one")
    global_rows = jax.tree.leaves(batch)[0].shape[int(run_axis)] * jax.process_count()
    if global_rows % mesh.shape["data"]:
        raise DataError(
            f"global batch {global_rows} does not split over the {mesh.shape['data']} devices "
            "of the 'data' axis: use a batch size divisible by it"
        )
    runs = "runs" if "runs" in mesh.shape else None
    sharding = jax.NamedSharding(mesh, jax.P(runs, "data") if run_axis else jax.P("data"))
    return jax.tree.map(
        lambda local: jax.make_array_from_process_local_data(sharding, local), batch
    )


def split_size(meta: DatasetMeta, split: str) -> int:
    """The number of examples of a split.

    Raises:
        DataError: Unknown split (the message names the splits there are).
    """
    if split not in meta.split_sizes:
        raise DataError(
            f"{meta.name} has no split {split!r} (it has {sorted(meta.split_sizes)}): "
            "fix the split name in the config"
        )
    return meta.split_sizes[split]


def _process_bounds(total: int, process_count: int) -> np.ndarray:
    """Where each process's part of a split starts, and the end: int64 [process_count + 1].

    The parts of ``tfds.even_splits(split, process_count, drop_remainder=False)``: contiguous,
    the first ``total % process_count`` one example longer.
    """
    sizes = np.full(process_count, total // process_count)
    sizes[: total % process_count] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def check_indices(indices: Sequence[int] | np.ndarray, total: int, split: str) -> np.ndarray:
    """Subset positions of `eval_batches`, checked: non-empty, strictly increasing, in range.

    Args:
        indices: Positions in the split's stored order.
        total: The split's size.
        split: Split name (for the message).

    Returns:
        The positions as int64 [len(indices)].

    Raises:
        DataError: Empty, not 1-D integers, not strictly increasing, or outside [0, total).
    """
    array = np.asarray(indices)
    if array.ndim != 1 or not len(array) or not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"indices of split {split!r} must be a non-empty 1-D integer array, got "
            f"shape {array.shape} dtype {array.dtype}"
        )
    if (np.diff(array) <= 0).any() or array[0] < 0 or array[-1] >= total:
        raise DataError(
            f"indices of split {split!r} must be strictly increasing positions in "
            f"[0, {total}): sort them and drop duplicates"
        )
    return array.astype(np.int64)


def _process_args(
    meta: DatasetMeta,
    split: str,
    global_batch_size: int,
    process_index: int | None,
    process_count: int | None,
) -> tuple[int, int, int]:
    """Validates the split and the batch / process arguments.

    Returns:
        ``(process_index, process_count, local_batch_size)``.
    """
    split_size(meta, split)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index {process_index} is outside [0, {process_count})")
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise DataError(
            f"global batch size {global_batch_size} does not split over {process_count} "
            "processes: use a positive multiple of the process count"
        )
    return process_index, process_count, global_batch_size // process_count


def _read(
    data_dir: epath.Path,
    modalities: Mapping[str, ModalitySpec],
    subsplit: Any,
    *,
    shuffle_seed: int | None,
) -> Any:
    """Reads a (sub-)split as undecoded examples; shuffles the shard order if given a seed."""
    builder = tfds.builder_from_directory(data_dir)
    jpeg = {n for n, spec in modalities.items() if spec.kind == "frames" and spec.dtype == "uint8"}
    # JPEG frames are decoded by `_decoder` after shuffling and skipping; features not asked
    # for are never decoded.
    decoders = {
        name: _skip(feature)
        for name, feature in builder.info.features.items()
        if name != "label" and (name not in modalities or name in jpeg)
    }
    return builder.as_dataset(
        split=subsplit,
        decoders=decoders,
        shuffle_files=shuffle_seed is not None,
        read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False),
    )


def _skip(feature: Any) -> Any:
    """TFDS decoders that leave a feature (or each part of a nested one) undecoded."""
    if isinstance(feature, tfds.features.FeaturesDict):
        return {key: _skip(part) for key, part in feature.items()}
    return tfds.decode.SkipDecoding()


def _decoder(meta: DatasetMeta) -> Any:
    """Returns the per-example function: undecoded example -> raw arrays and ``mask``.

    Raw arrays: frames uint8 / uint16 ``[T, H, W, C]``, spectrograms as stored, sequences
    fitted to ``meta.sequence_fits`` (``[L, D]``) with their length under `length_key`.
    """

    def decode(example: dict[str, Any]) -> dict[str, Any]:
        out = {"label": tf.cast(example["label"], tf.int32), "mask": tf.constant(True)}
        for name, spec in meta.modalities.items():
            if spec.kind == "frames" and spec.dtype == "uint8":
                jpegs = example[name]
                frames = tf.stack(
                    [
                        tf.io.decode_jpeg(jpegs[t], channels=spec.shape[-1])
                        for t in range(spec.shape[0])
                    ]
                )
                out[name] = tf.ensure_shape(frames, spec.shape)
            elif spec.kind == "sequence":
                stored = example[name]
                out[name], out[length_key(name)] = fit_sequence(
                    stored["values"], stored["length"], meta.sequence_fits[name]
                )
            else:
                out[name] = example[name]
        return out

    return decode


def fit_sequence(values: Any, length: Any, fit: SequenceFit) -> tuple[Any, Any]:
    """Fits one stored sequence to the model's length (a TF function, used in tf.data).

    Args:
        values: float32 ``[T_max, D]``, zero after the first ``length`` steps (as stored).
        length: int32 scalar, the valid steps.
        fit: the target length L and how to get there (`schema.SequenceFit`).

    Returns:
        ``(float32 [L, D], int32 valid length)``: the valid steps first, zeros after them.
        'head' / 'center' keep ``min(length, L)`` steps; 'resample' interpolates the valid
        steps linearly onto L evenly spaced positions (first and last step kept), so all L
        are valid, unless ``length`` is 0 (then all zeros, length 0).
    """
    size = fit.length
    length = tf.cast(length, tf.int32)
    if fit.fit == "resample":
        last = tf.cast(tf.maximum(length - 1, 0), tf.float32)
        positions = tf.range(size, dtype=tf.float32) * (last / max(size - 1, 1))
        low = tf.cast(tf.floor(positions), tf.int32)
        high = tf.minimum(low + 1, tf.maximum(length - 1, 0))
        weight = (positions - tf.cast(low, tf.float32))[:, None]
        out = tf.gather(values, low) * (1.0 - weight) + tf.gather(values, high) * weight
        valid = tf.where(length > 0, size, 0)
    else:
        padded = tf.pad(values, [[0, max(size - values.shape[0], 0)], [0, 0]])
        start = 0 if fit.fit == "head" else tf.maximum((length - size) // 2, 0)
        out = padded[start : start + size]
        valid = tf.minimum(length, size)
    keep = tf.cast(tf.range(size) < valid, out.dtype)[:, None]
    return tf.ensure_shape(out * keep, (size, values.shape[1])), valid


def _padding_example(meta: DatasetMeta) -> dict[str, Any]:
    """A zero example with ``mask`` False and ``index`` -1, as `eval_batches` builds them."""
    example: dict[str, Any] = {"label": np.int32(0), "mask": np.bool_(False), "index": np.int32(-1)}
    for name, spec in meta.modalities.items():
        if spec.kind == "sequence":
            example[name] = np.zeros((meta.sequence_fits[name].length, spec.shape[1]), np.float32)
            example[length_key(name)] = np.int32(0)
        else:
            example[name] = np.zeros(spec.shape, spec.dtype)
    return example


def _cached_examples(meta: DatasetMeta, subsplit: Any) -> dict[str, Any]:
    """The decoded examples of a sub-split as in-memory tensors, in `_decoder`'s format."""
    return _cached(
        meta.data_dir,
        tuple(meta.modalities.items()),
        tuple(sorted(meta.sequence_fits.items())),
        subsplit,
    )


@functools.lru_cache(maxsize=8)
def _cached(
    data_dir: epath.Path,
    modalities: tuple[tuple[str, ModalitySpec], ...],
    sequence_fits: tuple[tuple[str, SequenceFit], ...],
    subsplit: Any,
) -> dict[str, Any]:
    """`_cached_examples` keyed by hashable arguments.

    Decoded once per process and kept for the 8 most recently used (sub-)splits; frames stay
    uint8 / uint16 (smaller than float32).
    """
    meta = DatasetMeta(
        name="",
        data_dir=data_dir,
        class_names=(),
        num_classes=0,
        modalities=dict(modalities),
        split_sizes={},
        schema_version="",
        sequence_fits=dict(sequence_fits),
    )
    ds = _read(data_dir, meta.modalities, subsplit, shuffle_seed=None)
    ds = ds.map(_decoder(meta), num_parallel_calls=tf.data.AUTOTUNE).batch(256)
    chunks = list(ds.as_numpy_iterator())
    return {key: tf.constant(np.concatenate([c[key] for c in chunks])) for key in chunks[0]}


def _gather(examples: dict[str, Any], order: np.ndarray) -> Any:
    """A dataset of the cached examples at ``order``, one example per element."""
    indices = tf.data.Dataset.from_tensor_slices(order.astype(np.int64))
    # The captured tensors are referenced by the dataset, not copied into it.
    return indices.map(
        lambda i: {key: tf.gather(value, i) for key, value in examples.items()},
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def input_shapes(
    meta: DatasetMeta, frame_size: Sequence[int] | None = None
) -> dict[str, tuple[int, ...]]:
    """The shape of one example of each modality in the batches, given ``frame_size``.

    Args:
        meta: The dataset.
        frame_size: ``(H, W)`` given to `train_batches` / `eval_batches`; None: stored size.

    Returns:
        modality -> shape without the batch dimension: spectrograms as stored, frames
        ``(T, H, W, C)`` at ``frame_size``, sequences ``(L, D)`` at their `SequenceFit`. A
        sequence's lengths (int32, no shape) are not listed: see `length_keys`.
    """
    sizes = _frame_sizes(meta, frame_size)
    shapes = {}
    for name, spec in meta.modalities.items():
        if name in sizes:
            shapes[name] = (spec.shape[0], *sizes[name], spec.shape[3])
        elif spec.kind == "sequence":
            shapes[name] = (meta.sequence_fits[name].length, spec.shape[1])
        else:
            shapes[name] = spec.shape
    return shapes


def length_keys(meta: DatasetMeta) -> list[str]:
    """The batch ``inputs`` keys of the sequence modalities' lengths (int32 ``[B]``)."""
    return [length_key(m) for m, spec in meta.modalities.items() if spec.kind == "sequence"]


def _frame_sizes(meta: DatasetMeta, frame_size: Sequence[int] | None) -> dict[str, tuple[int, int]]:
    """Output ``(H, W)`` of every frames modality: ``frame_size``, or the stored size."""
    if frame_size is not None and (
        len(frame_size) != 2
        or min(frame_size) < 1
        or not all(isinstance(v, int) for v in frame_size)
    ):
        raise DataError(f"frame_size {frame_size!r} must be (height, width), positive ints")
    return {
        name: tuple(frame_size) if frame_size is not None else tuple(spec.shape[1:3])
        for name, spec in meta.modalities.items()
        if spec.kind == "frames"
    }


def _augmenter(
    meta: DatasetMeta,
    sizes: Mapping[str, tuple[int, int]],
    augment: augment_lib.Augment | None,
    epoch_key: np.ndarray,
) -> Any:
    """Returns ``(position, raw example) -> raw example``, frames augmented if ``augment``.

    Augmented frames are float32 on the 0-255 scale (normalised later by `_batch_formatter`).
    Each frames modality gets its own draws: its index is folded into the example's key.
    """
    if augment is None:
        return lambda position, example: example
    key = tf.constant(epoch_key, tf.int64)
    names = [name for name in meta.modalities if name in sizes]

    def apply(position: Any, example: dict[str, Any]) -> dict[str, Any]:
        example = dict(example)
        example_key = augment_lib.example_key(key, position)
        for index, name in enumerate(names):
            modality_key = tf.random.experimental.stateless_fold_in(example_key, index)
            example[name] = augment_lib.random_resized_crop(
                example[name], modality_key, sizes[name], augment
            )
        return example

    return apply


def _batch_formatter(
    meta: DatasetMeta,
    frame_mean: Sequence[float],
    frame_std: Sequence[float],
    sizes: Mapping[str, tuple[int, int]],
) -> Any:
    """Returns the batch function: raw arrays -> the batch format, frames normalised.

    Frames modalities in ``sizes`` whose stored size differs are resized to it first (the
    evaluation resize).
    """
    if len(frame_mean) != 3 or len(frame_std) != 3 or min(frame_std) <= 0:
        raise DataError(
            f"frame_mean {tuple(frame_mean)} / frame_std {tuple(frame_std)} must be 3 values "
            "(RGB), std > 0"
        )
    # (x / 255 - mean) / std as one multiply-add, per source type (module docstring).
    rgb = (1.0 / (255.0 * np.asarray(frame_std)), -np.asarray(frame_mean) / np.asarray(frame_std))
    gray = (1.0 / (255.0 * GRAYSCALE_STD), -GRAYSCALE_MEAN / GRAYSCALE_STD)
    depth = (1.0 / DEPTH_SCALE, 0.0)
    affine = {}
    for name, spec in meta.modalities.items():
        if spec.kind == "frames":
            if spec.dtype == "uint16":
                scale, offset = depth
            else:
                scale, offset = rgb if spec.shape[-1] == 3 else gray
            affine[name] = (tf.constant(scale, tf.float32), tf.constant(offset, tf.float32))
    lengths = length_keys(meta)

    def to_batch(raw: dict[str, Any]) -> dict[str, Any]:
        inputs = {key: raw[key] for key in lengths}
        for name, spec in meta.modalities.items():
            if spec.kind == "frames":
                frames = raw[name]
                if name in sizes and tuple(sizes[name]) != tuple(spec.shape[1:3]):
                    frames = augment_lib.resize(frames, sizes[name])
                scale, offset = affine[name]
                inputs[name] = tf.cast(frames, tf.float32) * scale + offset
            else:
                inputs[name] = raw[name]
        batch = {"inputs": inputs, "label": raw["label"], "mask": raw["mask"]}
        if "index" in raw:  # evaluation batches
            batch["index"] = raw["index"]
        return batch

    return to_batch


def _finish(ds: Any, to_batch: Any) -> Iterator[dict[str, Any]]:
    """Formats batches of raw arrays in parallel, prefetches them and iterates as numpy."""
    ds = ds.map(to_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    # Parallel maps must keep the order: it is what makes epochs reproducible and resumable.
    options.deterministic = True
    return ds.with_options(options).as_numpy_iterator()
