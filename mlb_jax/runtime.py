"""Process-wide set-up shared by the command-line entry points (train, compare)."""

import os

from absl import logging

DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "mlb_jax", "jax")


def setup_process(
    distributed: bool,
    compilation_cache: str,
    *,
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
) -> None:
    """Quiet logs, optional multi-host initialisation, persistent compilation cache.

    Args:
      distributed: call `jax.distributed.initialize()` (Cloud TPU pods, multi-node GPU). On
        TPU pods, SLURM, Open MPI and Kubernetes JAX finds the job's processes by itself.
      compilation_cache: directory of the persistent XLA cache ('' disables it).
      coordinator_address: 'host:port' of process 0 ('' = detected, or $JAX_COORDINATOR_ADDRESS).
      num_processes: processes in the job (0 = detected).
      process_id: this process's index (-1 = detected).

    Raises:
      ValueError: a coordinator address, process count or id given without `distributed`.
    """
    import jax

    logging.set_verbosity(logging.ERROR)  # keep Orbax / TFDS chatter out of the output
    given = {
        "coordinator_address": coordinator_address or None,
        "num_processes": num_processes or None,
        "process_id": process_id if process_id >= 0 else None,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if given and not distributed:
        raise ValueError(f"--{', --'.join(given)} given without --distributed; add --distributed")
    if distributed:
        jax.distributed.initialize(**given)
    if compilation_cache:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(compilation_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
