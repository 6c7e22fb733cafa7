"""Seeds in one compiled program: the runs of several seeds trained as one train-step program.

    python -m mlb_jax.sweep --config=configs/synthetic_av.py --methods=joint,mlb \
        --seeds=0,1,2,3 --workdir=runs/sweep [--program=auto|vmap|unrolled] \
        [--set=method.alpha=0.5,1,2 --set=train.lr=0.01,0.02]

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
every device and the batch dimension is sharded over the ('data',) mesh as in a single run;
with ``--run_shards=R`` (vmap) the devices form an R x (devices / R) ('runs', 'data') mesh
instead, each group training N / R members on batches sharded over its own devices. Per
epoch, every member is validated, runs its method's end-of-epoch hook (MSLR, PMR, AGM,
ReconBoost keep per-member state) and is checkpointed on its own. Early stopping ends a
member's epochs and keeps its best checkpoint; its steps go on inside the program, their
results dropped, until every member stops. A killed sweep resumes every member from the
newest epoch all of them had saved.

What differs between members: the seed (initialisation, dropout, data order) and, with
``--set=CONFIG.PATH=V1,V2,...``, float hyper-parameters (learning rate, weight decay, MLB's
alpha and beta_max, a baseline's strength): the members are the cross product of the values
times the seeds, in `<workdir>/<m>/<setting>/seed_<s>` (e.g. `alpha=2_lr=0.01/seed_0`), one
table row per setting. Members differing only in the learning rate, the weight decay and the
method's traced settings (`traced_paths`: MLB's alpha, beta_max and unimodal_weight, OGM's and
AGM's alpha, PMR's alpha, MMPareto's alpha, MMCosine's scaling, ReconBoost's alpha, w1 and
w2, ...) share one step under 'vmap': each member scales its update by its rate over the first
member's (exact up to rounding for every schedule and optimiser here), hands its weight decay
to the coupled decay's update and its method settings to the step (`Method.with_settings`).
Members differing in other fields keep their own step functions (their values are constants
of their optimiser and method), so they run in the 'unrolled' program only.
Everything else (model, batch size, method, schedule kind) is shared: a --set field that is
not a float is refused, naming it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import dataclasses
import itertools
import json
import time
from collections.abc import Collection, Sequence
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
from mlb_jax.methods import Method, make_method
from mlb_jax.steps import TrainState, compiler_options
from mlb_jax.writers import MetricWriter

# How the members' train steps form one program (see `member_step`).
PROGRAMS = ("vmap", "unrolled")
# Optimiser settings that members of every method may hold under 'vmap': traced inputs of the
# one shared step (a learning rate is a scale of the update, `mlb_jax.steps.make_train_step`;
# a weight decay an argument of `mlb_jax.optim.coupled_weight_decay`). A method adds its own
# `traced_fields` (`traced_paths`).
TRACED = ("train.lr", "train.weight_decay")


def traced_paths(method: Method) -> tuple[str, ...]:
    """The config paths whose values the members of a 'vmap' sweep of `method` may differ in.

    Returns:
      `TRACED` and the config paths of `method.traced_fields`, e.g. ('train.lr',
      'train.weight_decay', 'method.unimodal_weight', 'method.alpha', 'method.beta_max') for
      MLB, ('train.lr', 'train.weight_decay', 'method.ogm.alpha') for OGM.
    """
    fields = (method.setting_path(f).removeprefix("config.") for f in method.traced_fields)
    return (*TRACED, *fields)


# --config, --workdir, --methods and --seeds are the compare runner's flags (mlb_jax/compare.py).
_SET = flags.DEFINE_multi_string(
    "set",
    [],
    "CONFIG.PATH=V1,V2,...: a float hyper-parameter's values; the members are their cross "
    "product times the seeds, e.g. --set=method.alpha=0.5,1,2 --set=train.lr=0.01,0.02",
)
_RUN_SHARDS = flags.DEFINE_integer(
    "run_shards",
    1,
    "vmap only: split the members over this many groups of devices (a ('runs', 'data') mesh: "
    "each group trains N / run_shards members, its batch sharded over the group's devices)",
)
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
      name: its run directory, relative to the sweep's (e.g. 'seed_0', 'lr=0.01/seed_0').
      run: its `trainer.Run` (steps shared with the other members).
      workdir: its run directory.
      ckpts: its checkpoints.
      writer: its TensorBoard writer.
      history: its history ('epochs', 'steps', 'best'), as a single run keeps it.
      pending_best: its best state not yet checkpointed (`trainer.checkpoint_epoch`).
      stopped: its state when early stopping ended its epochs (None: still training).
    """

    name: str
    run: trainer.Run
    workdir: epath.Path
    ckpts: RunCheckpoints
    writer: MetricWriter
    history: dict
    pending_best: Any = None
    stopped: TrainState | None = None


def stack(states: list[TrainState], mesh: jax.sharding.Mesh) -> TrainState:
    """The members' states on a leading run axis [N, ...].

    Split over the mesh's 'runs' axis when it has one (`run_mesh`), else replicated.
    """
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    spec = jax.P("runs") if "runs" in mesh.axis_names else jax.P()
    return jax.device_put(stacked, jax.NamedSharding(mesh, spec))


def run_mesh(mesh: jax.sharding.Mesh, run_shards: int, members: int) -> jax.sharding.Mesh:
    """The ('runs', 'data') mesh of a sweep over `mesh`'s devices (`mesh` itself for 1 shard).

    Args:
      mesh: the members' ('data',) mesh (`trainer.make_mesh`).
      run_shards: groups of devices; each trains members / run_shards members.
      members: N.

    Raises:
      ValueError: naming --run_shards, when it does not divide N or the device count.
    """
    if run_shards == 1:
        return mesh
    devices = np.asarray(mesh.devices).reshape(-1)
    if run_shards < 1 or members % run_shards or devices.size % run_shards:
        raise ValueError(
            f"--run_shards={run_shards} must divide the members ({members}) and the devices "
            f"({devices.size})"
        )
    auto = jax.sharding.AxisType.Auto
    return jax.sharding.Mesh(
        devices.reshape(run_shards, -1), ("runs", "data"), axis_types=(auto, auto)
    )


def unstack(stacked: TrainState, n: int) -> list[TrainState]:
    """The inverse of `stack`: member i's state is `stacked[i]` of every leaf."""
    return [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)]


def resolve_program(
    program: str,
    varies: Collection[str] = (),
    run_shards: int = 1,
    traced: Collection[str] = TRACED,
) -> str:
    """'auto' -> 'unrolled' on a CPU backend or when members' settings differ, else 'vmap'.

    On the CPU, XLA runs a vmapped convolution (a kernel per member: a grouped convolution)
    2-5x slower per member than the member's own step, while N unrolled steps cost about N
    steps (benchmarks/sweep_speed.py), at N times the compile time. Members whose settings
    differ in fields other than `traced` need their own steps, which only 'unrolled' has.

    Args:
      program: 'auto' or one of `PROGRAMS`.
      varies: the config paths whose values differ between members.
      run_shards: --run_shards; more than 1 needs the 'vmap' program (`run_mesh`).
      traced: the config paths the shared step takes per member (`traced_paths` of the
        method; default: the optimiser's, `TRACED`).

    Raises:
      ValueError: an unknown program, 'vmap' for members that differ outside `traced`, or
        run_shards > 1 with a program that resolves to 'unrolled'.
    """
    if program not in ("auto", *PROGRAMS):
        raise ValueError(f"unknown sweep program {program!r}: choose auto, {', '.join(PROGRAMS)}")
    own_steps = sorted(set(varies) - set(traced))
    if program == "vmap" and own_steps:
        raise ValueError(
            "--program=vmap runs one step for every member, so members may differ by seed and "
            f"{', '.join(traced)} only, not {', '.join(own_steps)}: use --program=unrolled"
        )
    if program == "auto":
        program = "unrolled" if own_steps or jax.default_backend() == "cpu" else "vmap"
    if run_shards != 1 and program != "vmap":
        raise ValueError(
            f"--run_shards={run_shards} splits the run axis of the vmapped program: use "
            f"--program=vmap (members that differ only by seed and {', '.join(traced)})"
        )
    return program


def member_step(
    train_steps: list[Any],
    program: str,
    update_scales: Sequence[float] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    update_args: dict[str, Sequence[float]] | None = None,
    settings: dict[str, Sequence[float]] | None = None,
) -> Any:
    """The train steps of the members as one function on their stacked states and batches.

    Args:
      train_steps: member i's `(state, batch) -> (state, metrics)`; the same program for
        every member under 'vmap' (the first is used).
      program: 'vmap' (one step over the leading run axis) or 'unrolled' (each member's own
        step side by side, on its slice; no run axis inside).
      update_scales: 'vmap' only: member i's learning rate over the first member's, the
        `update_scale` of its step (`mlb_jax.steps.make_train_step`); None: all 1.
      mesh: 'vmap' only: a mesh with a 'runs' axis (`run_mesh`) splits the members over its
        device groups (each group's batch partitioned over its 'data' devices).
      update_args: 'vmap' only: extra argument of the optimiser's update -> member i's value
        (`update_args` of `mlb_jax.steps.make_train_step`, e.g. {'weight_decay': [0, 1e-4]}).
      settings: 'vmap' only: a traced method field -> member i's value (`settings` of the
        step, e.g. {'alpha': [0.5, 2]}).

    Returns:
      `(stacked state, stacked batch) -> (stacked state, stacked metrics)`, not jitted.
    """
    n = len(train_steps)
    if program == "vmap":
        step = jax.vmap(train_steps[0])
        split_runs = mesh is not None and "runs" in mesh.axis_names
        if update_scales is None and not update_args and not settings and not split_runs:
            return step
        scales = np.asarray([1.0] * n if update_scales is None else update_scales, np.float32)
        args = {k: np.asarray(v, np.float32) for k, v in (update_args or {}).items()}
        fields = {k: np.asarray(v, np.float32) for k, v in (settings or {}).items()}
        if split_runs:
            # Each device group runs its own members' vmapped steps (jax.shard_map, manual
            # over 'runs' only). Left to XLA's partitioner, vmapped 1x1 convolutions with the
            # run axis sharded came out wrong (jax 0.10.2 CPU: off by O(10) on 1x1 and 4x4
            # maps), so the members are never split inside an operation.
            step = jax.shard_map(
                step,
                mesh=mesh,
                in_specs=jax.P("runs"),
                out_specs=jax.P("runs"),
                axis_names={"runs"},
            )
        return lambda stacked, batch: step(stacked, batch, scales, args, fields)

    def unrolled(stacked: TrainState, batch: dict) -> tuple[TrainState, dict]:
        members = unstack((stacked, batch), n)
        outs = [step(*member) for step, member in zip(train_steps, members, strict=True)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return unrolled


def parse_set(items: list[str]) -> dict[str, list[float]]:
    """--set values 'train.lr=0.01,0.02' -> config path -> the members' values.

    Raises:
      ValueError: naming the --set value, for a malformed one or a value that is no number.
    """
    out = {}
    for item in items:
        path, eq, values = item.partition("=")
        try:
            numbers = [float(v) for v in values.split(",")] if eq and path else []
        except ValueError:
            numbers = []
        if not numbers or path in out:
            raise ValueError(
                f"--set={item!r}: write CONFIG.PATH=V1,V2,... once per path with numbers, e.g. "
                "--set=method.alpha=0.5,1,2"
            )
        out[path] = numbers
    return out


def check_sets(config: ml_collections.ConfigDict, sets: dict[str, list[float]]) -> None:
    """Refuses a --set path that is not a float hyper-parameter of `config` (resolved).

    Members must share everything that shapes the program (model, batch size, method name,
    schedule kind): only float settings may differ.

    Raises:
      ValueError: naming the config field and why.
    """
    for path in sets:
        if path == "seed":
            raise ValueError("--set=seed=...: seeds come from --seeds")
        try:
            value = recipes.get_field(config, path)
        except KeyError:
            raise ValueError(f"--set: the config has no field config.{path}") from None
        if isinstance(value, bool) or not isinstance(value, float):
            raise ValueError(
                f"--set: config.{path} is {value!r}, not a float: members may differ only in "
                "float hyper-parameters (learning rate, weight decay, alpha, beta_max, ...)"
            )


def setting_name(setting: dict[str, float]) -> str:
    """A member's directory part for its setting: 'lr=0.01_alpha=2' ('' for none)."""
    return "_".join(f"{path.split('.')[-1]}={value:g}" for path, value in setting.items())


def plan_members(
    seeds: list[int], sets: dict[str, list[float]] | None = None
) -> list[tuple[str, int, dict[str, float]]]:
    """The members: the cross product of the --set values (in order) and the seeds.

    Returns:
      (run directory relative to the sweep's, seed, setting) per member: 'seed_<s>' without
      --set, '<setting_name>/seed_<s>' with it.
    """
    sets = sets or {}
    settings = [
        dict(zip(sets, values, strict=True)) for values in itertools.product(*sets.values())
    ]
    return [
        (f"{setting_name(st)}/seed_{seed}" if st else f"seed_{seed}", seed, st)
        for st in settings
        for seed in seeds
    ]


def _open_members(
    configs: list[tuple[str, ml_collections.ConfigDict]],
    meta: Any,
    workdir: epath.Path,
    recipe: dict,
    share_eval: bool,
) -> tuple[list[Member], list[TrainState]]:
    """Sets up every member, writes (or checks) its config.json, restores a common epoch.

    With `share_eval` (members differ by seed and optimiser settings only) they share the first
    member's compiled eval step; otherwise each keeps its own (MMCosine's scaling changes the
    logits).
    """
    members, states = [], []
    shared = None
    for name, cfg in configs:
        run, state = trainer.setup(cfg, meta, workdir=workdir / name)
        if shared is None:
            shared = run
        elif share_eval:
            run = dataclasses.replace(run, eval_step=shared.eval_step)
        resolved = trainer.resolved_settings(cfg, run.meta, run.method, state.params, run.conv)
        if recipe:
            resolved["recipe"] = recipe
        members.append((name, run, resolved))
        states.append(state)
    out = []
    for name, run, resolved in members:  # nothing written until every member set up
        run_dir = workdir / name
        trainer.check_run_config(run_dir, run.config, resolved, run.conv_auto)
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpts = RunCheckpoints(run_dir, keep=run.config.train.get("keep_checkpoints", 2))
        writer = MetricWriter(run_dir / "tensorboard")
        out.append(
            Member(name, run, run_dir, ckpts, writer, {"epochs": [], "steps": [], "best": None})
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
    sets: dict[str, list[float]] | None = None,
    run_shards: int = 1,
) -> list[dict]:
    """Trains the members (seeds x --set values) as one program; each is an ordinary run.

    Args:
      config: the experiment config (its `seed` and the --set fields are each member's own).
      workdir: the sweep's directory; members live where `plan_members` says. A member whose
        results.json exists is not trained again.
      seeds: distinct seeds.
      program: how the members' steps form one program: 'vmap', 'unrolled' or 'auto'
        (`resolve_program`).
      sets: config path -> values of float hyper-parameters (`parse_set`); their cross
        product times the seeds are the members.
      run_shards: 'vmap' only: the members split over this many groups of devices
        (`run_mesh`); 1 keeps every member on every device.

    Returns:
      One results dict per member (as `trainer.train_and_evaluate` returns), in
      `plan_members` order.

    Raises:
      ValueError: repeated seeds, a --set field that is not a float hyper-parameter, 'vmap'
        with a --set field other than `traced_paths` of the method, or a method that trains
        nothing (compare it instead).
      RunError, DataError: as `trainer.train_and_evaluate`.
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds={seeds}: a sweep needs distinct seeds")
    return train_members(config, workdir, plan_members(seeds, sets), program, run_shards)


def train_members(
    config: ml_collections.ConfigDict,
    workdir: paths.PathLike,
    members: list[tuple[str, int, dict[str, float]]],
    program: str = "auto",
    run_shards: int = 1,
) -> list[dict]:
    """Trains explicit members as one program; each is an ordinary run directory.

    Args:
      config: the members' shared config.
      workdir: the directory the members' names are relative to.
      members: (run directory name, seed, setting: config path -> float) per member, as
        `plan_members` makes them (or any list: `mlb_jax.tune` names its trials).
      program: 'vmap', 'unrolled' or 'auto' (`resolve_program`; members with settings other
        than `traced_paths` of the method run unrolled).
      run_shards: see `sweep_and_evaluate`.

    Returns:
      One results dict per member, in `members` order; a member whose results.json exists
      is read back, not trained.

    Raises:
      ValueError: a setting field that is not a float hyper-parameter, 'vmap' with settings
        other than `traced_paths` of the method (or weight decays 0 and > 0), or a method that
        trains nothing.
    """
    started = time.time()
    varies = {path for _, _, setting in members for path in setting}
    workdir = paths.as_path(workdir)
    done = {
        name: json.loads((workdir / name / trainer.RESULTS_FILE).read_text())
        for name, _, _ in members
        if (workdir / name / trainer.RESULTS_FILE).exists()
    }
    todo = [member for member in members if member[0] not in done]
    if todo:
        config, recipe = recipes.resolve(config)
        check_sets(config, {path: [] for _, _, setting in todo for path in setting})
        trainer.validate_config(config)
        method = make_method(config.method)
        if not method.trains:
            raise ValueError(
                f"method {config.method.name!r} trains nothing: compare it with mlb_jax.compare"
            )
        program = resolve_program(program, varies, run_shards, traced_paths(method))
        decays = {float(s.get("train.weight_decay", config.train.weight_decay)) for *_, s in todo}
        if program == "vmap" and len(decays) > 1 and min(decays) == 0:
            raise ValueError(
                "train.weight_decay: members with 0 (no decay term in their optimiser) and > 0 "
                "cannot share the vmapped step: sweep values > 0 or use --program=unrolled"
            )
        meta = trainer.load_dataset(config)
        config = trainer.modalities_from_dataset(config, meta)
        configs = []
        for name, seed, setting in todo:
            cfg = config.copy_and_resolve_references()
            with cfg.unlocked():
                cfg.seed = seed
                for path, value in setting.items():
                    recipes.set_field(cfg, path, value)
            configs.append((name, cfg))
        # The optimiser's settings do not change the eval step; a method's may (MMCosine).
        share_eval = not varies - set(TRACED)
        mesh = run_mesh(
            trainer.make_mesh(config.train.get("num_devices", 0)), run_shards, len(todo)
        )
        opened, states = _open_members(configs, meta, workdir, recipe, share_eval=share_eval)
        try:
            results = _train_members(opened, states, started, program, mesh)
        finally:
            for m in opened:
                m.writer.close()
                m.ckpts.close()
        done |= {m.name: r for m, r in zip(opened, results, strict=True)}
    return [done[name] for name, _, _ in members]


def _train_members(
    members: list[Member],
    states: list[TrainState],
    started: float,
    program: str,
    mesh: jax.sharding.Mesh,
) -> list[dict]:
    """The epochs of every member in one train-step program, then each member's results.

    `mesh` holds the stacked states and batches (`run_mesh`); each member's own state is
    replicated over its run's mesh between epochs, where its validation runs.
    """
    first = members[0].run
    replicated = jax.NamedSharding(first.mesh, jax.P())
    cfg = first.config
    n = len(members)
    scales, update_args, settings = None, {}, {}
    if program == "vmap":
        lrs = [m.run.config.train.lr for m in members]
        if len(set(lrs)) > 1:
            scales = [lr / lrs[0] for lr in lrs]
        decays = [float(m.run.config.train.weight_decay) for m in members]
        if len(set(decays)) > 1:
            update_args["weight_decay"] = decays
        for field in first.method.traced_fields:
            values = [getattr(m.run.method, field) for m in members]
            if len(set(values)) > 1:
                settings[field] = values
    # The members' steps unjitted (jit's `__wrapped__`): JAX takes compiler options only from
    # the outermost jit, this one.
    train_step = jax.jit(
        member_step(
            [m.run.train_step.__wrapped__ for m in members],
            program,
            scales,
            mesh,
            update_args,
            settings,
        ),
        donate_argnums=0,
        compiler_options=compiler_options(cfg),
    )
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
        stacked = stack(states, mesh)
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
            stacked, metrics = train_step(stacked, pipeline.to_global(batch, mesh, run_axis=True))
            step += 1
            if not timing:
                jax.block_until_ready(metrics)
                timing["first_step_seconds"] = time.time() - step_start
            step_metrics.append(metrics)
        fetched = jax.device_get(step_metrics)  # every step's [N] scalars, one transfer
        states = [jax.device_put(s, replicated) for s in unstack(stacked, n)]
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
                print(f"{m.name}: {reason}: restoring the best checkpoint", flush=True)
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
    try:
        sets = parse_set(_SET.value)
        programs = {}
        for method in methods:  # every method's members checked before anything trains
            cfg = args.config.copy_and_resolve_references()
            with cfg.unlocked():
                cfg.method.name = method
            traced = traced_paths(make_method(cfg.method))
            programs[method] = resolve_program(_PROGRAM.value, set(sets), _RUN_SHARDS.value, traced)
    except ValueError as err:
        fail(str(err))
    setup_process(distributed=False, compilation_cache=DEFAULT_COMPILATION_CACHE)
    workdir = paths.as_path(args.workdir)
    seeds = list(args.seeds)
    results = {}
    try:
        for method in methods:
            cfg = args.config.copy_and_resolve_references()
            with cfg.unlocked():
                cfg.method.name = method
            plan = plan_members(seeds, sets)
            print(
                f"=== {method}: {len(plan)} members in one program ({programs[method]}) -> "
                f"{workdir / method}",
                flush=True,
            )
            runs = sweep_and_evaluate(
                cfg, workdir / method, seeds, programs[method], sets, _RUN_SHARDS.value
            )
            for (_, _, setting), res in zip(plan, runs, strict=True):
                row = f"{method} {setting_name(setting)}" if setting else method
                results.setdefault(row, []).append(res)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as err:
        fail(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))
    print(compare.write_comparison(results, seeds, workdir, args.config.data.name))


if __name__ == "__main__":
    from mlb_jax.runtime import parse_flags, relaunch

    relaunch()  # huge pages for XLA's buffers (mlb_jax.allocator), before anything else
    app.run(main, flags_parser=parse_flags)
