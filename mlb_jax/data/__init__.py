"""Data layer: the versioned TFDS schema, dataset builders, synthetic data, the input pipeline.

Importing this package imports TensorFlow (configured by ``_tf``: quiet, CPU only). The schema
and how to add a dataset are documented in ``mlb_jax/data/README.md``.
"""

from mlb_jax.data.augment import Augment
from mlb_jax.data.builder import AudioVideoBuilder, AudioVideoConfig, prepare
from mlb_jax.data.pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    batches_per_epoch,
    eval_batch_count,
    eval_batches,
    input_shapes,
    to_global,
    train_batches,
)
from mlb_jax.data.schema import (
    SCHEMA_VERSION,
    DataError,
    DatasetMeta,
    ModalitySpec,
    load_meta,
    make_features,
)
from mlb_jax.data.synthetic import (
    SyntheticAV,
    SyntheticConfig,
    ensure_synthetic,
    generate,
    knob_names,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SCHEMA_VERSION",
    "AudioVideoBuilder",
    "AudioVideoConfig",
    "Augment",
    "DataError",
    "DatasetMeta",
    "ModalitySpec",
    "SyntheticAV",
    "SyntheticConfig",
    "batches_per_epoch",
    "ensure_synthetic",
    "eval_batch_count",
    "eval_batches",
    "generate",
    "input_shapes",
    "knob_names",
    "load_meta",
    "make_features",
    "prepare",
    "to_global",
    "train_batches",
]
