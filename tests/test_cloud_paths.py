"""Dataset and run directories on a non-local filesystem, offline: TensorFlow's `ram://`.

With TensorFlow installed, epath reaches ``gs://`` through TensorFlow's filesystems
(`tf.io.gfile`), as tf.data, TFDS and TensorBoard do. `ram://` is TensorFlow's in-memory
filesystem: the `ram_scheme` fixture routes it through epath's TensorFlow backend exactly as
epath routes ``gs://``, so every file the trainer and the compare runner read or write takes the
code path of a bucket, without a network. What stays local: Orbax's checkpoints. Orbax writes
arrays with TensorStore, which knows local files, ``gs://`` and ``s3://`` but not TensorFlow's
``ram://``, so here `RunCheckpoints` gets a local directory per run (on ``gs://`` Orbax writes
to the bucket itself). The dataset is copied in with `tf.io.gfile`: TFDS's final directory
rename (`prepare`) fails on ``ram://``, which keeps listing a renamed directory's old name.
"""

import json
import os
import pathlib
import sys

import pytest
from absl import flags
from test_train import ROOT, load_tiny

from mlb_jax import compare, runtime, trainer
from mlb_jax.checkpointing import RunCheckpoints
from mlb_jax.data import synthetic
from mlb_jax.data._tf import import_tf


@pytest.fixture
def ram_scheme(monkeypatch, tmp_path):
    """A fresh `ram://<test>` root that epath handles like ``gs://``; local checkpoints.

    Yields:
      (the ram:// root, the local directory holding the checkpoints).
    """
    from etils.epath import backend, gpath, register

    # epath's table of URL schemes (etils 1.x): the prefix, its root in the path's parts, the
    # backend (TensorFlow's, as for gs:// when TensorFlow is installed) and the path class.
    monkeypatch.setattr(gpath, "_URI_PREFIXES", (*gpath._URI_PREFIXES, "ram://"))
    monkeypatch.setattr(gpath, "_URI_SCHEMES", gpath._URI_SCHEMES | {"ram"})
    monkeypatch.setitem(gpath._URI_MAP_ROOT, "ram://", "/ram/")
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "ram", backend.tf_backend)
    monkeypatch.setitem(register._URI_PREFIXES_TO_CLS, "ram://", gpath.PosixGPath)
    checkpoints = tmp_path / "checkpoints"
    original = RunCheckpoints.__init__

    def local_checkpoints(self, workdir, keep=2):
        original(self, checkpoints / os.fspath(workdir).removeprefix("ram://"), keep)

    monkeypatch.setattr(RunCheckpoints, "__init__", local_checkpoints)
    root = f"ram://{tmp_path.name}"
    yield root, checkpoints
    if import_tf().io.gfile.exists(root):  # the filesystem lives as long as the process
        import_tf().io.gfile.rmtree(root)


def copy_tree(src: pathlib.Path, dst: str) -> None:
    """Copies a local directory tree into a TensorFlow filesystem."""
    gfile = import_tf().io.gfile
    for path in pathlib.Path(src).rglob("*"):
        target = f"{dst}/{path.relative_to(src).as_posix()}"
        if path.is_dir():
            gfile.makedirs(target)
        else:
            gfile.copy(str(path), target)


def test_train_resume_and_compare_on_a_remote_filesystem(
    ram_scheme, data_cache, monkeypatch, capsys
):
    root, checkpoints = ram_scheme
    gfile = import_tf().io.gfile
    local = load_tiny(data_cache)
    version_dir = synthetic.ensure_synthetic(data_cache, **local.data.synthetic.to_dict())
    # The tiny dataset as a converter would leave it: <data.dir>/<name>/<config>/<version>.
    copy_tree(version_dir, f"{root}/data/{version_dir.relative_to(version_dir.parents[2])}")
    overrides = {"data.name": "tiny_remote", "data.dir": f"{root}/data"}
    config = load_tiny(data_cache)
    for key, value in overrides.items():
        config.update_from_flattened_dict({key: value})
    assert str(trainer.load_dataset(config).data_dir).startswith(f"{root}/data/")

    # The comparison's run is killed after its first epoch's checkpoint ...
    run_dir = f"{root}/cmp/mlb/seed_0"
    original_save = RunCheckpoints.save

    def save_then_die(self, step, state, meta):
        original_save(self, step, state, meta)
        raise KeyboardInterrupt("simulated kill after the first epoch's checkpoint")

    monkeypatch.setattr(RunCheckpoints, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_and_evaluate(config, run_dir)
    monkeypatch.setattr(RunCheckpoints, "save", original_save)
    assert gfile.exists(f"{run_dir}/config.json") and not gfile.exists(f"{run_dir}/results.json")

    # ... and the compare runner, pointed at the same directory, resumes it and summarises.
    monkeypatch.setattr(runtime, "setup_process", lambda **_: None)  # keep the test's jax cache
    argv = [
        "compare",
        f"--config={ROOT / 'configs' / 'tiny.py'}",
        f"--workdir={root}/cmp",
        "--methods=mlb",
        "--seeds=0",
        f"--config.data.cache_dir={data_cache}",
        *(f"--config.{key}={value}" for key, value in overrides.items()),
    ]
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections finds --config.* overrides there
    try:
        runtime.parse_flags(argv)
        compare.main([])
    finally:
        flags.FLAGS.unparse_flags()
    out = capsys.readouterr().out
    assert f"resumed {run_dir} at step 8 (epoch 1)" in out
    results = json.loads(gfile.GFile(f"{run_dir}/results.json").read())
    assert results["steps"] == 16 and results["dataset"].startswith("synthetic_av")
    assert set(gfile.listdir(f"{root}/cmp")) >= {
        "mlb",
        "comparison.md",
        "comparison.json",
        "comparison.png",
        "comparison_ece.png",
    }
    assert set(gfile.listdir(run_dir)) == {
        "config.json",
        "results.json",
        "training.png",
        "tensorboard",
    }
    assert gfile.listdir(f"{run_dir}/tensorboard")
    assert gfile.GFile(f"{root}/cmp/comparison.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "| mlb |" in gfile.GFile(f"{root}/cmp/comparison.md").read()
    # Only the checkpoints were written locally, each run's under its own directory.
    local_run = checkpoints / root.removeprefix("ram://") / "cmp" / "mlb" / "seed_0"
    assert {p.name for p in local_run.iterdir()} == {"checkpoints", "best"}
    assert not pathlib.Path("ram:").exists()
