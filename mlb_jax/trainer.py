"""The training loop: `train_and_evaluate(config, workdir)` owns a run from start to results.

Phases: config checks -> data -> mesh, model, method, optimiser and a trace of both steps ->
(only now, with nothing left to reject) run directory and config.json -> resume -> epochs
(train steps, validation evaluation, the method's end-of-epoch hook, best-on-validation
selection, checkpoint) -> best model: test metrics, linear probes, results.json, plots.
Each phase is a small function so that tests, notebooks and the comparison runner can call it.
"""

import copy
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from mlb_jax import conv_auto, paths, recipes
from mlb_jax.allocator import allocator_mode
from mlb_jax.checkpointing import RunCheckpoints
from mlb_jax.config_base import per_modality
from mlb_jax.data import augment, pipeline, schema, synthetic
from mlb_jax.diagnostics import cost_line, epoch_summary
from mlb_jax.methods import make_method
from mlb_jax.metrics import accuracy, expected_calibration_error
from mlb_jax.models import FUSIONS, conv_tune, resolve_conv
from mlb_jax.optim import make_optimizer
from mlb_jax.plots import plot_training
from mlb_jax.probe import linear_probe_accuracy
from mlb_jax.steps import (
    TrainState,
    abstract_batch,
    compiler_options,
    create_train_state,
    make_eval_step,
    make_train_step,
)
from mlb_jax.writers import MetricWriter

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
# Fields that may change between a run and its resumption: they do not affect the numbers.
RESUME_MAY_DIFFER = (
    "train.log_every",
    "train.eval_test_every_epoch",
    "train.cpu_scheduler",  # the order of operations: same bits, other memory and speed
    "progress",
    "data.cache_dir",
    "environment.",
    "resolved.recipe.",  # where each value came from; the values are compared in the config
    "evaluate.",  # what the end-of-run evaluation measures, not what training does
)
# Fields added after runs were written, with the value that reproduces those runs: a run
# without the field resumes when this config holds that value.
ADDED_FIELDS = {"model.conv_max_scratch": math.inf}
# config.json's key for what the built run uses (see `resolved_settings`).
RESOLVED_KEY = "resolved"
# config.json's key for where the run ran (informational: never compared on resume).
ENVIRONMENT_KEY = "environment"

__all__ = [
    "CONFIG_FILE",
    "RESULTS_FILE",
    "Run",
    "RunError",
    "check_run_config",
    "checkpoint_epoch",
    "close_epoch",
    "create_train_state",
    "early_stop_reason",
    "epoch_batches",
    "evaluate_outputs",
    "finish",
    "load_dataset",
    "log_step",
    "make_mesh",
    "map_split",
    "predict",
    "recorded_choices",
    "resolved_settings",
    "setup",
    "stored_conv",
    "train_and_evaluate",
    "validate_config",
    "write_json_atomic",
]


class RunError(RuntimeError):
    """A run cannot continue; the message names the cause and the fix."""


# ----------------------------------------------------------------------------- run directory


def write_json_atomic(path: paths.PathLike, obj: Any) -> None:
    """Writes JSON atomically (`paths.write_atomic`), so readers never see half a file."""
    paths.write_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _jsonable(value: Any) -> Any:
    """`value` as JSON data that is the same on every run (no addresses, no numpy types)."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray | np.generic | jax.Array):
        return np.asarray(value).tolist()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if callable(value):  # e.g. a mask function: its qualified name, never its address
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
    return str(value)


def resolved_settings(
    config: ml_collections.ConfigDict,
    meta: schema.DatasetMeta,
    method: Any,
    params: Any,
    conv: str | None = None,
) -> dict[str, Any]:
    """What a built run actually uses, beyond the raw config: recorded and compared on resume.

    Args:
      config: the experiment config.
      meta: the dataset.
      method: the built method (a frozen dataclass, `create_train_state`'s second result).
      params: the model's parameters (any pytree of arrays).
      conv: what the convolutions run (`Run.conv`); None: ``config.model.conv`` resolved
        without timing (`mlb_jax.models.conv.resolve`).

    Returns:
      JSON data: {'method': every field of the method dataclass (e.g. OGM-GE's alpha, read
      from config.method.ogm), 'model': {'conv', 'param_dtypes', 'num_params'}, 'data':
      {'name', 'num_classes', 'split_sizes', 'modalities': {m: {'kind', 'shape'}}}}.
    """
    leaves = jax.tree.leaves(params)
    return _jsonable(
        {
            "method": dataclasses.asdict(method),
            "model": {
                # The convolution algorithm changes the numbers: the choice and, for 'auto',
                # what it resolved to here (a resumed 'auto' run keeps it: `setup`).
                "conv": config.model.get("conv", "auto"),
                "conv_resolved": conv or resolve_conv(config.model.get("conv", "auto")),
                "param_dtypes": sorted({str(x.dtype) for x in leaves}),
                "num_params": int(sum(x.size for x in leaves)),
            },
            "data": {
                "name": meta.name,
                "num_classes": meta.num_classes,
                "split_sizes": dict(meta.split_sizes),
                "modalities": {
                    m: {"kind": spec.kind, "shape": list(spec.shape)}
                    for m, spec in meta.modalities.items()
                },
            },
        }
    )


def _environment(conv_timing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where this invocation runs (recorded for the reader, not compared on resume).

    `conv_timing` (`Run.conv_auto`: the step times behind ``model.conv='auto'``) is added
    under 'conv_auto' when given.
    """
    return ({"conv_auto": conv_timing} if conv_timing else {}) | {
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        # 'hugepages', 'reuse' (mlb_jax.allocator): how XLA's buffers are kept; same numbers.
        "malloc": allocator_mode(),
    }


def check_run_config(
    workdir: paths.PathLike,
    config: ml_collections.ConfigDict,
    resolved: dict[str, Any] | None = None,
    conv_timing: dict[str, Any] | None = None,
) -> None:
    """Writes config.json, or checks that an existing run's config matches this one.

    config.json holds the config, `resolved` under 'resolved' (what the built run uses, see
    `resolved_settings`) and the environment under 'environment'. On resume everything but
    `RESUME_MAY_DIFFER` must match (`conv_timing`, see `_environment`, is recorded only).
    When both files have a 'resolved' block, the method is
    compared through it (every field of the built method, wherever in config.method it was
    read from) and the raw config.method block only by name; runs written before 'resolved'
    existed compare the raw block, skipping other methods' sub-blocks.

    Call it only once everything that can reject the config has run (`setup`): config.json
    then never records a config that failed.

    Raises:
      RunError: the workdir holds a run with a different config (the differences are named).
    """
    workdir = paths.as_path(workdir)
    new_doc = json.loads(config.to_json())
    if resolved is not None:
        new_doc[RESOLVED_KEY] = json.loads(json.dumps(resolved))
    new_doc[ENVIRONMENT_KEY] = _environment(conv_timing)
    path = workdir / CONFIG_FILE
    if path.exists():
        old_doc = _read_config_json(path)
        old, new = _flatten(old_doc), _flatten(new_doc)
        if RESOLVED_KEY in old_doc and RESOLVED_KEY in new_doc:
            # The built method's fields say what the run uses; raw keys only add noise.
            def ignored(k: str) -> bool:
                return k.startswith("method.") and k != "method.name"
        else:
            # No record of the built method: other methods' blocks cannot change this run
            # (a method reading another's block, as OGM-GE reads method.ogm, is not seen).
            other = tuple(
                f"method.{k.split('.')[1]}."
                for k in new
                if k.count(".") >= 2 and k.split(".")[1] != config.method.name
            )

            def ignored(k: str) -> bool:
                return k.startswith(f"{RESOLVED_KEY}.") or (
                    k.startswith("method.") and k.startswith(other)
                )

        diffs = [
            f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)
            and not k.startswith(RESUME_MAY_DIFFER)
            and not ignored(k)
            and not (k not in old and k in ADDED_FIELDS and new.get(k) == ADDED_FIELDS[k])
        ]
        if diffs:
            raise RunError(
                f"{workdir} holds a run with a different config ({'; '.join(diffs[:5])}): "
                "use a new --workdir, or delete it to start over"
            )
    if jax.process_index() == 0:  # one writer: processes share the workdir
        workdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, new_doc)


def _read_config_json(path: epath.Path) -> dict[str, Any]:
    """A run's config.json; RunError naming the file and the fix when it is not JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunError(
            f"{path} is not a config.json ({error}): delete the run directory to start over, "
            "or use a new --workdir"
        ) from None


def stored_conv(
    workdir: paths.PathLike, config: ml_collections.ConfigDict
) -> tuple[str | None, dict[str, Any] | None]:
    """What a stored run's ``model.conv='auto'`` ran, so that resuming it runs the same.

    Returns:
      (conv, timing): config.json's ``resolved.model.conv_resolved`` (for runs recorded
      before it, 'auto' untimed: `mlb_jax.models.conv.resolve`) and ``environment.conv_auto``
      (None where missing) when `config` and the run in `workdir` both ask for 'auto';
      (None, None) otherwise.
    """
    path = paths.as_path(workdir) / CONFIG_FILE
    if config.model.get("conv", "auto") != "auto" or not path.exists():
        return None, None
    doc = _read_config_json(path)
    if doc.get("model", {}).get("conv", "auto") != "auto":
        return None, None
    conv = doc.get(RESOLVED_KEY, {}).get("model", {}).get("conv_resolved")
    return conv or resolve_conv("auto"), doc.get(ENVIRONMENT_KEY, {}).get("conv_auto")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Fails fast, before any data is read, on a bad method, fusion, optimiser or train field.

    Raises:
      ValueError: naming the config field and the fix.
    """
    make_method(config.method)
    augment.check_config(config.data.get("augment"))  # absent: no augmentation, stored size
    if config.model.fusion not in FUSIONS:
        raise ValueError(
            f"unknown fusion {config.model.fusion!r} (config.model.fusion); "
            f"choose one of {sorted(FUSIONS)}"
        )
    train = config.train
    for field, minimum in (
        ("epochs", 1),
        ("batch_size", 1),
        ("eval_batch_size", 1),
        ("log_every", 1),
        ("keep_checkpoints", 1),
        ("num_devices", 0),
        ("early_stopping_patience", 0),
        ("checkpoint_every", 1),
    ):
        value = train.get(field, minimum)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"config.train.{field} must be an integer >= {minimum}, got {value!r}")
    for field in ("eval_test_every_epoch", "keep_last_batch", "diagnostics"):
        if not isinstance(train.get(field, False), bool):
            raise ValueError(f"config.train.{field} must be True or False, got {train[field]!r}")
    make_optimizer(train, 1, None)
    compiler_options(config)
    from mlb_jax.evaluate import EvalSettings  # evaluate imports this module

    EvalSettings.from_config(config)


# ----------------------------------------------------------------------------- data


def load_dataset(config: ml_collections.ConfigDict) -> schema.DatasetMeta:
    """The dataset of `config.data`: the embedded synthetic one, or a converted directory.

    Sequence modalities are delivered at ``config.data.sequence_length`` /
    ``sequence_fit`` (`sequence_fits`).
    """
    # An empty model.modalities reads them all (`modalities_from_dataset` then fills them).
    modalities = list(config.model.modalities) or None
    if config.data.name == "synthetic_av":
        knobs = config.data.synthetic.to_dict()
        data_dir = synthetic.ensure_synthetic(config.data.cache_dir, **knobs)
        meta = schema.load_meta(data_dir, modalities)
    elif not config.data.dir:
        raise schema.DataError(
            "config.data.dir is empty: pass --config.data.dir=<converted dataset directory>"
        )
    else:
        meta = schema.load_meta(config.data.dir, modalities)
    return meta.with_sequence_fits(sequence_fits(config.data, meta))


# Sequence encoder picked for a width D when config.model.encoders leaves it to the data: the
# Conformer for wide pretrained embeddings (Wav2Vec2 768, EfficientNet-B2 1408, the paper's
# Section 4.2), the cheaper temporal convolution for narrow signals (MFCCs, joints, IMU).
CONFORMER_MIN_WIDTH = 64
# Encoder kinds (config.model.modalities.<m>.kind) that can read each stored kind.
ENCODERS_FOR = {"spectrogram": ("audio",), "frames": ("video",), "sequence": ("conformer", "tcn")}


def modalities_from_dataset(
    config: ml_collections.ConfigDict, meta: schema.DatasetMeta
) -> ml_collections.ConfigDict:
    """Fills an empty ``config.model.modalities`` from the dataset's modalities.

    Each modality (in the dataset's order, by name) gets the encoder of its kind: a
    spectrogram the audio ResNet-18 (1 channel), frames the video ResNet-18 with the frames'
    channel count, a sequence of width D the Conformer if D >= `CONFORMER_MIN_WIDTH` else the
    temporal convolution (`in_features` D); ``config.model.encoders`` (``'mfcc=conformer'``)
    overrides the choice per modality. A config that lists its modalities is returned as is.

    Returns:
        A copy of ``config`` with ``model.modalities`` filled (what config.json records).

    Raises:
        ValueError: naming ``config.model.encoders``, for an unknown modality or an encoder
            that cannot read the modality's kind.
    """
    if len(config.model.modalities):
        return config
    names = list(meta.modalities)
    chosen = per_modality(config.model.get("encoders", ""), names, "config.model.encoders")
    modalities = {}
    for name, spec in meta.modalities.items():
        allowed = ENCODERS_FOR[spec.kind]
        if spec.kind == "sequence":
            default = "conformer" if spec.shape[1] >= CONFORMER_MIN_WIDTH else "tcn"
        else:
            default = allowed[0]
        kind = chosen.get(name, default)
        if kind not in allowed:
            raise ValueError(
                f"config.model.encoders: {name!r} is a {spec.kind} modality, which encoder "
                f"{kind!r} cannot read: choose one of {list(allowed)}"
            )
        if spec.kind == "sequence":
            modalities[name] = {"kind": kind, "in_features": spec.shape[1]}
        else:
            channels = 1 if spec.kind == "spectrogram" else spec.shape[-1]
            modalities[name] = {"kind": kind, "in_channels": channels}
    filled = copy.deepcopy(config)
    with filled.unlocked():
        filled.model.modalities = modalities
    if jax.process_index() == 0:
        listed = ", ".join(f"{m}: {e['kind']}" for m, e in modalities.items())
        print(f"encoders from the dataset's modalities: {listed}", flush=True)
    return filled


def sequence_fits(
    data_config: ml_collections.ConfigDict, meta: schema.DatasetMeta
) -> dict[str, schema.SequenceFit]:
    """Each sequence modality's `SequenceFit` from ``data.sequence_length`` / ``sequence_fit``.

    Raises:
        ValueError: naming the field, for a non-sequence modality, a length that is not a
            positive integer, or an unknown fit.
    """
    names = sorted(meta.sequence_fits)
    field = "config.data.sequence_length"
    lengths = per_modality(data_config.get("sequence_length", ""), names, field)
    field = "config.data.sequence_fit"
    fits = per_modality(data_config.get("sequence_fit", "head"), names, field)
    out = {}
    for name in names:
        length = lengths.get(name, str(meta.sequence_fits[name].length))
        if not length.isdigit() or int(length) < 1:
            raise ValueError(
                f"config.data.sequence_length: {name!r} gets {length!r}, not a positive integer"
            )
        try:
            out[name] = schema.SequenceFit(int(length), fits.get(name, "head"))
        except schema.DataError as e:
            raise ValueError(f"config.data.sequence_fit: {name!r}: {e}") from e
    return out


# ----------------------------------------------------------------------------- mesh


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
    """A 1-D ('data',) mesh over the first `num_devices` devices (0 = all)."""
    devices = jax.devices()
    n = len(devices) if num_devices in (0, None) else num_devices
    if n > len(devices):
        raise RunError(f"config.train.num_devices={n} but only {len(devices)} devices exist")
    return jax.make_mesh(
        (n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices[:n]
    )


# ----------------------------------------------------------------------------- set-up


@dataclasses.dataclass
class Run:
    """The static parts of a run and its jitted steps.

    Attributes:
      config: the experiment config.
      meta: the dataset.
      mesh: the 1-D ('data',) mesh.
      graphdef: the model's graph definition.
      method: the built method (a frozen dataclass).
      train_step: jitted `(state, global batch) -> (state, metrics)`; donates the state.
      eval_step: jitted `(state, global batch) -> outputs`.
      steps_per_epoch: training batches per epoch.
      modalities: modality names, in config order.
      conv: what the encoders' convolutions run ('plan', 'xla' or 'tuned'), which
        ``config.model.conv`` resolved to.
      conv_auto: for ``model.conv='auto'`` timed on the CPU, the step times and the choice
        (`mlb_jax.conv_auto.record`); None otherwise.
    """

    config: ml_collections.ConfigDict
    meta: schema.DatasetMeta
    mesh: jax.sharding.Mesh
    graphdef: Any
    method: Any
    train_step: Any
    eval_step: Any
    steps_per_epoch: int
    modalities: list[str]
    conv: str
    conv_auto: dict[str, Any] | None = None


def _check_batch_size(field: str, batch: int, devices: int) -> None:
    """A global batch must split over the devices and over the processes."""
    processes = jax.process_count()
    if batch % devices or batch % processes:
        raise RunError(
            f"config.train.{field}={batch} is not divisible by the {devices} devices "
            f"(and {processes} processes): choose a multiple"
        )


def setup(
    config: ml_collections.ConfigDict,
    meta: schema.DatasetMeta,
    *,
    workdir: paths.PathLike | None = None,
) -> tuple[Run, TrainState]:
    """Builds and checks everything a run needs from its config and dataset; writes no run.

    The mesh, the batch sizes against it, the splits the run and its method read, the model,
    method and optimiser (`create_train_state`), then a trace of the train and eval steps on
    abstract batches: every check that can reject the config runs here, so a caller can write
    config.json afterwards knowing it records a config that starts. The traces are jit's own
    (`.trace`), reused by the first real call.

    ``config.model.conv='auto'`` on one CPU process takes whichever train step, the
    convolution plan's, the wide plan's or XLA's, this machine ran fastest (`mlb_jax.conv_auto`):
    read from the cache of step times, or timed now (each step set up and run
    ``1 + conv_auto.REPS`` times on a batch of zeros; the winner's compiled step is the run's)
    and cached. Models without
    a ResNet encoder (the only users of ``model.conv``) take the plan without timing.

    Args:
      config: the experiment config.
      meta: the dataset.
      workdir: the run's directory. When it holds a run that asked for 'auto' too, that
        run's choice and times are kept (`stored_conv`), so that resuming it computes the
        same numbers whatever this machine's cache now says.

    Returns:
      (run, state): the run and a fresh train state, replicated over the mesh.

    Raises:
      RunError, DataError, ValueError: naming the config field or split and the fix.
    """
    config = modalities_from_dataset(config, meta)  # an empty model.modalities: from the data
    conv, timing = stored_conv(workdir, config) if workdir is not None else (None, None)
    if conv is not None:
        run, state = _setup(config, meta, conv)
        return dataclasses.replace(run, conv_auto=timing), state
    choice = config.model.get("conv", "auto")
    if conv_auto.applies(choice):
        return _setup_timed(config, meta)
    return _setup(config, meta, resolve_conv(choice))


def _setup_timed(config: ml_collections.ConfigDict, meta: schema.DatasetMeta):
    """`setup` for ``model.conv='auto'`` on the CPU: the cached or measured faster step."""
    key = conv_auto.step_key(config, _input_shapes(config, meta))
    times = conv_auto.lookup(key)
    if times is not None:
        run, state = _setup(config, meta, conv_auto.choose(times))
        entry = conv_auto.record(times, measured=False)
    else:
        first = conv_auto.CANDIDATES[0]
        built = {first: _setup(config, meta, first)}
        if not _has_resnet(built[first][1].params):
            return built[first]  # no convolution to choose: the steps would be the same
        print(
            "model.conv=auto: timing the train step under the CPU plan, the wide plan and "
            "XLA's convolutions, once for this machine and step (cache "
            f"{conv_auto.cache_path()})",
            flush=True,
        )
        for candidate in conv_auto.CANDIDATES[1:]:
            built[candidate] = _setup(config, meta, candidate)
        times = conv_auto.time_steps({c: _step_timer(*built[c]) for c in built})
        conv_auto.store(key, times)
        entry = conv_auto.record(times, measured=True)
        run, state = built[entry["chosen"]]
    print(conv_auto.summary(entry), flush=True)  # one process (`conv_auto.applies`)
    return dataclasses.replace(run, conv_auto=entry), state


def _has_resnet(params: Any) -> bool:
    """Whether the model has a ResNet encoder (its layers sit under a 'resnet' node)."""
    paths_ = jax.tree_util.tree_flatten_with_path(params)[0]
    return any(getattr(k, "key", None) == "resnet" for path, _ in paths_ for k in path)


def _step_timer(run: Run, state: TrainState):
    """A call that runs one train step of `run` on a copy of `state` and returns its seconds.

    The batch is zeros (every example kept): a step's time barely depends on the values.
    """
    batch = jax.tree.map(
        lambda s: (jnp.ones if s.dtype == jnp.bool_ else jnp.zeros)(
            s.shape, s.dtype, device=s.sharding
        ),
        _batch_spec(run.config, run.meta, run.mesh, run.config.train.batch_size),
    )

    def step() -> float:
        fresh = jax.block_until_ready(jax.tree.map(jnp.copy, state))  # the step donates it
        start = time.perf_counter()
        jax.block_until_ready(run.train_step(fresh, batch))
        return time.perf_counter() - start

    return step


def _batch_spec(
    config: ml_collections.ConfigDict,
    meta: schema.DatasetMeta,
    mesh: jax.sharding.Mesh,
    batch_size: int,
    *,
    with_index: bool = False,
) -> dict[str, Any]:
    """The abstract global batch of `meta`'s modalities (`abstract_batch`), sharded on `mesh`."""
    return abstract_batch(
        _input_shapes(config, meta),
        batch_size,
        mesh=mesh,
        with_index=with_index,
        lengths=pipeline.length_keys(meta),
    )


def _input_shapes(config: ml_collections.ConfigDict, meta: schema.DatasetMeta) -> dict:
    """Modality -> one example's shape as the step sees it (frames at the augment size)."""
    frame_size, _ = augment.from_config(config.data.get("augment"))
    return pipeline.input_shapes(meta, frame_size)


def _setup(
    config: ml_collections.ConfigDict, meta: schema.DatasetMeta, conv: str
) -> tuple[Run, TrainState]:
    """`setup` with the encoders' convolutions built as `conv` ('plan', 'xla' or 'tuned')."""
    built = copy.deepcopy(config)  # what the model and the compiler options read
    with built.unlocked():
        built.model.conv = conv
    mesh = make_mesh(config.train.get("num_devices", 0))
    devices = mesh.shape["data"]
    batch = config.train.batch_size
    _check_batch_size("batch_size", batch, devices)
    _check_batch_size("eval_batch_size", config.train.eval_batch_size, devices)
    steps_per_epoch = pipeline.batches_per_epoch(
        meta, config.data.train_split, batch, _keep_partial(config, mesh)
    )
    if steps_per_epoch < 1:
        raise RunError(
            f"config.train.batch_size={batch} exceeds the "
            f"{meta.split_sizes[config.data.train_split]} training "
            "examples: use a smaller batch"
        )
    for field in ("val_split", "test_split"):
        if config.data[field] not in meta.split_sizes:
            raise RunError(
                f"config.data.{field}={config.data[field]!r}: {meta.name} has no such split "
                f"(it has {sorted(meta.split_sizes)})"
            )
    graphdef, method, tx, state = create_train_state(
        built,
        meta.num_classes,
        _input_shapes(config, meta),
        steps_per_epoch=steps_per_epoch,
        mesh=mesh,
    )
    # The pipeline decodes only what the model reads (one modality for method 'unimodal').
    modalities = method.used_modalities(list(config.model.modalities))
    meta = dataclasses.replace(meta, modalities={m: meta.modalities[m] for m in modalities})
    params, rest = method.warm_start(state.params, state.rest, meta.num_classes)
    if params is not state.params or rest is not state.rest:  # e.g. pretrained encoders
        replicated = jax.NamedSharding(mesh, jax.P())
        state = state._replace(
            params=jax.device_put(params, replicated),
            rest=jax.device_put(rest, replicated),
            opt_state=jax.device_put(tx.init(params), replicated),
        )
    # A method's end-of-epoch hook may read a split of its own (MSLR, PMR): check it now.
    method_split = getattr(method, "split", None)
    if isinstance(method_split, str) and method_split not in meta.split_sizes:
        raise RunError(
            f"method {method.name!r} reads split {method_split!r} (config.method.*.split), "
            f"which {meta.name} lacks: choose one of {sorted(meta.split_sizes)}"
        )
    diagnostics = config.train.get("diagnostics", False)
    options = compiler_options(built)
    train_step = jax.jit(
        make_train_step(graphdef, method, tx, diagnostics=diagnostics),
        donate_argnums=0,
        compiler_options=options,
    )
    eval_step = jax.jit(make_eval_step(graphdef, method), compiler_options=options)
    # Trace-time checks (e.g. a method that needs another fusion) fail here, not mid-run.
    train_step.trace(state, _batch_spec(config, meta, mesh, batch))
    eval_step.trace(
        state, _batch_spec(config, meta, mesh, config.train.eval_batch_size, with_index=True)
    )
    run = Run(
        config,
        meta,
        mesh,
        graphdef,
        method,
        train_step,
        eval_step,
        steps_per_epoch,
        modalities,
        conv,
    )
    return run, state


# ----------------------------------------------------------------------------- evaluation


def predict(
    run: Run, state: TrainState, split: str, indices: np.ndarray | None = None
) -> dict[str, Any]:
    """Eval-mode outputs for every example of `split` (or of `indices`), gathered on the host.

    Outputs stay on the devices until the split is done, then are gathered (from every process)
    in one transfer and put in the split's stored order.

    Args:
      run: the run.
      state: the state to evaluate.
      split: split name.
      indices: optional strictly increasing positions in the split's stored order; only those
        examples are read and predicted.

    Returns:
      {'labels': [N], 'logits': [N, K], 'unimodal_logits': {m: [N, K]}, 'features': {m: [N, D]}}
      in the split's stored order (N = split size, or len(indices) in their order).
    """
    return map_split(run, state, split, run.eval_step, indices)


def map_split(
    run: Run, state: TrainState, split: str, step: Any, indices: np.ndarray | None = None
) -> dict[str, Any]:
    """`step` over every evaluation batch of `split`, its outputs gathered on the host.

    Args:
      run: the run (its data pipeline settings and mesh).
      state: the state passed to `step`.
      split: split name.
      step: jitted `(state, global batch) -> pytree of [B, ...] arrays` (e.g. `run.eval_step`).
      indices: optional strictly increasing positions in the split's stored order.

    Returns:
      `step`'s outputs, each [N, ...], plus 'labels' [N], in the split's stored order with
      the padding rows dropped.
    """
    cfg = run.config
    chunks = []
    for batch in pipeline.eval_batches(
        run.meta,
        split,
        global_batch_size=cfg.train.eval_batch_size,
        indices=indices,
        cache=cfg.data.cache,
        frame_size=augment.from_config(cfg.data.get("augment"))[0],  # resize, never augment
    ):
        global_batch = pipeline.to_global(batch, run.mesh)
        out = step(state, global_batch)
        chunks.append((out, global_batch["mask"], global_batch["label"], global_batch["index"]))
    # The whole split on every process (with several, outputs span all of them).
    chunks = multihost_utils.process_allgather(chunks, tiled=True)
    host = []
    for out, mask, labels, index in chunks:
        host.append(
            jax.tree.map(lambda x, mask=mask: np.asarray(x)[mask], out)
            | {"labels": np.asarray(labels)[mask], "index": np.asarray(index)[mask]}
        )
    outputs = jax.tree.map(lambda *xs: np.concatenate(xs), *host)
    # Several processes interleave their parts batch by batch: restore the stored order.
    order = np.argsort(outputs.pop("index"), kind="stable")
    return jax.tree.map(lambda x: x[order], outputs)


def evaluate_outputs(outputs: dict[str, Any], prefix: str) -> dict[str, float]:
    """Fused and unimodal accuracy and ECE of `predict` outputs, keys prefixed by split."""
    labels = outputs["labels"]
    metrics = {
        f"{prefix}/accuracy": accuracy(outputs["logits"], labels),
        f"{prefix}/ece": expected_calibration_error(outputs["logits"], labels),
    }
    for name, logits in outputs["unimodal_logits"].items():
        metrics[f"{prefix}/accuracy/{name}"] = accuracy(logits, labels)
    return metrics


# ----------------------------------------------------------------------------- training


def epoch_batches(run: Run, epoch: int, start_batch: int = 0) -> Iterator[dict]:
    """This process's training batches of `epoch` (numpy, local), from batch `start_batch` on.

    Feed each through `pipeline.to_global(batch, run.mesh)` into `run.train_step`.
    """
    cfg = run.config
    frame_size, frame_augment = augment.from_config(cfg.data.get("augment"))
    return pipeline.train_batches(
        run.meta,
        cfg.data.train_split,
        global_batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        epoch=epoch,
        start_batch=start_batch,
        cache=cfg.data.cache,
        frame_size=frame_size,
        augment=frame_augment,
        keep_partial=_keep_partial(cfg, run.mesh),
    )


def _keep_partial(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
    """`train_batches`' keep_partial: the device count if config.train.keep_last_batch, else 0.

    The reference's loaders keep the last, smaller training batch; kept here, it holds the
    largest multiple of the device count of the examples left (all of them on one device).
    """
    return mesh.shape["data"] if config.train.get("keep_last_batch", False) else 0


def _summary_line(epoch: int, total: int, record: dict, modalities: list[str]) -> str:
    parts = [f"epoch {epoch + 1:3d}/{total}", f"loss {record['train/loss']:.4f}"]
    parts.append(f"val {100 * record['val/accuracy']:.1f}")
    if "test/accuracy" in record:  # config.train.eval_test_every_epoch
        parts.append(f"test {100 * record['test/accuracy']:.1f}")
    parts.append(
        "unimodal val "
        + " ".join(f"{m} {100 * record[f'val/accuracy/{m}']:.1f}" for m in modalities)
    )
    ks = [f"{m} {record[f'train/k/{m}']:.2f}" for m in modalities if f"train/k/{m}" in record]
    if ks:
        parts.append("k " + " ".join(ks))
    diagnosed = epoch_summary(record, modalities)  # config.train.diagnostics
    if diagnosed:
        parts.append(diagnosed)
    parts.append(f"{record['epoch_seconds']:.1f}s")
    return " | ".join(parts)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> dict:
    """Trains, evaluates and writes results for one run; resumes if `workdir` holds one.

    Nothing is written to `workdir` (not even the directory) until the config, the data and
    the whole set-up (model, method, optimiser, mesh, a trace of both steps) have been checked.

    Args:
      config: the full experiment config (see configs/).
      workdir: run directory; created if needed.

    Returns:
      The results dict also written to `<workdir>/results.json`.

    Raises:
      RunError, DataError, ValueError: bad input, each with one clear message.
    """
    started = time.time()
    config, recipe = recipes.resolve(config)  # the reference recipe fills the unset fields
    if recipe and jax.process_index() == 0:
        print(recipes.summary(config.recipe, config.method.name, recipe), flush=True)
    validate_config(config)
    workdir = paths.as_path(workdir)
    meta = load_dataset(config)
    config = modalities_from_dataset(config, meta)
    if not make_method(config.method).trains:  # the ensemble of finished unimodal runs
        from mlb_jax.ensemble import evaluate_ensemble

        return evaluate_ensemble(config, meta, workdir, started)
    run, state = setup(config, meta, workdir=workdir)  # a resumed 'auto' run keeps its choice
    if config.train.get("diagnostics", False) and jax.process_index() == 0:
        print(cost_line(len(run.modalities)), flush=True)
    resolved = resolved_settings(config, run.meta, run.method, state.params, run.conv)
    if recipe:  # each recipe field's value and source, in config.json
        resolved["recipe"] = recipe
    check_run_config(workdir, config, resolved, run.conv_auto)
    workdir.mkdir(parents=True, exist_ok=True)  # every process (process 0 made it above)
    ckpts = RunCheckpoints(workdir, keep=config.train.get("keep_checkpoints", 2))
    writer = MetricWriter(workdir / "tensorboard")
    history: dict[str, Any] = {"epochs": [], "steps": [], "best": None}
    if ckpts.latest_step() is not None:
        state, history = ckpts.restore(state)
        print(f"resumed {workdir} at step {int(state.step)} (epoch {len(history['epochs'])})")
    show = config.get("progress", True) and jax.process_index() == 0
    timing: dict[str, float] = {}
    try:
        pending_best = None
        for epoch in range(len(history["epochs"]), config.train.epochs):
            # Checked before each epoch from the history alone, so a resumed run keeps its count.
            if early_stop_reason(history, config.train):
                break
            state, history = _train_epoch(run, state, history, epoch, writer, show, timing)
            pending_best = checkpoint_epoch(ckpts, config, state, history, pending_best)
        reason = early_stop_reason(history, config.train)
        if reason and jax.process_index() == 0:
            print(f"{reason}: restoring the best checkpoint", flush=True)
        results = finish(run, ckpts, state, history, workdir, started, timing)
    finally:
        writer.close()
        ckpts.close()
    return results


def checkpoint_epoch(
    ckpts: RunCheckpoints,
    config: ml_collections.ConfigDict,
    state: TrainState,
    history: dict,
    pending_best: tuple[int, TrainState] | None,
) -> tuple[int, TrainState] | None:
    """Checkpoints the epoch just recorded in `history`, when it is due.

    The latest (and, if it improved, the best) checkpoint is written every
    `train.checkpoint_every` epochs and at the end (last epoch or early stop): each save waits
    for the disk, about a second even for a tiny model. A best epoch between saves is kept
    as a device copy until the next save.

    Args:
      ckpts: the run's checkpoints.
      config: the run's config.
      state: the state after the epoch (the next train step donates it: it is copied).
      history: the run's history, this epoch last.
      pending_best: the best state not yet saved, (step, state), or None.

    Returns:
      The new `pending_best`.
    """
    epoch = history["epochs"][-1]["epoch"]
    step = history["epochs"][-1]["step"]
    if history["best"]["epoch"] == epoch:
        pending_best = (step, jax.tree.map(jnp.copy, state))
    last = epoch + 1 == config.train.epochs or early_stop_reason(history, config.train)
    if (epoch + 1) % config.train.get("checkpoint_every", 1) == 0 or last:
        # Best first: once the latest checkpoint names epoch e as best, its weights are on
        # disk; a kill in between only repeats the epochs since the previous checkpoint,
        # which re-save it.
        if pending_best is not None:
            ckpts.save_best(*pending_best)
            pending_best = None
        ckpts.save(step, state, history)
    return pending_best


def early_stop_reason(history: dict, train_config: ml_collections.ConfigDict) -> str | None:
    """Why training stops before `train.epochs`, or None to go on (or: it ran them all).

    It stops once `train.early_stopping_patience` epochs in a row brought no better fused
    validation accuracy (strictly higher: the rule that selects the best checkpoint), as the
    reference stops after `n_steps_stop` validations without improvement (docs/REPRODUCING.md).
    The count comes from the history alone, so a resumed run keeps it.

    Args:
      history: the run's history ('epochs' records, 'best' record or None).
      train_config: `config.train` (`epochs`, `early_stopping_patience`: 0 = never early).

    Returns:
      One line naming the epochs and the patience, or None.
    """
    patience = train_config.get("early_stopping_patience", 0)
    done = len(history["epochs"])
    if patience <= 0 or history["best"] is None or done >= train_config.epochs:
        return None
    best = history["best"]
    since = done - 1 - best["epoch"]
    if since < patience:
        return None
    return (
        f"early stopping after epoch {done}: validation accuracy has not improved for "
        f"{since} epochs (patience {patience}) since epoch {best['epoch'] + 1} "
        f"({100 * best['val/accuracy']:.1f})"
    )


def _train_epoch(
    run: Run,
    state: TrainState,
    history: dict,
    epoch: int,
    writer: MetricWriter,
    show: bool,
    timing: dict[str, float],
) -> tuple[TrainState, dict]:
    """One epoch: train steps, validation (and test if asked), the method's hook, bookkeeping.

    The host never waits for a step except to log (every `log_every` steps and the first of
    the epoch), to time the process's first step once, and at the epoch's end: steps are
    counted on the host and metrics stay on the devices until then.
    """
    cfg = run.config
    log_every = cfg.train.log_every
    start = time.time()
    step = int(state.step)  # one read per epoch: the previous epoch has finished anyway
    step_metrics: list[dict[str, jax.Array]] = []
    bar = tqdm(
        epoch_batches(run, epoch),
        total=run.steps_per_epoch,
        desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
        disable=not show,
        leave=False,
    )
    for batch in bar:
        step_start = time.time()
        state, metrics = run.train_step(state, pipeline.to_global(batch, run.mesh))
        step += 1
        if not timing:
            # The process's first step compiles the step (or loads it from the persistent
            # compilation cache) before running it; wait for it once to time that.
            jax.block_until_ready(metrics)
            timing["first_step_seconds"] = time.time() - step_start
            if show:
                tqdm.write(
                    f"first train step (incl. compilation): {timing['first_step_seconds']:.1f}s"
                )
        if step % log_every == 0 or not step_metrics:
            host = jax.device_get(metrics)
            log_step(history, writer, step, epoch, host)
            bar.set_postfix(loss=f"{float(host['loss']):.3f}")
        step_metrics.append(metrics)
    # Scalars of every step, fetched in one transfer; the mean is taken on the host.
    fetched = jax.device_get(step_metrics)
    return close_epoch(run, state, history, epoch, step, fetched, writer, start)


def log_step(history: dict, writer: MetricWriter, step: int, epoch: int, metrics: dict) -> None:
    """Records one logged train step (history['steps'], TensorBoard); stops on a NaN loss."""
    host = {k: float(v) for k, v in metrics.items()}
    _check_finite(host["loss"], step, epoch, history)
    history["steps"].append({"step": step, **{f"train/{k}": v for k, v in host.items()}})
    writer.scalars(step, {f"train/{k}": v for k, v in host.items()})


def close_epoch(
    run: Run,
    state: TrainState,
    history: dict,
    epoch: int,
    step: int,
    fetched: list[dict],
    writer: MetricWriter,
    start: float,
) -> tuple[TrainState, dict]:
    """The end of an epoch: train means, validation (and test if asked), the method's hook.

    Args:
      run: the run.
      state: the state after the epoch's last train step.
      history: the run's history; the epoch's record is appended, 'best' updated.
      epoch: the epoch index.
      step: the step count after the epoch (checked against `state.step`).
      fetched: every train step's metrics of the epoch (host scalars), in order.
      writer: the run's TensorBoard writer.
      start: when the epoch began (time.time()).

    Returns:
      (state with the method's new per-epoch state, history).
    """
    cfg = run.config
    train_means = {
        f"train/{k}": float(np.mean([m[k] for m in fetched], dtype=np.float64)) for k in fetched[0]
    }
    _check_finite(train_means["train/loss"], step, epoch, history)
    if int(state.step) != step:
        raise RunError(f"step counter out of sync: host {step}, device {int(state.step)}")
    record = {"epoch": epoch, "step": step, **train_means}
    splits = {"val": cfg.data.val_split}
    if cfg.train.get("eval_test_every_epoch", False):
        splits["test"] = cfg.data.test_split
    context = _EpochContext(run, state, epoch)
    for prefix, split in splits.items():
        record |= evaluate_outputs(context.predict(split), prefix)
    new_method_state = run.method.end_of_epoch(jax.device_get(state.method_state), context)
    state = state._replace(
        method_state=jax.device_put(new_method_state, jax.NamedSharding(run.mesh, jax.P()))
    )
    record["epoch_seconds"] = time.time() - start
    writer.scalars(step, {k: v for k, v in record.items() if "/" in k})
    history["epochs"].append(record)
    best = history["best"]
    if best is None or record["val/accuracy"] > best["val/accuracy"]:
        history["best"] = {"epoch": epoch, "step": step, **record}
    if jax.process_index() == 0:
        print(_summary_line(epoch, cfg.train.epochs, record, run.modalities), flush=True)
    return state, history


@dataclasses.dataclass
class _EpochContext:
    """What a method's `end_of_epoch` may use (see `mlb_jax.methods.base.EpochContext`).

    Predictions of the epoch's final state are computed once per split: the trainer's own
    validation pass and a method's hook (MSLR reads the same split) share them.
    """

    run: Run
    state: TrainState
    epoch: int
    cache: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def split_size(self, split: str) -> int:
        """Number of examples of `split` (the range of `predict`'s `indices`)."""
        return pipeline.split_size(self.run.meta, split)

    def predict(self, split: str, indices: np.ndarray | None = None) -> dict[str, Any]:
        """Eval-mode outputs of `split` (see `predict`), or of its examples at `indices`.

        Args:
          split: split name.
          indices: optional strictly increasing int positions in the split's stored order.

        Returns:
          {'labels': [N], 'logits': [N, K], 'unimodal_logits': {m: [N, K]},
          'features': {m: [N, D]}}, N = split size or len(indices), in that order.
        """
        if split in self.cache:
            out = self.cache[split]
            if indices is None:
                return out
            # Checked as the pipeline checks them, so both paths reject the same input.
            indices = pipeline.check_indices(indices, len(out["labels"]), split)
            return jax.tree.map(lambda x: x[indices], out)
        if indices is not None:
            return predict(self.run, self.state, split, indices)
        self.cache[split] = predict(self.run, self.state, split)
        return self.cache[split]

    def model(self) -> Any:
        return nnx.merge(self.run.graphdef, self.state.params, self.state.rest)


def _check_finite(loss: float, step: int, epoch: int, history: dict) -> None:
    if not math.isfinite(loss):
        last = history["epochs"][-1]["step"] if history["epochs"] else None
        kept = f"the last good checkpoint (step {last}) is kept" if last else "nothing was saved"
        raise RunError(
            f"training loss is {loss} at step {step} (epoch {epoch + 1}); {kept}. "
            "Lower config.train.lr or check the data"
        )


# ----------------------------------------------------------------------------- results


def recorded_choices(config: ml_collections.ConfigDict, run: Run | None = None) -> dict[str, Any]:
    """The config's choices that change the numbers, as results.json records them.

    Args:
      config: the experiment config.
      run: the run that trained (`Run.conv`, `Run.conv_auto`); None: ``config.model.conv``
        resolved without timing.

    Returns:
      {'conv': the convolution choice, 'conv_resolved': what ran (tuned | plan | xla),
      'conv_auto': for 'auto' timed on the CPU, the step times and the choice
      (`mlb_jax.conv_auto.record`), else None,
      'conv_plan': for 'tuned', [{'layer', 'forward', 'input_grad', 'kernel_grad',
      'max_scratch'}] of every layer this process planned (else []), 'augment':
      the training-frame augmentation block (None: off), 'recipe': the reference recipe's
      dataset ('' : none; its values and sources are in config.json's resolved.recipe)}.
    """
    resolved = run.conv if run else resolve_conv(config.model.get("conv", "auto"))
    return {
        "conv": config.model.get("conv", "auto"),
        "conv_resolved": resolved,
        "conv_auto": run.conv_auto if run else None,
        # 'tuned': each convolution layer's measured algorithms on this machine.
        "conv_plan": conv_tune.decisions() if resolved == "tuned" else [],
        "augment": _jsonable(config.data.get("augment")),
        "recipe": config.get("recipe", ""),
    }


def finish(
    run: Run,
    ckpts: RunCheckpoints,
    state,
    history: dict,
    workdir: epath.Path,
    started: float,
    timing: dict[str, float] | None = None,
) -> dict:
    """Best-on-validation model: test metrics, probes, results.json and plots.

    The test split is predicted here once, for the selected state (per epoch only with
    config.train.eval_test_every_epoch), and the training split once, for the probes.

    `started` is when this invocation began (time.time()); results record its wall time.
    `timing` may hold `first_step_seconds` (compilation + one step, this invocation).
    """
    cfg = run.config
    best_state = ckpts.restore_best(state)
    test = predict(run, best_state, cfg.data.test_split)
    train = predict(run, best_state, cfg.data.train_split)
    test_metrics = evaluate_outputs(test, "test")
    probe = {
        m: linear_probe_accuracy(
            train["features"][m],
            train["labels"],
            test["features"][m],
            test["labels"],
            run.meta.num_classes,
            steps=cfg.probe.steps,
            lr=cfg.probe.lr,
        )
        for m in run.modalities
    }
    best = history["best"]
    results = {
        "accuracy": test_metrics["test/accuracy"],
        "unimodal_accuracy": {m: test_metrics[f"test/accuracy/{m}"] for m in run.modalities},
        "probe_accuracy": probe,
        "ece": test_metrics["test/ece"],
        "val_accuracy": best["val/accuracy"],
        "best_epoch": best["epoch"] + 1,
        "method": cfg.method.name,
        "seed": cfg.seed,
        "steps": int(state.step),
        "epochs": len(history["epochs"]),
        # Why training ended before config.train.epochs (None: it ran them all).
        "early_stopped": early_stop_reason(history, cfg.train),
        "dataset": run.meta.name,
        "num_test_examples": len(test["labels"]),
        "train_seconds": float(sum(e["epoch_seconds"] for e in history["epochs"])),
        "wall_seconds": time.time() - started,  # this invocation only (a resume restarts it)
        "first_step_seconds": (timing or {}).get("first_step_seconds"),  # None: no step ran
        **recorded_choices(cfg, run),
    }
    if jax.process_index() == 0:
        write_json_atomic(workdir / RESULTS_FILE, results)
        plot_training(
            [
                {"step": s["step"], **{k[6:]: v for k, v in s.items() if k.startswith("train/")}}
                for s in history["steps"]
            ],
            history["epochs"],
            run.modalities,
            workdir / "training.png",
            title=f"{cfg.method.name} seed {cfg.seed}",
        )
        uni = " ".join(f"{m} {100 * a:.1f}" for m, a in results["unimodal_accuracy"].items())
        prb = " ".join(f"{m} {100 * a:.1f}" for m, a in probe.items())
        print(
            f"best epoch {results['best_epoch']}: test accuracy {100 * results['accuracy']:.1f} "
            f"| unimodal {uni} | probe {prb} | ECE {results['ece']:.3f} "
            f"-> {workdir / RESULTS_FILE}",
            flush=True,
        )
    from mlb_jax import evaluate  # evaluate imports this module

    if evaluate.EvalSettings.from_config(cfg).enabled:
        # After results.json: a failing evaluation never loses the run's results.
        evaluation = evaluate.evaluate_run(
            run, best_state, workdir, split=cfg.data.test_split, outputs=test
        )
        if jax.process_index() == 0:
            print(evaluate.summary_line(evaluation, workdir), flush=True)
    return results
