"""Can the TFRecord input pipeline feed the train step? Examples/s of each, at real-data shapes.

For each shape a synthetic dataset is written once (``mlb_jax.data.synthetic.ensure_synthetic``,
cached under ``--cache-root``) with CREMA-D's audio shape (257 x 188 log-spectrogram) and 3 JPEG
frames of 112 x 112 or 224 x 224, and then timed three ways:

1. the pipeline alone: whole epochs of ``mlb_jax.data.pipeline.train_batches`` (global batch 16,
   one process), streamed from disk (``cache=False``: read, shuffle, JPEG decode, normalise)
   and from the in-memory cache (``cache=True``, after the epoch that fills it);
2. the train step alone: the project's jitted MLB step (full-width ResNet-18s, as in
   ``step_speed.py``) on a batch already on the device;
3. both together, as the trainer runs them: each step fed by the next streamed batch through
   ``pipeline.to_global``, so the pipeline's threads compete with the step for the CPUs.

The ratio pipeline examples/s / step examples/s (target >= 5) says how much headroom the
pipeline has; the slowdown of 3 against 2 says what it costs the step when both share a machine.

    python benchmarks/input_pipeline.py                     # 112 and 224, 320 examples
    python benchmarks/input_pipeline.py --shapes=112 --step-reps=2
"""

import argparse
import pathlib
import statistics
import tempfile
import time
from typing import Any

import step_speed

# name -> (spectrogram (F, T), frames (T, H, W, C)).
SHAPES = {
    "112": ((257, 188), (3, 112, 112, 3)),
    "224": ((257, 188), (3, 224, 224, 3)),
    "quick": ((128, 94), (3, 56, 56, 3)),
}
BATCH = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="112,224", help=f"comma-separated, of {list(SHAPES)}")
    parser.add_argument("--n-train", type=int, default=320, help="training examples written")
    parser.add_argument("--epochs", type=int, default=2, help="timed pipeline epochs per mode")
    parser.add_argument("--step-reps", type=int, default=3, help="timed train steps")
    parser.add_argument("--base-width", type=int, default=64, help="ResNet width of the step")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all)")
    parser.add_argument(
        "--cache-root",
        default=str(pathlib.Path(tempfile.gettempdir()) / "mlb_jax_bench_data"),
        help="where the synthetic datasets are written (reused when present)",
    )
    args = parser.parse_args(argv)
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape {unknown[0]!r}; choose from {list(SHAPES)}")
    return args


def write_dataset(args: argparse.Namespace, shape: str) -> Any:
    """Writes (or finds) the synthetic dataset of this shape and returns its metadata."""
    from mlb_jax.data import schema, synthetic

    spectrogram, frames = SHAPES[shape]
    start = time.perf_counter()
    data_dir = synthetic.ensure_synthetic(
        args.cache_root,
        spectrogram_shape=spectrogram,
        frames_shape=frames,
        n_train=args.n_train,
        n_val=BATCH,
        n_test=BATCH,
    )
    print(f"  dataset {data_dir} ready in {time.perf_counter() - start:.1f} s", flush=True)
    return schema.load_meta(data_dir, ["audio", "video"])


def epoch_rate(meta: Any, *, cache: bool, epoch: int) -> float:
    """Examples/s of one full training epoch of the pipeline, batches pulled as numpy."""
    from mlb_jax.data import pipeline

    start = time.perf_counter()
    examples = 0
    for batch in pipeline.train_batches(
        meta, "train", global_batch_size=BATCH, seed=0, epoch=epoch, cache=cache
    ):
        examples += len(batch["label"])
    return examples / (time.perf_counter() - start)


def measure_pipeline(args: argparse.Namespace, meta: Any) -> dict[str, float]:
    """Median examples/s of ``args.epochs`` streamed and cached epochs."""
    streamed = [epoch_rate(meta, cache=False, epoch=e) for e in range(args.epochs)]
    first_cached = epoch_rate(meta, cache=True, epoch=0)  # decodes the split into memory
    cached = [epoch_rate(meta, cache=True, epoch=e + 1) for e in range(args.epochs)]
    print(
        f"  pipeline alone: streamed {statistics.median(streamed):7.1f} examples/s "
        f"(epochs: {', '.join(f'{r:.1f}' for r in streamed)}); cached "
        f"{statistics.median(cached):7.1f} examples/s (first, filling epoch {first_cached:.1f})",
        flush=True,
    )
    return {"streamed": statistics.median(streamed), "cached": statistics.median(cached)}


def measure_step(args: argparse.Namespace, meta: Any) -> tuple[float, float]:
    """Step time alone on a resident batch, and fed by the streamed pipeline (seconds)."""
    from mlb_jax.data import pipeline
    from mlb_jax.trainer import make_mesh

    mesh = make_mesh(1)  # the trainer's own ('data',) mesh, over one device
    batches = pipeline.train_batches(
        meta, "train", global_batch_size=BATCH, seed=0, epoch=0, cache=False
    )
    resident = pipeline.to_global(next(batches), mesh)
    step, _ = step_speed.build_jax_step(
        "mlb", args.base_width, resident, num_classes=meta.num_classes
    )
    print(f"  train step compiled in {step.compile_seconds:.1f} s", flush=True)

    def fed() -> None:
        step.run(pipeline.to_global(next(batches), mesh))

    reps = min(args.step_reps, meta.split_sizes["train"] // BATCH - 2)
    times = step_speed.alternate({"resident": lambda: step.run(resident), "fed": fed}, reps)
    alone, together = statistics.median(times["resident"]), statistics.median(times["fed"])
    print(
        step_speed.describe_times("step alone (resident batch)", times["resident"], BATCH)
        + "\n"
        + step_speed.describe_times("step fed by the streamed pipeline", times["fed"], BATCH),
        flush=True,
    )
    return alone, together


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = step_speed.configure(threads=args.threads)
    import jax

    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {threads} thread(s); "
        f"batch {BATCH}, {args.n_train} training examples, step: MLB, base width "
        f"{args.base_width}",
        flush=True,
    )
    for shape in args.shapes.split(","):
        spectrogram, frames = SHAPES[shape]
        print(
            f"\nshape {shape}: audio {spectrogram[0]}x{spectrogram[1]}, video "
            f"{frames[0]}x{frames[1]}x{frames[2]}x{frames[3]} (T x H x W x C, JPEG)",
            flush=True,
        )
        meta = write_dataset(args, shape)
        rates = measure_pipeline(args, meta)
        alone, together = measure_step(args, meta)
        step_rate = BATCH / alone
        print(
            f"  pipeline / step consumption: streamed {rates['streamed'] / step_rate:.1f}x, "
            f"cached {rates['cached'] / step_rate:.1f}x (target >= 5x); "
            f"step fed by the pipeline / step alone: {together / alone:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
