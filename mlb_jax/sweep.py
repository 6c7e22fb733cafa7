"""Seeds in one compiled program: the runs of several seeds trained as one train-step program.

    python -m mlb_jax.sweep --config=configs/synthetic_av.py --methods=joint,mlb \
        --seeds=0,1,2,3 --workdir=runs/sweep [--program=auto|vmap|unrolled]

The layout and the table are the compare runner's (mlb_jax/compare.py): member s of method m
is an ordinary run directory `<workdir>/<m>/seed_<s>` (config.json, checkpoints, results.json,
TensorBoard, training.png and the evaluation) holding what `mlb_jax.train` writes with
`--config.seed=s`, up to floating-point reassociation; `comparison.md` summarises them.

How: one set-up per member (`trainer.setup`: its own initialisation and dropout streams, the
same shapes), their train states stacked on a leading run axis, and one jitted program of the
members' train steps: `jax.vmap` of the step over the run axis on accelerators, the members'
steps side by side ('unrolled') on the CPU, where XLA's vmapped convolutions are 2-5x slower
per member (`resolve_program`, benchmarks/sweep_speed.py). Each member's batches come in the
order its seed gives in a single run: the cached split is decoded once and shared, and each
step holds N batches on the devices (N x batch x example size). The run axis stays whole on
every device; the batch dimension is sharded over the ('data',) mesh as in a single run. Per
epoch, every member is validated, runs its method's end-of-epoch hook (MSLR, PMR, AGM,
ReconBoost keep per-member state) and is checkpointed on its own. Early stopping ends a
member's epochs and keeps its best checkpoint; its steps go on inside the program, their
results dropped, until every member stops. A killed sweep resumes every member from the
newest epoch all of them had saved.

What differs between members: the seed only (initialisation, dropout, data order).
Hyper-parameter sweeps are not batched: `mlb_jax.tune` trains their trials one by one.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import dataclasses
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from etils import epath
from tqdm import tqdm

from mlb_jax import compare, paths, recipes, trainer
from mlb_jax.checkpointing import RunCheckpoints
from mlb_jax.data import pipeline
from mlb_jax.methods import make_method
from mlb_jax.steps import TrainState
from mlb_jax.writers import MetricWriter

# How the members' train steps form one program (see `member_step`).
PROGRAMS = ("vmap", "unrolled")

# --config, --workdir, --methods and --seeds are the compare runner's flags (mlb_jax/compare.py).
_PROGRAM = flags.DEFINE_enum(
    "program",
    "auto",
    ["auto", *PROGRAMS],
    "how the members' steps form one program: vmap (one step over a run axis), unrolled (the "
    "members' steps side by side), auto (unrolled on CPU, vmap elsewhere)",
)


@dataclasses.dataclass
class Member:
    """One run of a sweep: its set-up, directory and bookkeeping.

    Attributes:
      seed: the member's `config.seed`.
      run: its `trainer.Run` (steps shared with the other members).
      workdir: its run directory.
      ckpts: its checkpoints.
      writer: its TensorBoard writer.
      history: its history ('epochs', 'steps', 'best'), as a single run keeps it.
      pending_best: its best state not yet checkpointed (`trainer.checkpoint_epoch`).
      stopped: its state when early stopping ended its epochs (None: still training).
    """

    seed: int
    run: trainer.Run
    workdir: epath.Path
    ckpts: RunCheckpoints
    writer: MetricWriter
    history: dict
    pending_best: Any = None
    stopped: TrainState | None = None


def stack(states: list[TrainState], mesh: jax.sharding.Mesh) -> TrainState:
    """The members' states on a leading run axis [N, ...], replicated over `mesh`."""
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    return jax.device_put(stacked, jax.NamedSharding(mesh, jax.P()))


def unstack(stacked: TrainState, n: int) -> list[TrainState]:
    """The inverse of `stack`: member i's state is `stacked[i]` of every leaf."""
    return [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)]


def resolve_program(program: str) -> str:
    """'auto' -> 'unrolled' on a CPU backend, 'vmap' elsewhere; the others as they are.

    On the CPU, XLA runs a vmapped convolution (a kernel per member: a grouped convolution)
    2-5x slower per member than the member's own step, while N unrolled steps cost about N
    steps (benchmarks/sweep_speed.py), at N times the compile time.
    """
    if program not in ("auto", *PROGRAMS):
        raise ValueError(f"unknown sweep program {program!r}: choose auto, {', '.join(PROGRAMS)}")
    if program == "auto":
        return "unrolled" if jax.default_backend() == "cpu" else "vmap"
    return program


def member_step(train_step: Any, n: int, program: str) -> Any:
    """The train step of `n` members as one function on their stacked states and batches.

    Args:
      train_step: `(state, batch) -> (state, metrics)` of one member.
      n: the number of members.
      program: 'vmap' (one step over the leading run axis) or 'unrolled' (the n steps side
        by side, each on its slice; no run axis inside).

    Returns:
      `(stacked state, stacked batch) -> (stacked state, stacked metrics)`, not jitted.
    """
    if program == "vmap":
        return jax.vmap(train_step)

    def unrolled(stacked: TrainState, batch: dict) -> tuple[TrainState, dict]:
        outs = [train_step(state, own) for state, own in unstack((stacked, batch), n)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return unrolled


def _open_members(
    config: ml_collections.ConfigDict, meta: Any, workdir: epath.Path, seeds: list[int], recipe
) -> tuple[list[Member], list[TrainState]]:
    """Sets up every member, writes (or checks) its config.json, restores a common epoch."""
    members, states = [], []
    shared = None
    for seed in seeds:
        cfg = config.copy_and_resolve_references()
        with cfg.unlocked():
            cfg.seed = seed
        run, state = trainer.setup(cfg, meta)
        if shared is None:
            shared = run
        else:  # one compiled eval step for all (identical programs)
            run = dataclasses.replace(run, eval_step=shared.eval_step)
        resolved = trainer.resolved_settings(cfg, run.meta, run.method, state.params)
        if recipe:
            resolved["recipe"] = recipe
        members.append((seed, run, resolved))
        states.append(state)
    out = []
    for seed, run, resolved in members:  # nothing written until every member set up
        run_dir = workdir / f"seed_{seed}"
        trainer.check_run_config(run_dir, run.config, resolved)
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpts = RunCheckpoints(run_dir, keep=run.config.train.get("keep_checkpoints", 2))
        writer = MetricWriter(run_dir / "tensorboard")
        out.append(
            Member(seed, run, run_dir, ckpts, writer, {"epochs": [], "steps": [], "best": None})
        )
    # A kill between two members' saves leaves some one epoch ahead: all go back to the
    # newest step every member saved (a member without a checkpoint sends all to the start).
    latest = [m.ckpts.latest_step() for m in out]
    common = None if None in latest else min(latest)
    for i, m in enumerate(out):
        m.ckpts.delete_after(common)
        if common is not None:
            states[i], m.history = m.ckpts.restore(states[i], step=common)
    if common is not None:
        print(
            f"resumed {len(out)} members at step {common} (epoch {len(out[0].history['epochs'])})"
        )
    return out, states


def sweep_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: paths.PathLike,
    seeds: list[int],
    program: str = "auto",
) -> list[dict]:
    """Trains the runs of `seeds` as one program; each is an ordinary run directory.

    Args:
      config: the experiment config (its `seed` is replaced by each member's).
      workdir: the sweep's directory; member s lives in `<workdir>/seed_<s>`. A member whose
        results.json exists is not trained again.
      seeds: distinct seeds, one member each.
      program: how the members' steps form one program: 'vmap', 'unrolled' or 'auto'
        (`resolve_program`).

    Returns:
      One results dict per seed (as `trainer.train_and_evaluate` returns), in `seeds` order.

    Raises:
      ValueError: repeated seeds, or a method that trains nothing (compare it instead).
      RunError, DataError: as `trainer.train_and_evaluate`.
    """
    started = time.time()
    program = resolve_program(program)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds={seeds}: a sweep needs distinct seeds")
    workdir = paths.as_path(workdir)
    done = {
        s: json.loads((workdir / f"seed_{s}" / trainer.RESULTS_FILE).read_text())
        for s in seeds
        if (workdir / f"seed_{s}" / trainer.RESULTS_FILE).exists()
    }
    todo = [s for s in seeds if s not in done]
    if todo:
        config, recipe = recipes.resolve(config)
        trainer.validate_config(config)
        meta = trainer.load_dataset(config)
        config = trainer.modalities_from_dataset(config, meta)
        if not make_method(config.method).trains:
            raise ValueError(
                f"method {config.method.name!r} trains nothing: compare it with mlb_jax.compare"
            )
        members, states = _open_members(config, meta, workdir, todo, recipe)
        try:
            results = _train_members(members, states, started, program)
        finally:
            for m in members:
                m.writer.close()
                m.ckpts.close()
        done |= dict(zip(todo, results, strict=True))
    return [done[s] for s in seeds]


def _train_members(
    members: list[Member], states: list[TrainState], started: float, program: str
) -> list[dict]:
    """The epochs of every member in one train-step program, then each member's results."""
    first = members[0].run
    cfg = first.config
    n = len(members)
    train_step = jax.jit(member_step(first.train_step, n, program), donate_argnums=0)
    timing: dict[str, float] = {}
    show = cfg.get("progress", True) and jax.process_index() == 0
    for epoch in range(len(members[0].history["epochs"]), cfg.train.epochs):
        for m, state in zip(members, states, strict=True):
            if m.stopped is None and trainer.early_stop_reason(m.history, cfg.train):
                m.stopped = state  # early-stopped before the kill that this run resumes
        if all(m.stopped is not None for m in members):
            break
        start = time.time()
        step = int(states[0].step)
        stacked = stack(states, first.mesh)
        step_metrics = []
        batches = zip(*(trainer.epoch_batches(m.run, epoch) for m in members), strict=True)
        bar = tqdm(
            batches,
            total=first.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.train.epochs} ({n} members)",
            disable=not show,
            leave=False,
        )
        for member_batches in bar:
            batch = jax.tree.map(lambda *xs: np.stack(xs), *member_batches)
            step_start = time.time()
            stacked, metrics = train_step(
                stacked, pipeline.to_global(batch, first.mesh, run_axis=True)
            )
            step += 1
            if not timing:
                jax.block_until_ready(metrics)
                timing["first_step_seconds"] = time.time() - step_start
            step_metrics.append(metrics)
        fetched = jax.device_get(step_metrics)  # every step's [N] scalars, one transfer
        states = unstack(stacked, n)
        for i, m in enumerate(members):
            if m.stopped is not None:
                continue  # its steps ran masked: nothing of them is kept
            own = [{k: v[i] for k, v in f.items()} for f in fetched]
            first_step = step - len(own) + 1
            for j, metrics_j in enumerate(own):
                if (first_step + j) % cfg.train.log_every == 0 or j == 0:
                    trainer.log_step(m.history, m.writer, first_step + j, epoch, metrics_j)
            states[i], m.history = trainer.close_epoch(
                m.run, states[i], m.history, epoch, step, own, m.writer, start
            )
            m.pending_best = trainer.checkpoint_epoch(
                m.ckpts, m.run.config, states[i], m.history, m.pending_best
            )
            reason = trainer.early_stop_reason(m.history, cfg.train)
            if reason:
                print(f"seed {m.seed}: {reason}: restoring the best checkpoint", flush=True)
                m.stopped = jax.tree.map(jnp.copy, states[i])
    return [
        trainer.finish(
            m.run,
            m.ckpts,
            m.stopped if m.stopped is not None else state,
            m.history,
            m.workdir,
            started,
            timing,
        )
        for m, state in zip(members, states, strict=True)
    ]


def main(argv: list[str]) -> None:
    """Sweeps the seeds of every method and writes the comparison (comparison.md, figures)."""
    del argv  # `parse_flags` refuses positional arguments
    from mlb_jax.methods import BUILT_ON_UNIMODAL
    from mlb_jax.runtime import DEFAULT_COMPILATION_CACHE, fail, setup_process

    args = flags.FLAGS
    try:
        methods = compare.expand_methods(list(args.methods))
    except ValueError as err:
        fail(str(err))
    single = [m for m in methods if m == "unimodal" or m in BUILT_ON_UNIMODAL]
    if single:
        fail(
            f"--methods={','.join(single)}: unimodal rows and the methods built on them are not "
            "swept; run them with python -m mlb_jax.compare"
        )
    setup_process(distributed=False, compilation_cache=DEFAULT_COMPILATION_CACHE)
    workdir = paths.as_path(args.workdir)
    seeds = list(args.seeds)
    results = {}
    try:
        for method in methods:
            cfg = args.config.copy_and_resolve_references()
            with cfg.unlocked():
                cfg.method.name = method
            print(
                f"=== {method}: seeds {seeds} in one program "
                f"({resolve_program(_PROGRAM.value)}) -> {workdir / method}",
                flush=True,
            )
            results[method] = sweep_and_evaluate(cfg, workdir / method, seeds, _PROGRAM.value)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as err:
        fail(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))
    print(compare.write_comparison(results, seeds, workdir, args.config.data.name))


if __name__ == "__main__":
    from mlb_jax.runtime import parse_flags

    app.run(main, flags_parser=parse_flags)
