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
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from mlb_jax.data._tf import import_tfds

SCHEMA_VERSION = "1.0.0"
"""Schema version, used as the TFDS ``VERSION`` of every builder (the version directory name)."""

ModalityKind = Literal["spectrogram", "frames"]

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
        kind: ``'spectrogram'``: float32 array ``[F, T]`` (frequency bins, time steps), stored
            raw and read back exactly. ``'frames'``: uint8 RGB frames ``[T, H, W, 3]``, stored
            as one JPEG per frame (lossy) and read back as float32 normalised images.
        shape: The per-example shape, ``(F, T)`` or ``(T, H, W, 3)``.
    """

    kind: ModalityKind
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        shape = tuple(int(d) for d in self.shape)
        object.__setattr__(self, "shape", shape)
        if any(d <= 0 for d in shape):
            raise DataError(f"modality shape {shape} has a non-positive size: sizes must be >= 1")
        if self.kind == "spectrogram":
            if len(shape) != 2:
                raise DataError(f"a spectrogram has shape (F, T), got {shape}")
        elif self.kind == "frames":
            if len(shape) != 4 or shape[-1] != 3:
                raise DataError(f"frames have shape (T, H, W, 3), got {shape}")
        else:
            raise DataError(f"unknown modality kind {self.kind!r}: use 'spectrogram' or 'frames'")


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
        if spec.kind == "spectrogram":
            # Raw bytes: exact floats and a cheaper parse than a protobuf float list.
            features[name] = tfds.features.Tensor(
                shape=spec.shape, dtype=np.float32, encoding=tfds.features.Encoding.BYTES
            )
        else:
            features[name] = tfds.features.Video(shape=spec.shape, encoding_format="jpeg")
    return tfds.features.FeaturesDict(features)


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
    """

    name: str
    data_dir: pathlib.Path
    class_names: tuple[str, ...]
    num_classes: int
    modalities: dict[str, ModalitySpec]
    split_sizes: dict[str, int]
    schema_version: str


def load_meta(data_dir: str | pathlib.Path, modalities: Sequence[str] | None = None) -> DatasetMeta:
    """Opens a prepared dataset and checks it against this schema.

    Args:
        data_dir: The TFDS version directory (``.../<dataset>/<config>/<version>``), or any
            parent of it (up to three levels up) that holds exactly one prepared dataset.
        modalities: The modality names the caller needs; ``None`` means every modality in the
            dataset. Only these are read by the input pipeline.

    Returns:
        The dataset's metadata.

    Raises:
        DataError: (one line naming the path and the fix) the directory is missing, holds no
            finished dataset or several, was written with another schema version, or lacks a
            requested modality.
    """
    version_dir = _find_version_dir(pathlib.Path(data_dir).expanduser().resolve())
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
    return DatasetMeta(
        name=name,
        data_dir=version_dir,
        class_names=tuple(label.names),
        num_classes=label.num_classes,
        modalities={m: available[m] for m in modalities},
        split_sizes={s: int(info.splits[s].num_examples) for s in info.splits},
        schema_version=str(info.version),
    )


def _find_version_dir(path: pathlib.Path) -> pathlib.Path:
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
    current = [c for c in candidates if versions[c] == SCHEMA_VERSION]
    if len(current) == 1:
        return current[0]
    if len(candidates) == 1:
        (found,) = candidates
        raise DataError(
            f"{found} was written with schema {versions[found]}, this mlb_jax reads "
            f"{SCHEMA_VERSION}: re-run the converter with this mlb_jax to rewrite the dataset"
        )
    listed = ", ".join(str(c.relative_to(path)) for c in (current or candidates))
    raise DataError(
        f"{path} holds several prepared datasets ({listed}): pass the version directory of "
        "the one to use"
    )


def _written_version(version_dir: pathlib.Path) -> str:
    """Reads the dataset version (= schema version) recorded in ``dataset_info.json``."""
    try:
        return str(json.loads((version_dir / _INFO_FILE).read_text())["version"])
    except (OSError, ValueError, KeyError) as e:
        raise DataError(
            f"{version_dir / _INFO_FILE} is unreadable ({e}): re-run the converter to rewrite it"
        ) from e


def _modalities_of(version_dir: pathlib.Path, features: Any, tfds: Any) -> dict[str, ModalitySpec]:
    """Maps each non-reserved feature of a dataset to its `ModalitySpec`."""
    found = {}
    for name, feature in features.items():
        if name in RESERVED_KEYS:
            continue
        if isinstance(feature, tfds.features.Video):
            kind: ModalityKind = "frames"
        elif (
            isinstance(feature, tfds.features.Tensor)
            and np.dtype(feature.np_dtype) == np.float32
            and len(feature.shape) == 2
        ):
            kind = "spectrogram"
        else:
            raise DataError(
                f"{version_dir}: feature {name!r} ({type(feature).__name__}) is neither a "
                "spectrogram nor frames: re-run the converter with this mlb_jax"
            )
        if None in feature.shape:
            raise DataError(
                f"{version_dir}: modality {name!r} has a variable shape {feature.shape}: "
                "converters must write fixed shapes; re-run the converter"
            )
        found[name] = ModalitySpec(kind, feature.shape)
    if not found:
        raise DataError(f"{version_dir} has no modality feature: re-run the converter")
    return found
