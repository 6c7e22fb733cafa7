"""One process of the 2-process CPU run of ``tests/test_multiprocess.py`` (not a test module).

    python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT DATA_CACHE STEPS OUT.npz

Joins a ``jax.distributed`` job whose coordinator listens on ``localhost:PORT`` (process 0),
with CPU collectives over gloo and ``JAX_NUM_CPU_DEVICES`` local devices (set by the caller),
builds the tiny config's run through ``mlb_jax.trainer.setup`` (a mesh over every process's
devices), reads this process's part of the training data through the trainer's own batch
iterator, compiles the trainer's jitted step, runs STEPS train steps and writes to OUT.npz:
the labels it read (``labels``, [STEPS, local batch]), every step's metrics
(``metric/<name>``, [STEPS]), the parameters after every step (``param/<path>``,
[STEPS, ...]) and ``trainer.predict`` of the test split after the last (``predict/<key>``);
and to OUT.npz.json the returned dict of ``evaluate.evaluate_run`` of the initial state (process
0 also writes its files into OUT.npz.evaluation/).
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import importlib.util
import json
import pathlib

import jax
import numpy as np
from flax import nnx
from jax._src import distributed  # the barrier JAX's own multi-process tests use

ROOT = pathlib.Path(__file__).resolve().parents[1]
BARRIER_TIMEOUT_MS = 300_000


def tiny_config(data_cache: str):
    spec = importlib.util.spec_from_file_location("tiny", ROOT / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data.cache_dir = data_cache
    # Unaugmented frames: this comparison is about the mesh, the data split and the
    # all-reduces, whose float32 rounding the 2-step tolerances are sized for (resampled
    # crops make step 2 ill-conditioned enough to exceed them); the augmentation's own
    # per-process keys are tested in tests/test_augment.py.
    config.data.augment.enabled = False
    # The evaluation compared across process counts: one noise level, a small statistics
    # sample (both still cross the processes: gathered statistics, sharded noise steps).
    config.evaluate.noise_levels = (1.0,)
    config.evaluate.stats_examples = 64
    return config


def flat_params(params) -> dict[str, np.ndarray]:
    """'/'-joined parameter path -> numpy value of a replicated nnx.State."""
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(value)
        for path, value in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(params))
    }


def flat_outputs(predicted: dict) -> dict[str, np.ndarray]:
    """`trainer.predict` outputs as {'labels': ..., 'logits': ..., 'unimodal_logits/audio': ...}."""
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(value)
        for path, value in jax.tree_util.tree_leaves_with_path(predicted)
    }


def main(argv: list[str]) -> None:
    process_id, num_processes, port, data_cache, steps, out = argv
    process_id, num_processes, steps = int(process_id), int(num_processes), int(steps)
    # gloo is jax 0.10's default for CPU collectives; set it explicitly, since without
    # cross-process collectives every all-reduce of the step would fail.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=120,
    )
    assert jax.process_index() == process_id and jax.process_count() == num_processes

    # After initialize: the trainer's mesh spans all processes.
    from mlb_jax import evaluate, trainer

    config = tiny_config(data_cache)
    meta = trainer.load_dataset(config)
    run, state = trainer.setup(config, meta)
    batches = [
        batch for _, batch in zip(range(steps), trainer.epoch_batches(run, epoch=0), strict=False)
    ]
    global_batches = [trainer.pipeline.to_global(batch, run.mesh) for batch in batches]
    # Gloo gives a process 30 s to join the first collective. On a loaded machine one process
    # can reach it much later than the other (compiling while the other loaded the persistent
    # compilation cache, say), so compile first and meet at a coordination-service barrier,
    # as JAX's own multi-process tests do.
    step = run.train_step.lower(state, global_batches[0]).compile()
    distributed.global_state.client.wait_at_barrier("compiled", BARRIER_TIMEOUT_MS)
    metrics, params = [], []
    for batch in global_batches:
        state, step_metrics = step(state, batch)
        metrics.append({k: float(v) for k, v in jax.device_get(step_metrics).items()})
        params.append(flat_params(state.params))
    labels = [batch["label"] for batch in batches]
    # Evaluation gathers outputs that span both processes' devices.
    predicted = trainer.predict(run, state, config.data.test_split)
    # The whole evaluation (mlb_jax/evaluate.py) of the initial state: the same parameters
    # in this job and in the single-process reference, so their numbers can be compared
    # closely (trained parameters differ by float rounding, which may flip a prediction).
    _, initial = trainer.setup(config, meta)
    evaluation = evaluate.evaluate_run(run, initial, f"{out}.evaluation")
    arrays = {"labels": np.stack(labels), "num_devices": np.int32(run.mesh.size)}
    arrays |= {f"metric/{k}": np.array([m[k] for m in metrics]) for k in metrics[0]}
    arrays |= {f"param/{k}": np.stack([p[k] for p in params]) for k in params[0]}
    arrays |= {f"predict/{k}": v for k, v in flat_outputs(predicted).items()}
    tmp = f"{out}.tmp.npz"
    np.savez(tmp, **arrays)
    with open(f"{out}.json.tmp", "w") as f:
        json.dump(evaluation, f)
    os.replace(f"{out}.json.tmp", f"{out}.json")
    os.replace(tmp, out)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
