"""Paths of datasets and runs: a local path or a URL of any filesystem etils' `epath` handles.

Every file a run or a converter reads or writes goes through `etils.epath.Path`, so
``--config.data.dir``, ``--workdir`` and the converters' ``--out_dir`` may be ``gs://...``
(Cloud Storage), ``s3://...`` and the like as well as local paths. With TensorFlow installed
(the ``[train]`` extra) epath reaches those URLs through TensorFlow's filesystems, the ones
tf.data, TFDS and TensorBoard use too; Orbax keeps its directories with epath and its arrays
with TensorStore (local files, ``gs://``, ``s3://``).
"""

import os
import pathlib

from etils import epath

PathLike = str | os.PathLike


def is_local(path: PathLike) -> bool:
    """Whether `path` is on the local filesystem (it has no ``scheme://`` prefix)."""
    return "://" not in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
    """`path` as an `epath.Path`; a local one with ``~`` expanded, a URL as it is."""
    path = epath.Path(path)
    return path.expanduser() if is_local(path) else path


def resolve(path: PathLike) -> epath.Path:
    """`as_path`, and a local path made absolute with its symlinks resolved (Orbax needs it).

    A URL stays as it is: `pathlib` would collapse its ``//`` and prefix the working directory.
    """
    if not is_local(path):
        return epath.Path(path)
    return epath.Path(pathlib.Path(path).expanduser().resolve())


def write_atomic(path: PathLike, data: str | bytes) -> None:
    """Writes `data` to a temporary file beside `path` and renames it over `path`.

    Readers see the previous file or the new one, never half of one. On a local disk the
    rename is atomic (POSIX). On an object store (``gs://``, ``s3://``) every object write is
    already all-or-nothing and the rename is a copy and a delete, so the same holds for the
    file; a reader may briefly see the temporary object beside it.

    Args:
      path: the file to write (its folder must exist).
      data: the whole content; text is written as UTF-8.
    """
    path = epath.Path(path)
    # The process id keeps concurrent writers (data_prep's decode workers) apart.
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    tmp.replace(path)
