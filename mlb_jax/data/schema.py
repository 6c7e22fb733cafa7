"""The versioned on-disk schema of every mlb_jax dataset, and the reader of its metadata.

Every dataset (synthetic or converted from raw media) is a TFDS dataset whose features are made by
`make_features`: an ``id``, a ``label`` and one feature per modality. `load_meta` opens a prepared
dataset directory, checks it against this schema and returns a `DatasetMeta` that the input
pipeline and the trainer use. The schema is documented in ``mlb_jax/data/README.md``; change
`SCHEMA_VERSION` whenever the layout changes, so that old directories are rejected with a clear
message instead of being misread.
"""

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from etils import epath

from mlb_jax import paths
from mlb_jax.data._tf import import_tfds

SCHEMA_VERSION = "2.0.0"
"""Schema version, used as the TFDS ``VERSION`` of every builder (the version directory name)."""

# Versions this mlb_jax reads: 1.0.0 (spectrograms and RGB JPEG frames only) is a subset of
# 2.0.0 (which adds sequences and 1-channel / uint16 frames), so old datasets need no rewrite.
READABLE_VERSIONS = ("1.0.0", SCHEMA_VERSION)

ModalityKind = Literal["spectrogram", "frames", "sequence"]
SequenceFitKind = Literal["head", "center", "resample"]
FRAME_DTYPES = ("uint8", "uint16")
FRAME_CHANNELS = (1, 3)

# Feature keys every example has besides its modalities; no modality may take these names.
RESERVED_KEYS = ("id", "label")

# TFDS writes into ``incomplete.<random>_<version>`` and renames it at the end of a build.
_INCOMPLETE_PREFIX = "incomplete."
_INFO_FILE = "dataset_info.json"


class DataError(ValueError):
    """A dataset or a data request is unusable; the message says which and what to do."""


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
    """What one modality looks like in a single example.

    Attributes:
        kind: ``'spectrogram'``: float32 ``[F, T]`` (frequency bins, time steps), stored raw
            and read back exactly. ``'frames'``: ``[T, H, W, C]`` with C = 1 (grayscale, depth)
            or 3 (RGB); uint8 frames are stored as one JPEG per frame (lossy), uint16 frames
            (depth maps) zlib-compressed and exact; both are read back as float32, normalised
            per source type (``mlb_jax/data/README.md``). ``'sequence'``: float32 ``[T, D]``
            feature sequences of variable length T <= ``shape[0]`` (MFCC frames, pretrained
            embeddings, joints, sensor samples), stored zero-padded to ``shape[0]`` with the
            valid length, zlib-compressed (the padding costs almost nothing) and exact.
        shape: The per-example shape: ``(F, T)``, ``(T, H, W, C)``, or ``(T_max, D)``.
        dtype: The stored element type: ``'float32'`` for spectrograms and sequences,
            ``'uint8'`` (default) or ``'uint16'`` for frames; None picks the kind's default.
    """

    kind: ModalityKind
    shape: tuple[int, ...]
    dtype: str | None = None

    def __post_init__(self) -> None:
        shape = tuple(int(d) for d in self.shape)
        object.__setattr__(self, "shape", shape)
        if any(d <= 0 for d in shape):
            raise DataError(f"modality shape {shape} has a non-positive size: sizes must be >= 1")
        default = "uint8" if self.kind == "frames" else "float32"
        dtype = default if self.dtype is None else str(np.dtype(self.dtype))
        object.__setattr__(self, "dtype", dtype)
        if self.kind == "spectrogram":
            if len(shape) != 2:
                raise DataError(f"a spectrogram has shape (F, T), got {shape}")
        elif self.kind == "sequence":
            if len(shape) != 2:
                raise DataError(f"a sequence has shape (T_max, D), got {shape}")
        elif self.kind == "frames":
            if len(shape) != 4 or shape[-1] not in FRAME_CHANNELS:
                raise DataError(f"frames have shape (T, H, W, C) with C 1 or 3, got {shape}")
            if dtype not in FRAME_DTYPES:
                raise DataError(f"frames are uint8 or uint16, got {dtype}")
        else:
            raise DataError(
                f"unknown modality kind {self.kind!r}: use 'spectrogram', 'frames' or 'sequence'"
            )
        if self.kind != "frames" and dtype != "float32":
            raise DataError(f"a {self.kind} is float32, got {dtype}")

    def encode(self, value: np.ndarray) -> Any:
        """One example's array in the form its TFDS feature stores.

        Args:
            value: the modality's array: ``shape`` exactly (spectrogram, frames), or float32
                ``[T, D]`` with ``1 <= T <= shape[0]`` (sequence).

        Returns:
            ``value`` itself, or for a sequence ``{'values': [T_max, D] zero-padded, 'length': T}``.

        Raises:
            DataError: a sequence of the wrong width or longer than ``shape[0]``.
        """
        if self.kind != "sequence":
            return value
        value = np.asarray(value, np.float32)
        if value.ndim != 2 or value.shape[1] != self.shape[1] or value.shape[0] > self.shape[0]:
            raise DataError(
                f"a sequence of this dataset is [T <= {self.shape[0]}, {self.shape[1]}], "
                f"got {value.shape}"
            )
        padded = np.zeros(self.shape, np.float32)
        padded[: len(value)] = value
        return {"values": padded, "length": np.int32(len(value))}


@dataclasses.dataclass(frozen=True)
class SequenceFit:
    """How the input pipeline turns a stored sequence into a fixed-length model input.

    Attributes:
        length: L, the steps per example in the batches.
        fit: ``'head'``: the first L valid steps, zero-padded after a shorter sequence;
            ``'center'``: the middle L valid steps, likewise padded; ``'resample'``: the valid
            steps linearly interpolated to exactly L (every step valid).
    """

    length: int
    fit: SequenceFitKind = "head"

    def __post_init__(self) -> None:
        if not isinstance(self.length, int) or self.length < 1:
            raise DataError(f"sequence length must be a positive integer, got {self.length!r}")
        if self.fit not in ("head", "center", "resample"):
            raise DataError(
                f"sequence fit {self.fit!r} is unknown: use 'head', 'center' or 'resample'"
            )


def make_features(class_names: Sequence[str], modalities: Mapping[str, ModalitySpec]) -> Any:
    """Builds the TFDS feature dictionary of the schema.

    Args:
        class_names: Class names in label order (label ``i`` is ``class_names[i]``).
        modalities: Modality name -> spec, e.g. ``{'audio': ModalitySpec('spectrogram',
            (257, 188)), 'video': ModalitySpec('frames', (3, 224, 224, 3))}``.

    Returns:
        A ``tfds.features.FeaturesDict`` with keys ``'id'`` (Text, unique per split),
        ``'label'`` (ClassLabel with ``class_names``) and one key per modality.

    Raises:
        DataError: No classes, no modality, or a modality named like a reserved key.
    """
    tfds = import_tfds()
    if not class_names:
        raise DataError("a dataset needs at least one class name")
    if not modalities:
        raise DataError("a dataset needs at least one modality")
    features: dict[str, Any] = {
        "id": tfds.features.Text(),
        "label": tfds.features.ClassLabel(names=list(class_names)),
    }
    for name, spec in modalities.items():
        if name in RESERVED_KEYS:
            raise DataError(f"modality name {name!r} is reserved: rename the modality")
        features[name] = _feature(spec, tfds)
    return tfds.features.FeaturesDict(features)


def _feature(spec: ModalitySpec, tfds: Any) -> Any:
    """The TFDS feature that stores one modality (`_modalities_of` reads it back)."""
    zlib = tfds.features.Encoding.ZLIB
    if spec.kind == "spectrogram":
        # Raw bytes: exact floats and a cheaper parse than a protobuf float list.
        return tfds.features.Tensor(
            shape=spec.shape, dtype=np.float32, encoding=tfds.features.Encoding.BYTES
        )
    if spec.kind == "sequence":
        return tfds.features.FeaturesDict(
            {
                "values": tfds.features.Tensor(shape=spec.shape, dtype=np.float32, encoding=zlib),
                "length": tfds.features.Scalar(dtype=np.int32),
            }
        )
    if spec.dtype == "uint16":  # JPEG has no 16-bit form; depth must stay exact
        return tfds.features.Tensor(shape=spec.shape, dtype=np.uint16, encoding=zlib)
    return tfds.features.Video(shape=spec.shape, encoding_format="jpeg")


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
    """A prepared dataset, as the input pipeline and the trainer see it.

    Attributes:
        name: ``'<dataset>/<config>'`` (or ``'<dataset>'`` for a builder without configs).
        data_dir: The TFDS version directory (holds the tfrecord shards, ``dataset_info.json``
            and ``features.json``).
        class_names: Class names in label order.
        num_classes: ``len(class_names)``.
        modalities: The modalities to read, name -> spec, in the order they were requested.
        split_sizes: Split name -> number of examples.
        schema_version: The schema version the dataset was written with.
        sequence_fits: How the pipeline delivers each sequence modality (`SequenceFit`);
            `load_meta` sets every one to its stored maximum length, 'head'; the trainer
            applies ``config.data.sequence_length`` / ``sequence_fit`` with `with_sequence_fits`.
    """

    name: str
    data_dir: epath.Path
    class_names: tuple[str, ...]
    num_classes: int
    modalities: dict[str, ModalitySpec]
    split_sizes: dict[str, int]
    schema_version: str
    sequence_fits: dict[str, SequenceFit] = dataclasses.field(default_factory=dict)

    def with_sequence_fits(self, fits: Mapping[str, SequenceFit]) -> "DatasetMeta":
        """A copy delivering some sequence modalities at another length or fit.

        Raises:
            DataError: a name that is not a sequence modality of this dataset.
        """
        unknown = [m for m in fits if m not in self.sequence_fits]
        if unknown:
            raise DataError(
                f"{self.name} has no sequence modality {unknown[0]!r} (its sequence modalities: "
                f"{sorted(self.sequence_fits)}): fix the modality name"
            )
        return dataclasses.replace(self, sequence_fits={**self.sequence_fits, **fits})


def load_meta(data_dir: paths.PathLike, modalities: Sequence[str] | None = None) -> DatasetMeta:
    """Opens a prepared dataset and checks it against this schema.

    Args:
        data_dir: The TFDS version directory (``.../<dataset>/<config>/<version>``), or any
            parent of it (up to three levels up) that holds exactly one prepared dataset;
            local or a URL (``gs://...``, see `mlb_jax.paths`).
        modalities: The modality names the caller needs; ``None`` means every modality in the
            dataset. Only these are read by the input pipeline.

    Returns:
        The dataset's metadata.

    Raises:
        DataError: (one line naming the path and the fix) the directory is missing, holds no
            finished dataset or several, was written with another schema version, or lacks a
            requested modality.
    """
    version_dir = _find_version_dir(paths.resolve(data_dir))
    tfds = import_tfds()
    try:
        builder = tfds.builder_from_directory(version_dir)
        info = builder.info
    except Exception as e:  # TFDS raises many types for a damaged directory.
        raise DataError(
            f"cannot read the dataset in {version_dir} ({type(e).__name__}: {e}): "
            "re-run the converter to rewrite it"
        ) from e
    features = dict(info.features.items())
    label = features.get("label")
    if "id" not in features or not isinstance(label, tfds.features.ClassLabel):
        raise DataError(
            f"{version_dir} lacks the 'id'/'label' features of the mlb_jax schema: "
            "it was not written by an mlb_jax converter; convert the raw data with data_prep/"
        )
    available = _modalities_of(version_dir, features, tfds)
    if modalities is None:
        modalities = sorted(available)
    missing = [m for m in modalities if m not in available]
    if missing:
        raise DataError(
            f"{version_dir} has no modality {missing[0]!r} (it has {sorted(available)}): "
            "fix the modality names in the config or convert the data with that modality"
        )
    name = info.name if not info.config_name else f"{info.name}/{info.config_name}"
    chosen = {m: available[m] for m in modalities}
    return DatasetMeta(
        name=name,
        data_dir=version_dir,
        class_names=tuple(label.names),
        num_classes=label.num_classes,
        modalities=chosen,
        split_sizes={s: int(info.splits[s].num_examples) for s in info.splits},
        schema_version=str(info.version),
        sequence_fits={
            m: SequenceFit(spec.shape[0]) for m, spec in chosen.items() if spec.kind == "sequence"
        },
    )


def _find_version_dir(path: epath.Path) -> epath.Path:
    """Returns the one finished, current-schema version directory at or below ``path``."""
    if not path.exists():
        raise DataError(
            f"data directory {path} does not exist: prepare the dataset first "
            "(a data_prep converter, or mlb_jax.data.ensure_synthetic) or fix the path"
        )
    if not path.is_dir():
        raise DataError(f"data directory {path} is a file: pass the dataset's directory")
    if path.name.startswith(_INCOMPLETE_PREFIX):
        raise DataError(
            f"{path} is an unfinished build (its converter was interrupted): "
            "delete it and re-run the converter"
        )
    if (path / _INFO_FILE).is_file():
        candidates = [path]
    else:
        # A parent of the version directory: <dataset>/<config>/<version> at most 3 levels down.
        candidates = sorted(
            info.parent
            for pattern in ("*/", "*/*/", "*/*/*/")
            for info in path.glob(pattern + _INFO_FILE)
            if not any(p.startswith(_INCOMPLETE_PREFIX) for p in info.relative_to(path).parts)
        )
    if not candidates:
        unfinished = sorted(
            p
            for pattern in ("", "*/", "*/*/")
            for p in path.glob(pattern + _INCOMPLETE_PREFIX + "*")
        )
        if unfinished:
            raise DataError(
                f"{path} holds only an unfinished build ({unfinished[0].name}: its converter "
                "was interrupted): delete it and re-run the converter"
            )
        raise DataError(
            f"no prepared dataset in {path} (expected <dataset>/<config>/<version>/{_INFO_FILE}): "
            "run the converter into this directory or fix the path"
        )
    versions = {c: _written_version(c) for c in candidates}
    readable = [c for c in candidates if versions[c] in READABLE_VERSIONS]
    current = [c for c in readable if versions[c] == SCHEMA_VERSION] or readable
    if len(current) == 1:
        return current[0]
    if len(candidates) == 1:
        (found,) = candidates
        if _version_key(versions[found]) > _version_key(SCHEMA_VERSION):
            fix = "upgrade mlb_jax (pip install -U mlb_jax) to read it"
        else:
            fix = "re-run the converter with this mlb_jax to rewrite the dataset"
        raise DataError(
            f"{found} was written with schema {versions[found]}, this mlb_jax reads "
            f"{' and '.join(READABLE_VERSIONS)}: {fix}"
        )
    listed = ", ".join(str(c.relative_to(path)) for c in (current or candidates))
    raise DataError(
        f"{path} holds several prepared datasets ({listed}): pass the version directory of "
        "the one to use"
    )


def _version_key(version: str) -> tuple[int, ...]:
    """``'2.0.0'`` -> ``(2, 0, 0)``; an unparsable version sorts first."""
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return ()


def _written_version(version_dir: epath.Path) -> str:
    """Reads the dataset version (= schema version) recorded in ``dataset_info.json``."""
    try:
        return str(json.loads((version_dir / _INFO_FILE).read_text())["version"])
    except (OSError, ValueError, KeyError) as e:
        raise DataError(
            f"{version_dir / _INFO_FILE} is unreadable ({e}): re-run the converter to rewrite it"
        ) from e


def _modalities_of(version_dir: epath.Path, features: Any, tfds: Any) -> dict[str, ModalitySpec]:
    """Maps each non-reserved feature of a dataset to its `ModalitySpec`."""
    found = {}
    for name, feature in features.items():
        if name in RESERVED_KEYS:
            continue
        dtype = None
        kind: str | None
        if isinstance(feature, tfds.features.Video):
            kind = "frames"
            shape = feature.shape
        elif isinstance(feature, tfds.features.FeaturesDict) and set(feature.keys()) == {
            "values",
            "length",
        }:
            kind = "sequence"
            shape = feature["values"].shape
        elif isinstance(feature, tfds.features.Tensor) and len(feature.shape) in (2, 4):
            kind = "spectrogram" if len(feature.shape) == 2 else "frames"
            dtype = str(np.dtype(feature.np_dtype))
            shape = feature.shape
            if (kind, dtype) not in (("spectrogram", "float32"), ("frames", "uint16")):
                kind = None
        else:
            kind = None
        if kind is None:
            raise DataError(
                f"{version_dir}: feature {name!r} ({type(feature).__name__}) is not a "
                "spectrogram, frames or a sequence: re-run the converter with this mlb_jax"
            )
        if None in shape:
            raise DataError(
                f"{version_dir}: modality {name!r} has a variable shape {shape}: "
                "converters must write fixed shapes; re-run the converter"
            )
        try:
            found[name] = ModalitySpec(kind, shape, dtype)
        except DataError as e:
            raise DataError(f"{version_dir}: modality {name!r}: {e}") from e
    if not found:
        raise DataError(f"{version_dir} has no modality feature: re-run the converter")
    return found
