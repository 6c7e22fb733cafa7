"""The ResNet stem's max-pooling gradient: XLA's select-and-scatter against models/pooling.py.

Times the value and gradient (`jax.vjp` and its backward pass, jitted) of the 3x3 stride-2 max
pooling on the two stems' output maps of the step_speed.py shapes, with
`lax.reduce_window(max)`'s own gradient and with `mlb_jax.models.pooling.max_pool_3x3_s2`, and
prints each time (min of --reps) and their ratio:

    python benchmarks/pool_speed.py
    python benchmarks/pool_speed.py --shapes 112,224 --reps 10
"""

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import step_speed  # benchmarks/ is not a package: imported from its folder

# The stems' outputs (N, H, W, 64) for batch 16: audio 257x188 -> 129x94; video 3 frames.
MAPS = {
    "112": {"audio": (16, 129, 94, 64), "video": (48, 56, 56, 64)},
    "224": {"audio": (16, 129, 94, 64), "video": (48, 112, 112, 64)},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="112,224", help=f"comma list of {list(MAPS)}")
    parser.add_argument("--reps", type=int, default=5, help="timed calls, the minimum printed")
    parser.add_argument("--threads", type=int, default=0, help="0 = every CPU")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = step_speed.configure(threads=args.threads)
    import jax
    import jax.numpy as jnp

    from mlb_jax.machine import cpu_description
    from mlb_jax.models import pooling

    def value_and_grad(pool):
        def run(x, dy):
            y, pool_vjp = jax.vjp(pool, x)
            return y, pool_vjp(dy)[0]

        return jax.jit(run)

    variants = {
        "select-and-scatter": value_and_grad(pooling.max_pool_3x3_s2_xla),
        "pooling.py": value_and_grad(pooling.max_pool_3x3_s2),
    }
    print(f"{cpu_description()}; {threads} thread(s); float32; min of {args.reps} calls")
    for shape in args.shapes.split(","):
        for stem, dims in MAPS[shape].items():
            x = jax.random.normal(jax.random.key(0), dims, jnp.float32)
            dy = jnp.ones(pooling.max_pool_3x3_s2_xla(x).shape, jnp.float32)
            best = {}
            for name, fn in variants.items():
                jax.block_until_ready(fn(x, dy))
                times = []
                for _ in range(args.reps):
                    start = time.perf_counter()
                    jax.block_until_ready(fn(x, dy))
                    times.append(time.perf_counter() - start)
                best[name] = min(times)
            a, b = best.values()
            print(
                f"{shape} {stem} map {dims}: select-and-scatter {1000 * a:6.1f} ms, "
                f"pooling.py {1000 * b:6.1f} ms, ratio {b / a:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
