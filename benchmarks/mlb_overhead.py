"""What MLB costs per train step: MLB against multi-loss and joint training, same model and batch.

MLB adds to multi-loss only the modality scores (a softmax of each unimodal head's logits, already
computed for the loss) and one multiply per gradient leaf; joint training also drops the unimodal
cross-entropies. All three steps are the project's own jitted train step (set up by
``mlb_jax.steps.create_train_state``, as ``mlb_jax.trainer.setup`` does; see ``step_speed.py``),
compiled for the same batch and started from the same initialisation. Repetitions alternate
between the methods, rotating which goes first, so that load from other processes hits all
alike. Two measures are printed:

* wall-clock step time of each method and the ratios MLB / multi-loss (target <= 1.03) and
  MLB / joint, as medians over the repetitions;
* XLA's cost analysis of each compiled step (floating-point operations and bytes accessed),
  which does not depend on machine load.

    python benchmarks/mlb_overhead.py                 # full width, audio 257x188, video 3x112x112
    python benchmarks/mlb_overhead.py --quick         # smaller shapes, fewer repetitions
    python benchmarks/mlb_overhead.py --device=gpu
"""

import argparse
import statistics
import sys
from typing import Any

import step_speed

METHODS = ("joint", "multiloss", "mlb")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--shape", choices=sorted(step_speed.SHAPES), default="112")
    parser.add_argument("--quick", action="store_true", help="--shape=quick --reps=3")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=3, help="video frames per clip")
    parser.add_argument("--base-width", type=int, default=64, help="ResNet width (64 = full)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all)")
    parser.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS")
    args = parser.parse_args(argv)
    if args.quick:
        args.shape, args.reps = "quick", min(args.reps, 3)
    return args


def cost(step: step_speed.JaxStep) -> dict[str, float]:
    """XLA's cost analysis of a compiled step: {'flops': ..., 'bytes accessed': ...}."""
    analysis: Any = step.step.cost_analysis()
    if isinstance(analysis, list):  # older JAX: one dict per computation
        analysis = analysis[0]
    return {key: float(analysis.get(key, 0.0)) for key in ("flops", "bytes accessed")}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = step_speed.configure(
        device=args.device, threads=args.threads, xla_flags=args.xla_flags
    )
    import jax

    if args.device == "gpu" and jax.default_backend() != "gpu":
        print(f"--device=gpu: JAX's backend is {jax.default_backend()!r}; run with --device=cpu")
        sys.exit(2)
    spectrogram, frames = step_speed.SHAPES[args.shape]
    frames = (args.frames, *frames[1:])
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {threads} thread(s); "
        f"audio {spectrogram[0]}x{spectrogram[1]}, video {frames[0]}x{frames[3]}x{frames[1]}x"
        f"{frames[2]}, batch {args.batch}, base width {args.base_width}, float32",
        flush=True,
    )
    batch = step_speed.jax_batch(step_speed.make_batch(args.batch, spectrogram, frames))
    steps = {}
    for method in METHODS:
        steps[method], _ = step_speed.build_jax_step(method, args.base_width, batch)
        print(f"  compiled {method:<9} in {steps[method].compile_seconds:.1f} s", flush=True)
    costs = {method: cost(step) for method, step in steps.items()}
    runners = {method: (lambda step=step: step.run(batch)) for method, step in steps.items()}
    times = step_speed.alternate(runners, args.reps, args.warmup)
    for method in METHODS:
        print(
            step_speed.describe_times(method, times[method], args.batch)
            + f"; XLA: {costs[method]['flops'] / 1e9:.2f} GFLOP, "
            f"{costs[method]['bytes accessed'] / 2**30:.2f} GiB accessed"
        )
    for numerator, denominator in (("mlb", "multiloss"), ("mlb", "joint"), ("multiloss", "joint")):
        flops = costs[numerator]["flops"] / costs[denominator]["flops"]
        moved = costs[numerator]["bytes accessed"] / costs[denominator]["bytes accessed"]
        print(
            "  "
            + step_speed.ratio_summary(times, numerator, denominator)
            + f"; XLA flops ratio {flops:.4f}, bytes ratio {moved:.4f}"
        )
    median = {m: statistics.median(t) for m, t in times.items()}
    verdict = "met" if median["mlb"] / median["multiloss"] <= 1.03 else "NOT met"
    print(f"  target MLB/multi-loss <= 1.03 (medians): {verdict}")


if __name__ == "__main__":
    main()
