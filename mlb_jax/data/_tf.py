"""The one place the data layer imports TensorFlow and TFDS, configured to stay out of JAX's way.

TensorFlow is only the input pipeline here: it must not log C++ noise, must not take the GPU
memory JAX needs, and must give the same numbers on every machine (oneDNN's custom kernels
change float results slightly). These settings only take effect if they are applied before the
first ``import tensorflow``, so every module of ``mlb_jax.data`` goes through these functions.
"""

import contextlib
import os
import types


def import_tf() -> types.ModuleType:
    """Imports TensorFlow quietly, deterministically and without GPUs.

    Returns:
        The ``tensorflow`` module.
    """
    # setdefault: a user who asked for TF's logs or oneDNN keeps them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    # JAX owns the accelerators; tf.data only needs the host CPU. RuntimeError: TF's devices
    # were already initialised earlier in the process, too late to hide them.
    with contextlib.suppress(RuntimeError):
        tf.config.set_visible_devices([], "GPU")
    return tf


def import_tfds() -> types.ModuleType:
    """Imports ``tensorflow_datasets`` after TensorFlow has been configured by `import_tf`.

    Returns:
        The ``tensorflow_datasets`` module.
    """
    import_tf()
    import tensorflow_datasets as tfds

    return tfds
