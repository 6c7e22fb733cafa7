"""What the CPU convolution plans buy: one jitted MLB train step under each conv choice.

Builds the project's train step (``mlb_jax.steps.create_train_state`` and ``make_train_step``,
``jax.jit`` with the state donated, as the trainer does) once per variant and shape, in one
process from the same initial parameters and batch. A variant is a ``config.model.conv``
choice: ``tuned`` (`mlb_jax.models.conv_tune`: each layer's algorithms measured on this
machine), ``tuned:S`` (the same with ``config.model.conv_max_scratch=S``, the memory bound),
``plan`` (`mlb_jax.models.conv.plan`'s fixed thresholds) or ``xla`` (XLA's convolution
everywhere, the reference of every ratio). Repetitions alternate between the variants
(rotating which goes first), so that load from other processes on a shared machine hits all
alike: read the ratios of step times. Memory: XLA's buffer plan of each compiled step
(``compiled.memory_analysis()``: temporaries, i.e. activations kept for the backward pass and
scratch, and arguments) and, with ``--rss``, the peak resident set size of each variant run
alone in a child process (Linux ``VmHWM``).

Shapes: ``demo`` is configs/synthetic_av.py (base width 8, audio 64x48, video 3 frames of
64x64, batch 64); ``112`` and ``224`` are benchmarks/step_speed.py's full-width ResNet-18
shapes (base width 64, audio 257x188, video 3 frames of 112x112 or 224x224, batch 16).

    python benchmarks/conv_choice.py                       # demo and 112, 3 repetitions
    python benchmarks/conv_choice.py --shapes demo --reps 10
    python benchmarks/conv_choice.py --rss                 # also peak RSS (slow: recompiles)
    python benchmarks/conv_choice.py --shapes 112 --variants tuned,tuned:2,tuned:0,xla --rss
"""

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import step_speed  # benchmarks/ is on sys.path when a script here runs

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = "tuned,plan,xla"  # the default --variants; 'xla' is always added


@dataclasses.dataclass(frozen=True)
class Shape:
    """One benchmark configuration.

    Attributes:
        base_width: ResNet-18 base width (64 = standard).
        batch: global batch size B.
        audio: spectrogram (F, T).
        video: clip (T, H, W, C).
        num_classes: K.
    """

    base_width: int
    batch: int
    audio: tuple[int, int]
    video: tuple[int, int, int, int]
    num_classes: int


SHAPES = {
    "demo": Shape(8, 64, (64, 48), (3, 64, 64, 3), 8),  # configs/synthetic_av.py
    "112": Shape(64, 16, (257, 188), (3, 112, 112, 3), 6),  # benchmarks/step_speed.py
    "224": Shape(64, 16, (257, 188), (3, 224, 224, 3), 6),
}


def load_config(shape: Shape, variant: str, method: str) -> Any:
    """configs/synthetic_av.py with the shape's width, the variant's conv fields, constant LR."""
    conv, _, scratch = variant.partition(":")
    return step_speed.load_config(method, shape.base_width, conv, float(scratch or "inf"))


def make_batch(shape: Shape, seed: int = 0) -> dict[str, Any]:
    """Random float32 inputs and labels in the pipeline's format, on the default device."""
    import jax

    rng = np.random.default_rng(seed)
    batch = {
        "inputs": {
            "audio": rng.standard_normal((shape.batch, *shape.audio), np.float32),
            "video": rng.standard_normal((shape.batch, *shape.video), np.float32),
        },
        "label": rng.integers(0, shape.num_classes, shape.batch).astype(np.int32),
        "mask": np.ones(shape.batch, bool),
    }
    return jax.device_put(batch)


@dataclasses.dataclass
class Step:
    """A compiled train step with its (donated) state.

    Attributes:
        step: ``(state, batch) -> (state, metrics)``.
        state: the current train state.
        compile_seconds: trace, lower and compile time.
        memory: XLA's buffer plan of the compiled step, bytes by kind (empty if unavailable).
    """

    step: Callable[..., Any]
    state: Any
    compile_seconds: float
    memory: dict[str, int]

    def run(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Runs one step to completion and returns its metrics."""
        import jax

        self.state, metrics = self.step(self.state, batch)
        jax.block_until_ready((self.state, metrics))
        return metrics


def build_step(shape: Shape, variant: str, method: str, batch: dict[str, Any]) -> Step:
    """The trainer's jitted train step for one variant (see module doc), compiled for ``batch``."""
    import jax

    from mlb_jax.models.conv import resolve
    from mlb_jax.steps import compiler_options, create_train_state, make_train_step

    config = load_config(shape, variant, method)
    conv = config.model.conv
    if resolve(conv) != conv:
        raise SystemExit(f"conv={conv!r} resolves to {resolve(conv)!r} on this backend")
    input_shapes = {"audio": shape.audio, "video": shape.video}
    graphdef, method_obj, tx, state = create_train_state(config, shape.num_classes, input_shapes)
    jitted = jax.jit(
        make_train_step(graphdef, method_obj, tx),
        donate_argnums=0,
        compiler_options=compiler_options(config),
    )
    start = time.perf_counter()
    compiled = jitted.lower(state, batch).compile()
    seconds = time.perf_counter() - start
    memory = {}
    try:
        analysis = compiled.memory_analysis()
        for kind in ("temp", "argument", "output", "alias", "generated_code"):
            memory[kind] = int(getattr(analysis, f"{kind}_size_in_bytes"))
    except Exception:  # not every backend reports a buffer plan
        pass
    return Step(compiled, state, seconds, memory)


def peak_rss_kib() -> int:
    """This process's peak resident set size so far (Linux ``VmHWM``), KiB."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def probe(shape_name: str, conv: str, method: str) -> None:
    """Child mode: one choice alone, compile and two steps; prints peak RSS as JSON."""
    shape = SHAPES[shape_name]
    batch = make_batch(shape)
    before = peak_rss_kib()
    step = build_step(shape, conv, method, batch)
    for _ in range(2):
        step.run(batch)
    print(json.dumps({"before_kib": before, "peak_kib": peak_rss_kib()}))


def child_rss(shape_name: str, conv: str, method: str) -> dict[str, int]:
    """Runs `probe` in a fresh Python and returns its JSON."""
    command = [
        sys.executable,
        __file__,
        f"--probe={shape_name},{conv}",
        f"--method={method}",
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def mib(n_bytes: float) -> str:
    """Bytes as MiB with one decimal."""
    return f"{n_bytes / 2**20:.1f} MiB"


def measure(shape_name: str, args: argparse.Namespace) -> None:
    """Compiles every variant at one shape, times them alternately, prints ratios and memory."""
    shape = SHAPES[shape_name]
    variants = [v for v in args.variants.split(",") if v != "xla"] + ["xla"]
    print(
        f"\n{shape_name}: base width {shape.base_width}, batch {shape.batch}, audio "
        f"{shape.audio[0]}x{shape.audio[1]}, video {shape.video[0]}x{shape.video[1]}x"
        f"{shape.video[2]}, method {args.method}",
        flush=True,
    )
    batch = make_batch(shape)
    steps = {v: build_step(shape, v, args.method, batch) for v in variants}
    losses = ", ".join(f"{v} {float(steps[v].run(batch)['loss']):.6f}" for v in variants)
    print(f"  first-step loss: {losses} (same parameters and batch; float32 rounding apart)")
    times = step_speed.alternate({v: lambda v=v: steps[v].run(batch) for v in variants}, args.reps)
    width = max(map(len, variants))
    for v in variants:
        median = statistics.median(times[v])
        print(
            f"  {v:<{width}} step {1000 * median:8.1f} ms median ({1000 * min(times[v]):.1f} "
            f"min, {args.reps} reps) = {shape.batch / median:7.1f} samples/s; compile "
            f"{steps[v].compile_seconds:.1f} s",
            flush=True,
        )
    for v in variants[:-1]:
        print("  " + step_speed.ratio_summary(times, v, "xla"))
    if all(steps[v].memory for v in variants):
        for kind in ("temp", "argument"):
            cells = ", ".join(f"{v} {mib(steps[v].memory[kind])}" for v in variants)
            print(f"  XLA buffer plan, {kind}: {cells}")
    if args.rss:
        rss = {v: child_rss(shape_name, v, args.method) for v in variants}
        for v in variants:
            grown = rss[v]["peak_kib"] - rss[v]["before_kib"]
            print(
                f"  peak RSS alone, {v}: {rss[v]['peak_kib'] / 1024:.0f} MiB "
                f"({grown / 1024:.0f} MiB above the process before building the step); "
                f"/xla {rss[v]['peak_kib'] / rss['xla']['peak_kib']:.2f}",
                flush=True,
            )


def main(argv: list[str] | None = None) -> None:
    """Parses arguments and runs the benchmark (or one child probe)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes", default="demo,112", help=f"comma-separated, from {sorted(SHAPES)}"
    )
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions of each choice")
    parser.add_argument(
        "--variants",
        default=VARIANTS,
        help="comma-separated conv choices: tuned, tuned:<conv_max_scratch>, plan, xla",
    )
    parser.add_argument("--method", default="mlb", help="training method (default mlb)")
    parser.add_argument(
        "--rss", action="store_true", help="also peak RSS, each choice alone in a child process"
    )
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # child mode: 'shape,conv'
    args = parser.parse_args(argv)
    from mlb_jax.allocator import allocator_mode

    malloc = allocator_mode()  # the heap setting it started with (mlb_jax.allocator)
    if args.probe:
        shape_name, conv = args.probe.split(",")
        probe(shape_name, conv, args.method)
        return
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape {unknown[0]!r}; choose from {sorted(SHAPES)}")
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    import jax

    from mlb_jax.machine import cpu_description

    threads = len(os.sched_getaffinity(0))
    print(
        f"{cpu_description()}; jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{threads} CPU thread(s), malloc {malloc}"
    )
    for shape_name in args.shapes.split(","):
        measure(shape_name, args)


if __name__ == "__main__":
    main()
