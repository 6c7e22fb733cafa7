"""TensorBoard scalars, written by process 0 only (other processes get a no-op writer)."""

import jax

from mlb_jax.data._tf import import_tf
from mlb_jax.paths import PathLike


class MetricWriter:
    """Scalar summaries in `<workdir>/tensorboard`, written only on process 0."""

    def __init__(self, logdir: PathLike):
        """Opens the event file (process 0) or does nothing (other processes).

        `logdir` may be any path TensorFlow's filesystems take (local, gs://, ...).
        """
        self._writer = None
        if jax.process_index() == 0:
            tf = import_tf()
            self._tf = tf
            self._writer = tf.summary.create_file_writer(str(logdir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Writes one scalar per name at `step`."""
        if self._writer is None:
            return
        with self._writer.as_default():
            for name, value in values.items():
                self._tf.summary.scalar(name, float(value), step=step)

    def close(self) -> None:
        """Flushes and closes the event file."""
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
