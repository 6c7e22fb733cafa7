"""The TFDS builder base class every mlb_jax dataset is written with, and the offline `prepare`.

A dataset (synthetic, CREMA-D, AVE, UCF101, a manifest) is a subclass of `AudioVideoBuilder`
that says what it contains through an `AudioVideoConfig` (class names and modality shapes) and
yields examples; the base turns that into the shared feature schema (`schema.make_features`),
versioned with `schema.SCHEMA_VERSION`. `prepare` writes the dataset with TFDS and no network.
How to write a subclass is in ``mlb_jax/data/README.md``.
"""

import dataclasses
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from etils import epath

from mlb_jax import paths
from mlb_jax.data._tf import import_tfds
from mlb_jax.data.schema import SCHEMA_VERSION, DataError, ModalitySpec, make_features

tfds = import_tfds()


@dataclasses.dataclass(kw_only=True, eq=False)
class AudioVideoConfig(tfds.core.BuilderConfig):
    """What a dataset contains; its ``name`` is the config directory of the written dataset.

    Attributes:
        class_names: Class names in label order.
        modalities: Modality name -> `ModalitySpec` (kind and per-example shape).
    """

    class_names: tuple[str, ...] = ()
    modalities: Mapping[str, ModalitySpec] = dataclasses.field(default_factory=dict)


class AudioVideoBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Abstract TFDS builder of a dataset in the mlb_jax schema.

    A subclass sets ``name`` (the dataset directory name), either ``BUILDER_CONFIGS`` (a list of
    `AudioVideoConfig`) or accepts a config at construction, and implements
    ``_split_generators(dl_manager)`` (split name -> ``self._generate_examples(...)``; raw files
    are under ``dl_manager.manual_dir``) and ``_generate_examples(...)`` yielding
    ``(key, {'id': str, 'label': int | str, <modality>: np.ndarray})`` with a unique key per
    split (use the id). Spectrograms are float32 ``[F, T]``, frames uint8 or uint16
    ``[T, H, W, C]``; a sequence modality's value is ``spec.encode(array)`` (float32 ``[T, D]``
    padded to the spec's ``T_max`` with its length; `schema.ModalitySpec.encode`).

    Subclasses are not entered in TFDS's global registry (we read datasets by directory, and
    registration breaks when a module defining a builder is imported twice); pass
    ``skip_registration=False`` in the class statement to register one for ``tfds.load``.
    """

    VERSION = tfds.core.Version(SCHEMA_VERSION)
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "mlb_jax schema 1.0.0: id, label, spectrogram / RGB JPEG frame modalities.",
        SCHEMA_VERSION: "mlb_jax schema 2.0.0: adds sequence modalities ([T, D] with a length) "
        "and 1-channel or uint16 (zlib) frames.",
    }
    HOMEPAGE: ClassVar[str | None] = None
    CITATION: ClassVar[str | None] = None

    def __init_subclass__(cls, skip_registration: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(skip_registration=skip_registration, **kwargs)

    def _info(self) -> Any:
        """Builds the dataset info from the config's class names and modalities."""
        config = self.builder_config
        if not isinstance(config, AudioVideoConfig):
            raise DataError(
                f"{type(self).__name__} has no AudioVideoConfig: define BUILDER_CONFIGS or pass "
                "config=AudioVideoConfig(name=..., class_names=..., modalities=...)"
            )
        return tfds.core.DatasetInfo(
            builder=self,
            description=config.description or (type(self).__doc__ or "").strip(),
            features=make_features(config.class_names, config.modalities),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
        )


def prepare(
    builder_cls: Callable[..., AudioVideoBuilder],
    *,
    data_dir: paths.PathLike,
    config: str | AudioVideoConfig | None = None,
    manual_dir: paths.PathLike | None = None,
) -> epath.Path:
    """Writes a dataset with TFDS, offline, unless it is already there.

    TFDS writes into a temporary ``incomplete.*`` directory and renames it at the end, so a
    killed build never looks finished (`schema.load_meta` rejects it); re-running ``prepare``
    starts over. A finished dataset is reused, not rewritten.

    Args:
        builder_cls: The `AudioVideoBuilder` subclass, or any callable that makes one from the
            ``data_dir`` and ``config`` keywords (e.g. a ``functools.partial`` binding more
            constructor arguments).
        data_dir: Root directory; the dataset goes to ``<data_dir>/<name>/<config>/<version>``
            (local or a URL such as ``gs://...``; TFDS writes through epath).
        config: A config name from ``builder_cls.BUILDER_CONFIGS`` or an `AudioVideoConfig`;
            ``None`` takes the first of ``BUILDER_CONFIGS``.
        manual_dir: Directory of the raw files the builder reads (``dl_manager.manual_dir``);
            required when the builder sets ``MANUAL_DOWNLOAD_INSTRUCTIONS``.

    Returns:
        The version directory of the written dataset.

    Raises:
        DataError: The dataset must be converted from raw files and ``manual_dir`` is missing.
    """
    builder = builder_cls(data_dir=os.fspath(paths.as_path(data_dir)), config=config)
    needs_raw = builder.MANUAL_DOWNLOAD_INSTRUCTIONS and not builder.data_path.exists()
    if manual_dir is None and needs_raw:
        raise DataError(
            f"{builder.name} is converted from raw files: pass manual_dir (the directory "
            f"holding them). {builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip().splitlines()[0]}"
        )
    # TFDS's download manager makes a downloads/ folder; keep it out of data_dir.
    with tempfile.TemporaryDirectory() as download_dir:
        builder.download_and_prepare(
            download_dir=download_dir,
            download_config=tfds.download.DownloadConfig(
                manual_dir=None if manual_dir is None else os.fspath(paths.as_path(manual_dir)),
                # Never look for a pre-built copy on Google Cloud Storage: no network here.
                try_download_gcs=False,
                compute_stats=tfds.download.ComputeStatsMode.SKIP,
            ),
        )
    return epath.Path(builder.data_dir)
