"""Reading a finished run back: its config, its best train state, and its modality's weights.

The ensemble and the pretrained-fusion methods build on finished `unimodal` runs given by
their run directories; this module checks that a directory holds such a run and restores its
best-on-validation state on the layout its own config.json describes.
"""

import json
from typing import Any

import jax
import ml_collections
import numpy as np

from mlb_jax import paths
from mlb_jax.balancing.masks import path_string
from mlb_jax.checkpointing import RunCheckpoints
from mlb_jax.models.conv import resolve as resolve_conv

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
# Keys config.json adds to the config itself (see trainer.check_run_config).
_RECORD_KEYS = ("resolved", "environment")

PyTree = Any


def run_config(workdir: paths.PathLike, where: str) -> tuple[ml_collections.ConfigDict, dict]:
    """The config a finished run trained with, and its config.json 'resolved' record.

    Args:
      workdir: the run directory.
      where: the config field that named it (for the error message).

    Raises:
      FileNotFoundError: no finished run there (no config.json or no best checkpoint).
    """
    workdir = paths.as_path(workdir)
    path = workdir / CONFIG_FILE
    if not path.exists() or not (workdir / "best").is_dir():
        raise FileNotFoundError(
            f"{where}={str(workdir)!r} holds no finished run (no {CONFIG_FILE} or best "
            "checkpoint): train it first, e.g. with --config.method.name=unimodal"
        )
    doc = json.loads(path.read_text())
    return config_from_doc(doc), doc.get("resolved", {})


def config_from_doc(doc: dict) -> ml_collections.ConfigDict:
    """The config of a run from its config.json document (without the records it adds).

    A run that asked for ``model.conv='auto'`` gets the algorithm it ran (its
    ``resolved.model.conv_resolved``: 'auto' is timed per machine, `mlb_jax.conv_auto`; runs
    recorded before that field, when 'auto' was never timed, `mlb_jax.models.conv.resolve`'s
    answer), so that its checkpoints are evaluated and built on with the convolutions they
    trained with.
    """
    config = {k: v for k, v in doc.items() if k not in _RECORD_KEYS}
    if "model" in config and config["model"].get("conv", "auto") == "auto":
        ran = doc.get("resolved", {}).get("model", {}).get("conv_resolved")
        config["model"] = {**config["model"], "conv": ran or resolve_conv("auto")}
    return ml_collections.ConfigDict(config)


def check_unimodal_run(
    config: ml_collections.ConfigDict, resolved: dict, modality: str, num_classes: int, where: str
) -> None:
    """Raises ValueError unless the run trained `unimodal` on `modality` with K classes."""
    method, modalities = config.method.name, list(config.model.modalities)
    if method != "unimodal" or config.method.get("modality") != modality:
        raise ValueError(
            f"{where} is a {method!r} run (modality {config.method.get('modality')!r}), not a "
            f"'unimodal' run of {modality!r}: give the run trained with "
            f"--config.method.name=unimodal --config.method.modality={modality}"
        )
    k = resolved.get("data", {}).get("num_classes", num_classes)
    if k != num_classes or modality not in modalities:
        raise ValueError(
            f"{where} was trained on another dataset ({k} classes, modalities {modalities}); "
            f"this run has {num_classes} classes"
        )


def restore_best(
    config: ml_collections.ConfigDict,
    resolved: dict,
    workdir: paths.PathLike,
    num_classes: int,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[Any, Any, Any]:
    """(graphdef, method, best state) of a finished run, laid out as its config builds it."""
    from mlb_jax.steps import create_train_state  # steps imports the methods that call us

    shapes = {m: tuple(s["shape"]) for m, s in resolved["data"]["modalities"].items()}
    graphdef, method, _, fresh = create_train_state(config, num_classes, shapes, mesh=mesh)
    ckpts = RunCheckpoints(workdir)
    try:
        return graphdef, method, ckpts.restore_best(fresh)
    finally:
        ckpts.close()


def modality_weights(
    workdir: paths.PathLike, modality: str, num_classes: int, where: str
) -> dict[str, np.ndarray]:
    """Best-checkpoint arrays of a unimodal run's encoder and head, by '/'-joined path.

    Covers the parameters and the other state (BatchNorm statistics) under
    `encoders/<modality>/` and `heads/<modality>/`, prefixed 'params/' or 'rest/'; not the
    dropout random streams (`.../rngs/...`, of the sequence encoders): the new run keeps
    its own.
    """
    config, resolved = run_config(workdir, where)
    check_unimodal_run(config, resolved, modality, num_classes, where)
    _, _, state = restore_best(config, resolved, workdir, num_classes)
    prefixes = (f"encoders/{modality}/", f"heads/{modality}/")
    out = {}
    for part in ("params", "rest"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(getattr(state, part))[0]:
            name = path_string(path)
            if name.startswith(prefixes) and "/rngs/" not in name:
                out[f"{part}/{name}"] = np.asarray(leaf)
    return out


def graft(tree: PyTree, part: str, weights: dict[str, np.ndarray], where: str) -> PyTree:
    """`tree` (params or rest) with every leaf named in `weights` replaced by its array.

    Raises:
      ValueError: a replaced leaf's shape differs (another model width or input shape).
    """

    def replace(path, leaf):
        name = f"{part}/{path_string(path)}"
        if name not in weights:
            return leaf
        new = weights[name]
        if new.shape != leaf.shape:
            raise ValueError(
                f"{where}: {name} has shape {new.shape} there and {leaf.shape} here: the "
                "unimodal run must use this run's model config (base_width, input shapes)"
            )
        return jax.numpy.asarray(new, leaf.dtype)

    return jax.tree_util.tree_map_with_path(replace, tree)
