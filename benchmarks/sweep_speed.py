"""Time per member of an N-member sweep (mlb_jax.sweep) against one single run's train step.

The sweep's step is one jitted program of N members' steps on their stacked states, each with
its own batch, in both of mlb_jax.sweep's forms: 'vmap' (`jax.vmap` of the step over the run
axis) and 'unrolled' (the N steps side by side); the single run's step is the trainer's own
`jax.jit(train_step)`. Both are the
step `mlb_jax.steps.make_train_step` builds for the same config, on one device, float32. The
repetitions alternate between the two programs (step_speed.py's `alternate`), so load from
other processes hits both alike; the figure to read is

    per-member ratio = (sweep step time / N) / (single step time)

below 1: the sweep trains each member faster than a run of its own; 1/ratio is the throughput
gain over running the N runs one after another.

    python benchmarks/sweep_speed.py                        # demo and 112 shapes, N = 1, 4, 8
    python benchmarks/sweep_speed.py --shapes=demo --members=1,2,4,8
    python benchmarks/sweep_speed.py --device=gpu --shapes=112,224
    python benchmarks/sweep_speed.py --shapes=112 --members=8 --programs=vmap --reps=2

`--programs` times one form alone (each process holds one compiled sweep, its states and its
temporaries): N = 8 at the 112 shapes needs this on a 24 GiB machine.
"""

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import step_speed  # benchmarks/ is not a package: imported from its folder

# name -> (base width, spectrogram (F, T), frames (T, H, W, C), batch)
SHAPES = {
    "demo": (8, (64, 48), (3, 64, 64, 3), 64),  # configs/synthetic_av.py
    "112": (64, (257, 188), (3, 112, 112, 3), 16),  # full-width ResNet-18, CREMA-D's input
    "224": (64, (257, 188), (3, 224, 224, 3), 16),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="demo,112", help=f"comma list of {list(SHAPES)}")
    parser.add_argument("--members", default="1,4,8", help="sweep sizes N, comma list")
    parser.add_argument("--method", default="mlb")
    parser.add_argument("--reps", type=int, default=5, help="timed steps of each program")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--threads", type=int, default=0, help="0 = every CPU")
    parser.add_argument(
        "--programs", default="vmap,unrolled", help="the sweep forms to time, comma list"
    )
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, shape: str, members: int) -> dict[str, float]:
    """Prints the timings of one (shape, N); returns program -> per-member ratio."""
    import jax
    import jax.numpy as jnp

    from mlb_jax.steps import compiler_options, create_train_state, make_train_step
    from mlb_jax.sweep import member_step

    width, spectrogram, frames, batch_size = SHAPES[shape]
    single, _ = step_speed.build_jax_step(
        args.method,
        width,
        step_speed.jax_batch(step_speed.make_batch(batch_size, spectrogram, frames)),
        conv="xla" if shape == "demo" else "auto",
    )
    batches = [
        step_speed.make_batch(batch_size, spectrogram, frames, seed=i) for i in range(members)
    ]
    stacked_batch = jax.device_put(
        jax.tree.map(lambda *xs: np.stack(xs), *[step_speed.jax_batch(b) for b in batches]),
        jax.devices()[0],
    )
    states = []
    for seed in range(members):
        config = step_speed.load_config(args.method, width, "xla" if shape == "demo" else "auto")
        config.seed = seed
        input_shapes = {"audio": spectrogram, "video": frames}
        graphdef, method, tx, state = create_train_state(
            config, step_speed.NUM_CLASSES, input_shapes
        )
        states.append(state)
    stacked = jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *states), jax.devices()[0])
    del states
    step = make_train_step(graphdef, method, tx)
    programs = {name: member_step([step] * members, name) for name in args.programs.split(",")}
    runners = {"single": lambda: single.run(single_batch)}
    compile_seconds = {}
    for name, program in programs.items():
        start = time.perf_counter()
        jitted = jax.jit(program, donate_argnums=0, compiler_options=compiler_options(config))
        compiled = jitted.lower(stacked, stacked_batch).compile()
        compile_seconds[name] = time.perf_counter() - start
        # The last program takes `stacked` itself: one copy of the N states fewer in memory.
        last = name == list(programs)[-1]
        holder = {"state": stacked if last else jax.tree.map(jnp.copy, stacked)}

        def run(compiled=compiled, holder=holder):
            holder["state"], metrics = compiled(holder["state"], stacked_batch)
            jax.block_until_ready((holder["state"], metrics))

        runners[name] = run
    single_batch = step_speed.jax_batch(batches[0])
    times = step_speed.alternate(runners, args.reps)
    single_s = statistics.median(times["single"])
    ratios = {}
    parts = [f"{shape:>5} N={members}: single step {1000 * single_s:7.1f} ms"]
    for name in programs:
        member_s = statistics.median(times[name]) / members
        ratios[name] = member_s / single_s
        parts.append(
            f"{name} {1000 * member_s:7.1f} ms per member, ratio {ratios[name]:.3f} "
            f"(compile {compile_seconds[name]:.1f}s)"
        )
    print(" | ".join(parts), flush=True)
    return ratios


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = step_speed.configure(device=args.device, threads=args.threads)
    import jax

    from mlb_jax.machine import cpu_description
    from mlb_jax.sweep import PROGRAMS

    unknown = sorted(set(args.programs.split(",")) - set(PROGRAMS))
    if unknown:
        sys.exit(f"sweep_speed.py: --programs: unknown {unknown}; choose among {list(PROGRAMS)}")

    device = jax.devices()[0]
    print(
        f"{cpu_description()}; "
        f"{args.method}, float32, one {device.platform} device ({device.device_kind}), "
        f"{threads} threads, {args.reps} timed steps each (medians)",
        flush=True,
    )
    for shape in args.shapes.split(","):
        width, spectrogram, frames, batch = SHAPES[shape]
        print(f"--- {shape}: width {width}, audio {spectrogram}, video {frames}, batch {batch}")
        for members in (int(n) for n in args.members.split(",")):
            measure(args, shape, members)


if __name__ == "__main__":
    main()
