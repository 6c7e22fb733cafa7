"""Can the TFRecord input pipeline feed the train step? Examples/s of each, at real-data shapes.

For each shape a synthetic dataset is written once (``mlb_jax.data.synthetic.ensure_synthetic``,
cached under ``--cache-root``) with CREMA-D's audio shape (257 x 188 log-spectrogram) and 3 JPEG
frames of 112 x 112 or 224 x 224, and then timed three ways:

1. the pipeline alone: whole epochs of ``mlb_jax.data.pipeline.train_batches`` (global batch
   ``--batch``, default 16, one process), streamed from disk (``cache=False``: read, shuffle,
   JPEG decode, normalise) and from the in-memory cache (``cache=True``, after the epoch that
   fills it);
2. the train step alone: the project's jitted MLB step (full-width ResNet-18s, as in
   ``step_speed.py``) on a batch already on the device;
3. both together, as the trainer runs them: each step fed by the next streamed batch through
   ``pipeline.to_global``, so the pipeline's threads compete with the step for the CPUs.

The ratio pipeline examples/s / step examples/s (target >= 5) says how much headroom the
pipeline has; the slowdown of 3 against 2 says what it costs the step when both share a machine.

With ``--augment`` the training pipeline also applies the reference's augmentation
(``mlb_jax.data.augment``: a random resized crop to 224 x 224 and a flip per frame) to frames
stored at the converters' default 256 x 341 (shape ``256x341``, 4 frames as AVE / UCF101), and
the step is built for the 224 x 224 crops it is fed.

    python benchmarks/input_pipeline.py                     # 112 and 224, 320 examples
    python benchmarks/input_pipeline.py --shapes=112 --step-reps=2
    python benchmarks/input_pipeline.py --shapes=256x341 --augment --batch=32 --n-train=192
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
    "256x341": ((257, 188), (4, 256, 341, 3)),  # the converters' default stored frames
}
CROP = (224, 224)  # --augment: the reference's RandomResizedCrop(224)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="112,224", help=f"comma-separated, of {list(SHAPES)}")
    parser.add_argument("--n-train", type=int, default=320, help="training examples written")
    parser.add_argument("--epochs", type=int, default=2, help="timed pipeline epochs per mode")
    parser.add_argument("--step-reps", type=int, default=3, help="timed train steps")
    parser.add_argument("--base-width", type=int, default=64, help="ResNet width of the step")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all)")
    parser.add_argument("--batch", type=int, default=16, help="global batch of pipeline and step")
    parser.add_argument(
        "--augment", action="store_true", help="random resized crop to 224x224 + flip per frame"
    )
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
        n_val=args.batch,
        n_test=args.batch,
    )
    print(f"  dataset {data_dir} ready in {time.perf_counter() - start:.1f} s", flush=True)
    return schema.load_meta(data_dir, ["audio", "video"])


def train_batches(args: argparse.Namespace, meta: Any, *, cache: bool, epoch: int) -> Any:
    """The trainer's training batches of one epoch, augmented with ``--augment``."""
    from mlb_jax.data import augment, pipeline

    return pipeline.train_batches(
        meta,
        "train",
        global_batch_size=args.batch,
        seed=0,
        epoch=epoch,
        cache=cache,
        frame_size=CROP if args.augment else None,
        augment=augment.Augment() if args.augment else None,
    )


def epoch_rate(args: argparse.Namespace, meta: Any, *, cache: bool, epoch: int) -> float:
    """Examples/s of one full training epoch of the pipeline, batches pulled as numpy."""
    start = time.perf_counter()
    examples = 0
    for batch in train_batches(args, meta, cache=cache, epoch=epoch):
        examples += len(batch["label"])
    return examples / (time.perf_counter() - start)


def measure_pipeline(args: argparse.Namespace, meta: Any) -> dict[str, float]:
    """Median examples/s of ``args.epochs`` streamed and cached epochs."""
    streamed = [epoch_rate(args, meta, cache=False, epoch=e) for e in range(args.epochs)]
    first_cached = epoch_rate(args, meta, cache=True, epoch=0)  # decodes the split into memory
    cached = [epoch_rate(args, meta, cache=True, epoch=e + 1) for e in range(args.epochs)]
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
    batches = train_batches(args, meta, cache=False, epoch=0)
    resident = pipeline.to_global(next(batches), mesh)
    step, _ = step_speed.build_jax_step(
        "mlb", args.base_width, resident, num_classes=meta.num_classes
    )
    print(f"  train step compiled in {step.compile_seconds:.1f} s", flush=True)

    def fed() -> None:
        step.run(pipeline.to_global(next(batches), mesh))

    reps = min(args.step_reps, meta.split_sizes["train"] // args.batch - 2)
    times = step_speed.alternate({"resident": lambda: step.run(resident), "fed": fed}, reps)
    alone, together = statistics.median(times["resident"]), statistics.median(times["fed"])
    print(
        step_speed.describe_times("step alone (resident batch)", times["resident"], args.batch)
        + "\n"
        + step_speed.describe_times("step fed by the streamed pipeline", times["fed"], args.batch),
        flush=True,
    )
    return alone, together


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = step_speed.configure(threads=args.threads)
    import jax

    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {threads} thread(s); "
        f"batch {args.batch}, {args.n_train} training examples, step: MLB, base width "
        f"{args.base_width}; augmentation "
        f"{'random resized crop to 224x224 + flip, per frame' if args.augment else 'off'}",
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
        step_rate = args.batch / alone
        print(
            f"  pipeline / step consumption: streamed {rates['streamed'] / step_rate:.1f}x, "
            f"cached {rates['cached'] / step_rate:.1f}x (target >= 5x); "
            f"step fed by the pipeline / step alone: {together / alone:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
