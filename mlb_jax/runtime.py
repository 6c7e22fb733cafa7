"""Process-wide set-up shared by the command-line entry points (train, compare)."""

import os

from absl import logging

DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "mlb_jax", "jax")


def setup_process(distributed: bool, compilation_cache: str) -> None:
    """Quiet logs, optional multi-host initialisation, persistent compilation cache.

    Args:
      distributed: call `jax.distributed.initialize()` (Cloud TPU pods, multi-node GPU).
      compilation_cache: directory of the persistent XLA cache ('' disables it).
    """
    import jax

    logging.set_verbosity(logging.ERROR)  # keep Orbax / TFDS chatter out of the output
    if distributed:
        jax.distributed.initialize()
    if compilation_cache:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(compilation_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
