"""Command line: `python -m mlb_jax.train --config=configs/<x>.py --workdir=<dir>`.

Thin on purpose: it sets up the process (quiet TensorFlow, GPUs hidden from it, optional
multi-host initialisation, persistent compilation cache) and calls
`trainer.train_and_evaluate`. Bad input, on the command line (`runtime.parse_flags`) or in the
config and data, ends with one `error:` line and exit status 2.
Override any config field, e.g. `--config.method.name=joint --config.train.lr=0.01`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags
from ml_collections import config_flags

from mlb_jax.runtime import DEFAULT_COMPILATION_CACHE, fail, parse_flags, relaunch, setup_process

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (re-running resumes)")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "call jax.distributed.initialize() (multi-host: Cloud TPU pods, multi-node GPU)",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "with --distributed: 'host:port' of process 0 ('' = detected)"
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", 0, "with --distributed: processes in the job (0 = detected)"
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", -1, "with --distributed: this process's index (-1 = detected)"
)
_CACHE = flags.DEFINE_string(
    "compilation_cache",
    DEFAULT_COMPILATION_CACHE,
    "persistent XLA compilation cache directory ('' disables it)",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    """Runs one training job; user errors become one line on stderr and exit status 2."""
    del argv  # `parse_flags` refuses positional arguments
    try:
        setup_process(
            _DISTRIBUTED.value,
            _CACHE.value,
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    except ValueError as err:
        fail(str(err))
    from mlb_jax.trainer import train_and_evaluate

    try:
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as err:
        # KeyError's str() is the repr of its argument: show the message itself.
        fail(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))


if __name__ == "__main__":
    relaunch()  # huge pages for XLA's buffers (mlb_jax.allocator), before anything else
    app.run(main, flags_parser=parse_flags)
