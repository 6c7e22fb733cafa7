"""The training loop: `train_and_evaluate(config, workdir)` owns a run from start to results.

Phases: run directory and config check -> data -> mesh -> model, method, optimiser ->
resume -> epochs (train steps, validation + test evaluation, best-on-validation selection,
checkpoint) -> best model: test metrics, linear probes, results.json, plots.
Each phase is a small function so that tests, notebooks and the comparison runner can call it.
"""

import dataclasses
import json
import math
import os
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from mlb_jax.checkpointing import RunCheckpoints
from mlb_jax.data import pipeline, schema, synthetic
from mlb_jax.methods import make_method
from mlb_jax.metrics import accuracy, expected_calibration_error
from mlb_jax.models import FUSIONS, build_model
from mlb_jax.optim import make_optimizer
from mlb_jax.plots import plot_training
from mlb_jax.probe import linear_probe_accuracy
from mlb_jax.steps import TrainState, make_eval_step, make_train_step
from mlb_jax.writers import MetricWriter

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
# Fields that may change between a run and its resumption: they do not affect the numbers.
RESUME_MAY_DIFFER = ("train.log_every", "progress", "data.cache_dir")


class RunError(RuntimeError):
    """A run cannot continue; the message names the cause and the fix."""


# ----------------------------------------------------------------------------- run directory


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
    """Writes JSON to a temporary file and renames it, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_run_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Writes config.json, or checks that an existing run's config matches this one.

    Raises:
      RunError: the workdir holds a run with a different config (the differences are named).
    """
    resolved = json.loads(config.to_json())
    path = workdir / CONFIG_FILE
    if path.exists():
        old = _flatten(json.loads(path.read_text()))
        new = _flatten(resolved)
        # Hyper-parameter blocks of other methods (method.<name>.*) cannot change this run.
        other_methods = tuple(
            f"method.{k.split('.')[1]}."
            for k in new
            if k.count(".") >= 2 and k.split(".")[1] != config.method.name
        )
        diffs = [
            f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)
            and not k.startswith(RESUME_MAY_DIFFER)
            and not (k.startswith("method.") and k.startswith(other_methods))
        ]
        if diffs:
            raise RunError(
                f"{workdir} holds a run with a different config ({'; '.join(diffs[:5])}): "
                "use a new --workdir, or delete it to start over"
            )
    if jax.process_index() == 0:  # one writer: processes share the workdir
        write_json_atomic(path, resolved)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Fails fast, before any data is read, on unknown method, fusion, optimiser or schedule."""
    make_method(config.method)
    if config.model.fusion not in FUSIONS:
        raise ValueError(
            f"unknown fusion {config.model.fusion!r} (config.model.fusion); "
            f"choose one of {sorted(FUSIONS)}"
        )
    make_optimizer(config.train, 1, None)


# ----------------------------------------------------------------------------- data


def load_dataset(config: ml_collections.ConfigDict) -> schema.DatasetMeta:
    """The dataset of `config.data`: the embedded synthetic one, or a converted directory."""
    modalities = list(config.model.modalities)
    if config.data.name == "synthetic_av":
        cache = pathlib.Path(os.path.expanduser(config.data.cache_dir))
        data_dir = synthetic.ensure_synthetic(cache, **config.data.synthetic.to_dict())
        return schema.load_meta(data_dir, modalities)
    if not config.data.dir:
        raise schema.DataError(
            "config.data.dir is empty: pass --config.data.dir=<converted dataset directory>"
        )
    return schema.load_meta(config.data.dir, modalities)


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
    """The static parts of a run and its jitted steps."""

    config: ml_collections.ConfigDict
    meta: schema.DatasetMeta
    mesh: jax.sharding.Mesh
    graphdef: Any
    method: Any
    train_step: Any
    eval_step: Any
    steps_per_epoch: int
    modalities: list[str]


def setup(config: ml_collections.ConfigDict, meta: schema.DatasetMeta) -> tuple[Run, TrainState]:
    """Builds model, method, optimiser and jitted steps; returns the run and a fresh state."""
    mesh = make_mesh(config.train.get("num_devices", 0))
    modalities = list(config.model.modalities)
    batch = config.train.batch_size
    if batch % mesh.shape["data"]:
        raise RunError(
            f"config.train.batch_size={batch} is not divisible by the {mesh.shape['data']} "
            "devices: choose a multiple"
        )
    steps_per_epoch = pipeline.batches_per_epoch(meta, config.data.train_split, batch)
    if steps_per_epoch < 1:
        raise RunError(
            f"config.train.batch_size={batch} exceeds the "
            f"{meta.split_sizes[config.data.train_split]} training "
            "examples: use a smaller batch"
        )
    # 'rbg' keys for initialisation only: on CPU they compile ~2x faster than threefry for
    # the many differently shaped random draws of a ResNet; dropout keeps the default impl.
    rngs = nnx.Rngs(params=jax.random.key(config.seed, impl="rbg"), dropout=config.seed + 1)
    model = build_model(config.model, meta.num_classes, rngs=rngs)
    method = make_method(config.method)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    balancing = method.gradient_transform(params, model.modality_patterns())
    tx, _ = make_optimizer(config.train, steps_per_epoch, balancing, method.placement)
    replicated = jax.NamedSharding(mesh, jax.P())
    method_state = method.init_state(modalities, meta.num_classes)
    state = TrainState(jnp.zeros([], jnp.int32), params, rest, tx.init(params), method_state)
    state = jax.device_put(state, replicated)
    train_step = jax.jit(make_train_step(graphdef, method, tx), donate_argnums=0)
    eval_step = jax.jit(make_eval_step(graphdef, method))
    run = Run(
        config, meta, mesh, graphdef, method, train_step, eval_step, steps_per_epoch, modalities
    )
    return run, state


# ----------------------------------------------------------------------------- evaluation


def predict(run: Run, state: TrainState, split: str) -> dict[str, Any]:
    """Eval-mode outputs for every example of `split` (padding removed), gathered on host.

    Returns:
      {'labels': [N], 'logits': [N, K], 'unimodal_logits': {m: [N, K]}, 'features': {m: [N, D]}}.
    """
    cfg = run.config
    chunks = []
    for batch in pipeline.eval_batches(
        run.meta, split, global_batch_size=cfg.train.eval_batch_size, cache=cfg.data.cache
    ):
        global_batch = pipeline.to_global(batch, run.mesh)
        out = run.eval_step(state, global_batch)
        # The whole global batch on every process (with several, outputs span all of them).
        out, mask, labels = multihost_utils.process_allgather(
            (out, global_batch["mask"], global_batch["label"]), tiled=True
        )
        chunks.append(jax.tree.map(lambda x, mask=mask: x[mask], out) | {"labels": labels[mask]})
    return jax.tree.map(lambda *xs: np.concatenate(xs), *chunks)


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


def _epoch_batches(run: Run, epoch: int, start_batch: int) -> Iterator[dict]:
    cfg = run.config
    return pipeline.train_batches(
        run.meta,
        cfg.data.train_split,
        global_batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        epoch=epoch,
        start_batch=start_batch,
        cache=cfg.data.cache,
    )


def _summary_line(epoch: int, total: int, record: dict, modalities: list[str]) -> str:
    parts = [f"epoch {epoch + 1:3d}/{total}", f"loss {record['train/loss']:.4f}"]
    parts.append(f"val {100 * record['val/accuracy']:.1f}")
    parts.append(f"test {100 * record['test/accuracy']:.1f}")
    parts.append(
        "unimodal val "
        + " ".join(f"{m} {100 * record[f'val/accuracy/{m}']:.1f}" for m in modalities)
    )
    ks = [f"{m} {record[f'train/k/{m}']:.2f}" for m in modalities if f"train/k/{m}" in record]
    if ks:
        parts.append("k " + " ".join(ks))
    parts.append(f"{record['epoch_seconds']:.1f}s")
    return " | ".join(parts)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Trains, evaluates and writes results for one run; resumes if `workdir` holds one.

    Args:
      config: the full experiment config (see configs/).
      workdir: run directory; created if needed.

    Returns:
      The results dict also written to `<workdir>/results.json`.

    Raises:
      RunError, DataError, ValueError: bad input, each with one clear message.
    """
    started = time.time()
    validate_config(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    meta = load_dataset(config)  # before config.json: a bad data.dir must leave no trace
    check_run_config(workdir, config)
    run, state = setup(config, meta)
    ckpts = RunCheckpoints(workdir, keep=config.train.get("keep_checkpoints", 2))
    writer = MetricWriter(workdir / "tensorboard")
    history: dict[str, Any] = {"epochs": [], "steps": [], "best": None}
    if ckpts.latest_step() is not None:
        state, history = ckpts.restore(state)
        print(f"resumed {workdir} at step {int(state.step)} (epoch {len(history['epochs'])})")
    epochs = config.train.epochs
    log_every = max(1, config.train.log_every)
    show = config.get("progress", True) and jax.process_index() == 0
    timing: dict[str, float] = {}
    try:
        for epoch in range(len(history["epochs"]), epochs):
            state, history = _train_epoch(
                run, state, history, epoch, writer, log_every, show, timing
            )
            # Best first: once the latest checkpoint names epoch e as best, its weights are on
            # disk; a kill in between only repeats epoch e, which re-saves it.
            if history["best"]["epoch"] == epoch:
                ckpts.save_best(int(state.step), state)
            ckpts.save(int(state.step), state, history)
        results = finish(run, ckpts, state, history, workdir, started, timing)
    finally:
        writer.close()
        ckpts.close()
    return results


def _train_epoch(run, state, history, epoch, writer, log_every, show, timing):
    cfg = run.config
    start = time.time()
    sums: dict[str, float] = {}
    count = 0
    bar = tqdm(
        _epoch_batches(run, epoch, 0),
        total=run.steps_per_epoch,
        desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
        disable=not show,
        leave=False,
    )
    for batch in bar:
        step_start = time.time()
        state, metrics = run.train_step(state, pipeline.to_global(batch, run.mesh))
        step = int(state.step)  # waits for the step
        if not timing:
            # The process's first step traces and compiles the step (or loads it from the
            # persistent compilation cache) before running it.
            timing["first_step_seconds"] = time.time() - step_start
            if show:
                tqdm.write(
                    f"first train step (incl. compilation): {timing['first_step_seconds']:.1f}s"
                )
        if step % log_every == 0 or count == 0:
            host = {k: float(v) for k, v in jax.device_get(metrics).items()}
            _check_finite(host["loss"], step, epoch, history)
            history["steps"].append({"step": step, **{f"train/{k}": v for k, v in host.items()}})
            writer.scalars(step, {f"train/{k}": v for k, v in host.items()})
            bar.set_postfix(loss=f"{host['loss']:.3f}")
        sums = {k: sums.get(k, 0.0) + v for k, v in metrics.items()} if sums else dict(metrics)
        count += 1
    train_means = {f"train/{k}": float(v) / count for k, v in jax.device_get(sums).items()}
    _check_finite(train_means["train/loss"], int(state.step), epoch, history)
    record = {"epoch": epoch, "step": int(state.step), **train_means}
    for prefix, split in (("val", cfg.data.val_split), ("test", cfg.data.test_split)):
        record |= evaluate_outputs(predict(run, state, split), prefix)
    new_method_state = run.method.end_of_epoch(
        jax.device_get(state.method_state), _EpochContext(run, state, epoch)
    )
    state = state._replace(
        method_state=jax.device_put(new_method_state, jax.NamedSharding(run.mesh, jax.P()))
    )
    record["epoch_seconds"] = time.time() - start
    writer.scalars(int(state.step), {k: v for k, v in record.items() if "/" in k})
    history["epochs"].append(record)
    best = history["best"]
    if best is None or record["val/accuracy"] > best["val/accuracy"]:
        history["best"] = {"epoch": epoch, "step": record["step"], **record}
    if jax.process_index() == 0:
        print(_summary_line(epoch, cfg.train.epochs, record, run.modalities), flush=True)
    return state, history


@dataclasses.dataclass
class _EpochContext:
    """What a method's `end_of_epoch` may use (see `mlb_jax.methods.base.EpochContext`)."""

    run: Run
    state: TrainState
    epoch: int

    def predict(self, split: str) -> dict[str, Any]:
        return predict(self.run, self.state, split)

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


def finish(
    run: Run,
    ckpts: RunCheckpoints,
    state,
    history: dict,
    workdir: pathlib.Path,
    started: float,
    timing: dict[str, float] | None = None,
) -> dict:
    """Best-on-validation model: test metrics, probes, results.json and plots.

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
        "dataset": run.meta.name,
        "num_test_examples": len(test["labels"]),
        "train_seconds": float(sum(e["epoch_seconds"] for e in history["epochs"])),
        "wall_seconds": time.time() - started,  # this invocation only (a resume restarts it)
        "first_step_seconds": (timing or {}).get("first_step_seconds"),  # None: no step ran
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
    return results
