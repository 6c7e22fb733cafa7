"""Train-step speed of mlb_jax against an equivalent PyTorch implementation.

Both sides run the same model (two full-width ResNet-18 encoders, late-linear fusion, unimodal
heads), the same method (MLB by default: multi-loss plus per-modality gradient scaling), SGD
with momentum 0.9, float32, the same batch and the same number of threads. The JAX side is the
project's own jitted step, built as ``mlb_jax.trainer.setup`` builds it
(``mlb_jax.steps.create_train_state``, then ``make_train_step`` under ``jax.jit`` with the state
donated); the PyTorch side is ``benchmarks/torch_reference.py``.

Repetitions alternate between the frameworks (and which of the two goes first), so that load
from other processes on a shared machine hits both alike; the figure to read is the ratio of
step times, measured within one process run.

    python benchmarks/step_speed.py                  # both real shapes, full width, batch 16
    python benchmarks/step_speed.py --quick          # small shapes, a minute
    python benchmarks/step_speed.py --device=gpu     # JAX CUDA against torch CUDA
    python benchmarks/step_speed.py --check          # same weights: do the two agree?
    python benchmarks/step_speed.py --with-xla-conv  # also JAX with XLA's convolution only
    python benchmarks/step_speed.py --with-tuned-conv --cold-conv-cache  # measured plan too

The JAX step's convolutions are ``config.model.conv='auto'`` (``--conv``) as built without
timing: on the CPU, the plan's fixed thresholds (the trainer's ``'auto'`` times the plan's step
against XLA's and takes the faster, `mlb_jax.conv_auto`; ``--with-xla-conv`` shows both).
``tuned`` measures each layer's algorithms on this machine (`mlb_jax.models.conv_tune`, cached
in ``~/.cache/mlb_jax/conv_plans``) while compiling, the first time a machine sees a layer
shape (``--cold-conv-cache`` forces that, to show the cost), and lists each layer's choice.

Heap (``--malloc``): by default the process runs as started, where every step of either
framework faults in its large buffers 4 KiB at a time; ``--malloc=hugepages`` relaunches it
with glibc's huge pages for large blocks, as mlb_jax's entry points do, and ``--malloc=reuse``
keeps large blocks for reuse in-process (`mlb_jax.allocator`).
In one process with huge pages the two frameworks' steps disturb each other (JAX steps of
2.0-2.4 s every few repetitions against 1.1 s alone), so `heap_speed.py` compares the heap
settings with each framework alone in its own process. The header line says which ran.

Peak memory: on the CPU each framework is run again alone in a child process and its peak
resident set size is read from Linux's ``VmHWM`` (``/proc/self/status``; ``ru_maxrss`` would
carry the parent's peak into the child); on a GPU the
frameworks' own allocator peaks (``memory_stats()['peak_bytes_in_use']``,
``torch.cuda.max_memory_allocated``) are read in the same process.
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_CLASSES = 6  # CREMA-D

# name -> (spectrogram (F, T), frames (T, H, W, C)); T = 3 frames at 1 fps as MLB's CREMA-D.
SHAPES: dict[str, tuple[tuple[int, int], tuple[int, int, int, int]]] = {
    "112": ((257, 188), (3, 112, 112, 3)),
    "224": ((257, 188), (3, 224, 224, 3)),
    "quick": ((128, 94), (3, 56, 56, 3)),
}


# ----------------------------------------------------------------------------- set-up


def configure(
    *, device: str = "cpu", threads: int = 0, xla_flags: str = "", malloc: str = "system"
) -> int:
    """Sets the process up for a fair comparison; call before JAX or PyTorch is imported.

    Args:
        device: 'cpu' (JAX forced onto the CPU) or 'gpu' (JAX and PyTorch on CUDA).
        threads: CPU threads for both frameworks (0 = every CPU this process may use). Fewer
            than that pins the process to the first ``threads`` CPUs, which sizes XLA's thread
            pool; PyTorch gets ``torch.set_num_threads(threads)`` in `import_torch`.
        xla_flags: extra ``XLA_FLAGS`` (appended to any already set).
        malloc: 'system' (the process as started), 'hugepages' (re-executed with huge pages
            for large heap blocks, as mlb_jax's entry points do) or 'reuse' (large blocks kept
            for reuse, in-process): `mlb_jax.allocator`.

    Returns:
        The thread count used.
    """
    if "jax" in sys.modules:
        raise RuntimeError("configure() must run before jax is imported")
    available = sorted(os.sched_getaffinity(0))
    threads = threads or len(available)
    if threads < len(available):
        os.sched_setaffinity(0, available[:threads])
    if device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    else:
        os.environ.pop("JAX_PLATFORMS", None)
        # Share the GPU with PyTorch: allocate on demand instead of 75% up front.
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags).strip()
    os.environ["MLB_JAX_MALLOC"] = malloc  # inherited by the child processes
    from mlb_jax.allocator import setup_heap  # imports JAX, after its environment

    setup_heap()
    return threads


def import_torch(threads: int, device: str) -> Any:
    """Imports PyTorch with ``threads`` intra-op threads and full float32 (no TF32) on GPUs."""
    import torch

    torch.set_num_threads(threads)
    if device == "gpu":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    return torch


def check_gpu(torch: Any) -> str | None:
    """Returns why a GPU run is impossible here, or None when JAX and PyTorch both see CUDA."""
    import jax

    problems = []
    if jax.default_backend() != "gpu":
        problems.append(f"JAX's backend is {jax.default_backend()!r}")
    if not torch.cuda.is_available():
        problems.append("torch.cuda.is_available() is False")
    return "; ".join(problems) or None


def load_config(
    method: str,
    base_width: int,
    conv: str = "auto",
    conv_max_scratch: float = float("inf"),
    cpu_scheduler: str = "auto",
) -> Any:
    """configs/synthetic_av.py with the benchmark's width, method and convolutions, constant LR.

    ``conv`` defaults to ``auto`` (the CPU plan on the CPU), the full-width
    configs' choice, not the demo config's ``xla``; ``conv_max_scratch`` is its memory bound;
    ``cpu_scheduler`` is ``config.train.cpu_scheduler`` (XLA CPU's order of operations).
    """
    spec = importlib.util.spec_from_file_location("synthetic_av", ROOT / "configs/synthetic_av.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model.base_width = base_width
    config.model.conv = conv
    config.model.conv_max_scratch = conv_max_scratch
    config.train.cpu_scheduler = cpu_scheduler
    config.method.name = method
    config.train.schedule = "constant"
    config.train.num_devices = 1
    return config


@dataclasses.dataclass
class JaxStep:
    """A compiled mlb_jax train step and its state.

    Attributes:
        step: the compiled step ``(state, batch) -> (state, metrics)``; the state is donated.
        state: the current ``TrainState``.
        compile_seconds: time to trace, lower and compile the step.
        memory_analysis: XLA's buffer plan of the compiled step (or None).
    """

    step: Callable[..., Any]
    state: Any
    compile_seconds: float
    memory_analysis: Any

    def run(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Runs one step, waits for it, and returns its metrics (on the device)."""
        import jax

        self.state, metrics = self.step(self.state, batch)
        jax.block_until_ready((self.state, metrics))
        return metrics


def build_jax_step(
    method: str,
    base_width: int,
    batch: dict[str, Any],
    *,
    seed: int = 0,
    num_classes: int = NUM_CLASSES,
    conv: str = "auto",
    conv_max_scratch: float = float("inf"),
    cpu_scheduler: str = "auto",
) -> tuple[JaxStep, Any]:
    """The project's train step as ``mlb_jax.trainer.setup`` builds it, compiled for ``batch``.

    ``create_train_state`` is the trainer's own set-up (model, method, optimiser, state), so
    the benchmark measures exactly the step a run executes, on one device.

    Args:
        method: 'joint', 'multiloss' or 'mlb'.
        base_width: ResNet base width (64 = standard ResNet-18).
        batch: a device batch in the pipeline's format (from `jax_batch`).
        seed: initialisation seed.
        num_classes: K.
        conv: ``config.model.conv``: auto (the CPU plan on the CPU), plan, plan_wide, tuned or xla.
        conv_max_scratch: ``config.model.conv_max_scratch``, the memory bound of tuned.
        cpu_scheduler: ``config.train.cpu_scheduler``: 'auto' (the default: 'memory' with
            the CPU plan, else 'concurrency'), 'memory' or 'concurrency' (XLA's own order).

    Returns:
        (the compiled step with a fresh state, the model's graphdef).
    """
    import jax

    from mlb_jax.steps import compiler_options, create_train_state, make_train_step

    config = load_config(method, base_width, conv, conv_max_scratch, cpu_scheduler)
    config.seed = seed
    input_shapes = {m: x.shape[1:] for m, x in batch["inputs"].items()}
    graphdef, method_obj, tx, state = create_train_state(config, num_classes, input_shapes)
    state = jax.device_put(state, jax.devices()[0])
    jitted = jax.jit(
        make_train_step(graphdef, method_obj, tx),
        donate_argnums=0,
        compiler_options=compiler_options(config),
    )
    start = time.perf_counter()
    compiled = jitted.lower(state, batch).compile()
    seconds = time.perf_counter() - start
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # not every backend reports one
        analysis = None
    return JaxStep(compiled, state, seconds, analysis), graphdef


def make_batch(
    batch_size: int, spectrogram: tuple[int, int], frames: tuple[int, ...], seed: int = 0
) -> dict[str, np.ndarray]:
    """Random float32 inputs in mlb_jax's layout and integer labels.

    Returns:
        {'audio': [B, F, T], 'video': [B, T, H, W, C], 'label': int32 [B]}.
    """
    rng = np.random.default_rng(seed)
    return {
        "audio": rng.standard_normal((batch_size, *spectrogram), np.float32),
        "video": rng.standard_normal((batch_size, *frames), np.float32),
        "label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
    }


def jax_batch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """The batch in the pipeline's format, on JAX's first device."""
    import jax

    device = jax.devices()[0]
    out = {
        "inputs": {"audio": batch["audio"], "video": batch["video"]},
        "label": batch["label"],
        "mask": np.ones(len(batch["label"]), bool),
    }
    return jax.device_put(out, device)


def torch_batch(torch: Any, batch: dict[str, np.ndarray], device: str) -> tuple[Any, Any, Any]:
    """The batch in PyTorch's layout: audio [B, 1, F, T], video [B, T, C, H, W], int64 labels."""
    target = "cuda" if device == "gpu" else "cpu"
    audio = torch.from_numpy(batch["audio"][:, None].copy()).to(target)
    video = torch.from_numpy(np.ascontiguousarray(batch["video"].transpose(0, 1, 4, 2, 3)))
    labels = torch.from_numpy(batch["label"].astype(np.int64)).to(target)
    return audio, video.to(target), labels


def build_torch_step(
    torch: Any, method: str, base_width: int, device: str, *, seed: int = 0
) -> tuple[Any, Any]:
    """The PyTorch reference model and step with the config's hyper-parameters."""
    import torch_reference

    config = load_config(method, base_width)
    torch.manual_seed(seed)
    model = torch_reference.MultimodalNet(NUM_CLASSES, base_width)
    if device == "gpu":
        model = model.cuda()
    step = torch_reference.TrainStep(
        model,
        method=method,
        lr=config.train.lr,
        momentum=config.train.momentum,
        weight_decay=config.train.weight_decay,
        alpha=config.method.alpha,
        beta_max=config.method.beta_max,
        unimodal_weight=config.method.unimodal_weight,
    )
    return model, step


def torch_runner(torch: Any, step: Any, inputs: tuple[Any, Any, Any], device: str) -> Callable:
    """A function running one PyTorch step and waiting for it."""

    def run() -> dict[str, Any]:
        metrics = step(*inputs)
        if device == "gpu":
            torch.cuda.synchronize()
        return metrics

    return run


# ----------------------------------------------------------------------------- timing


def alternate(
    runners: dict[str, Callable[[], Any]], reps: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Times the runners in turn, rotating which goes first each repetition.

    Args:
        runners: name -> function running one step to completion.
        reps: timed repetitions of each.
        warmup: untimed repetitions of each first.

    Returns:
        name -> list of ``reps`` wall-clock seconds.
    """
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    return times


def ratio_summary(times: dict[str, list[float]], numerator: str, denominator: str) -> str:
    """'a/b = x (median of per-repetition ratios y, range lo-hi)' for two timed runners."""
    pairs = [a / b for a, b in zip(times[numerator], times[denominator])]
    medians = statistics.median(times[numerator]) / statistics.median(times[denominator])
    return (
        f"{numerator}/{denominator} step time = {medians:.3f} "
        f"(per-repetition ratios: median {statistics.median(pairs):.3f}, "
        f"range {min(pairs):.3f}-{max(pairs):.3f})"
    )


def describe_times(name: str, seconds: list[float], batch_size: int) -> str:
    """One line: median and min step time and samples/s."""
    median = statistics.median(seconds)
    return (
        f"  {name:<11} step {1000 * median:8.1f} ms median ({1000 * min(seconds):.1f} min) "
        f"= {batch_size / median:7.2f} samples/s"
    )


# ----------------------------------------------------------------------------- memory


def rss_kib() -> int:
    """Peak resident set size of this process so far, KiB.

    Linux's ``VmHWM`` of ``/proc/self/status``: the same high-water mark as
    ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, except that ru_maxrss keeps the parent's
    peak across fork and exec, so a child started by a large parent would report the parent's.
    Falls back to ru_maxrss where /proc is missing.
    """
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_probe(args: argparse.Namespace) -> None:
    """Child-process mode: one framework alone, two steps; prints its peak RSS as JSON."""
    spectrogram, frames = SHAPES[args.probe_shape]
    frames = (args.frames, *frames[1:])
    batch = make_batch(args.batch, spectrogram, frames)
    if args.probe == "jax":
        device_batch = jax_batch(batch)
        before = rss_kib()
        step, _ = build_jax_step(
            args.method,
            args.base_width,
            device_batch,
            conv=args.conv,
            conv_max_scratch=args.conv_max_scratch,
            cpu_scheduler=args.cpu_scheduler,
        )
        for _ in range(2):
            step.run(device_batch)
    else:
        torch = import_torch(args.threads, "cpu")
        inputs = torch_batch(torch, batch, "cpu")
        before = rss_kib()
        _, step = build_torch_step(torch, args.method, args.base_width, "cpu")
        for _ in range(2):
            step(*inputs)
    print(json.dumps({"before_kib": before, "peak_kib": rss_kib()}))


def child_peak_rss(args: argparse.Namespace, framework: str, shape: str) -> dict[str, int]:
    """Runs `memory_probe` for one framework in a fresh process and returns its JSON."""
    cmd = [
        sys.executable,
        __file__,
        f"--probe={framework}",
        f"--probe-shape={shape}",
        f"--threads={args.threads}",
        f"--batch={args.batch}",
        f"--frames={args.frames}",
        f"--base-width={args.base_width}",
        f"--method={args.method}",
        f"--conv={args.conv}",
        f"--conv-max-scratch={args.conv_max_scratch}",
        f"--malloc={args.malloc}",
        f"--cpu-scheduler={args.cpu_scheduler}",
    ]
    if args.xla_flags:
        cmd.append(f"--xla-flags={args.xla_flags}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode:
        raise RuntimeError(f"memory probe {framework} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- equivalence


def torch_name(path: tuple[str, ...]) -> tuple[str, bool]:
    """Maps an mlb_jax parameter path to the reference's state_dict key.

    Returns:
        (key, whether the array must be transposed from Flax to PyTorch layout).
    """
    leaf_names = {
        "kernel": "weight",
        "scale": "weight",
        "bias": "bias",
        "mean": "running_mean",
        "var": "running_var",
    }
    if path[0] == "encoders":
        modality, _, *rest = path[1:]
        if rest[0] == "stem":
            prefix = f"encoders.{modality}.resnet.stem"
            layer, leaf = rest[1], rest[2]
        else:
            stage, block, conv, layer, leaf = rest[1:]
            prefix = f"encoders.{modality}.resnet.blocks.{2 * int(stage) + int(block)}.{conv}"
        index = "0" if layer == "conv" else "1"
        return f"{prefix}.{index}.{leaf_names[leaf]}", leaf == "kernel"
    if path[0] == "heads":
        return f"heads.{path[1]}.{leaf_names[path[2]]}", path[2] == "kernel"
    if path == ("fusion", "bias"):
        return "fusion_bias", False
    if path[:2] == ("fusion", "linear"):
        return f"fusion.{path[2]}.weight", True
    raise KeyError(f"no PyTorch counterpart for {'/'.join(path)}")


def copy_jax_to_torch(torch: Any, state: Any, model: Any) -> None:
    """Loads the JAX train state's params and BatchNorm statistics into the PyTorch model."""
    import jax
    from flax import nnx

    target = model.state_dict()
    loaded = set()
    for tree in (state.params, state.rest):
        for path, value in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(tree)):
            keys = tuple(str(getattr(k, "key", k)) for k in path)
            if keys[-1] not in ("kernel", "scale", "bias", "mean", "var"):
                continue  # RNG counters
            name, transpose = torch_name(keys)
            array = np.asarray(value)
            if transpose:
                array = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T
            target[name].copy_(torch.from_numpy(np.array(array, copy=True, order="C")))
            loaded.add(name)
    missing = {k for k in target if not k.endswith("num_batches_tracked")} - loaded
    if missing:
        raise KeyError(f"PyTorch parameters not loaded from JAX: {sorted(missing)[:5]}")


def check_equivalence(args: argparse.Namespace, torch: Any, steps: int = 3) -> None:
    """Starts both from the same weights and batch and prints loss and k of each step."""
    spectrogram, frames = SHAPES["quick"]
    batch = make_batch(8, spectrogram, (args.frames, *frames[1:]), seed=1)
    device_batch = jax_batch(batch)
    jax_step, _ = build_jax_step(args.method, 16, device_batch)
    model, torch_step = build_torch_step(torch, args.method, 16, args.device)
    copy_jax_to_torch(torch, jax_step.state, model)
    inputs = torch_batch(torch, batch, args.device)
    print(f"equivalence check: {args.method}, base width 16, batch 8, {steps} steps")
    worst = 0.0
    for i in range(steps):
        j = {k: float(v) for k, v in jax_step.run(device_batch).items()}
        t = {k: float(v) for k, v in torch_step(*inputs).items()}
        keys = ["loss"] + [k for k in ("k/audio", "k/video") if k in t]
        line = "  ".join(f"{k} jax {j[k]:.6f} torch {t[k]:.6f}" for k in keys)
        worst = max(worst, *(abs(j[k] - t[k]) / max(abs(t[k]), 1e-6) for k in keys))
        print(f"  step {i + 1}: {line}")
    print(f"  largest relative difference: {worst:.2e}")


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument(
        "--shapes", default="112,224", help=f"comma-separated, from {sorted(SHAPES)}"
    )
    parser.add_argument("--quick", action="store_true", help="--shapes=quick --reps=3")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per framework")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per framework")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=3, help="video frames per clip")
    parser.add_argument("--base-width", type=int, default=64, help="ResNet width (64 = full)")
    parser.add_argument("--method", choices=("joint", "multiloss", "mlb"), default="mlb")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all)")
    parser.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument(
        "--malloc",
        choices=("system", "hugepages", "reuse"),
        default="system",
        help="the process as started, relaunched with huge pages for large heap blocks (as "
        "mlb_jax's entry points), or large blocks kept for reuse (mlb_jax.allocator); both "
        "frameworks alike",
    )
    parser.add_argument(
        "--with-xla-conv",
        action="store_true",
        help="also time the JAX step with XLA's convolution everywhere (config.model.conv=xla)",
    )
    parser.add_argument(
        "--conv",
        default="auto",
        help="config.model.conv of the JAX step (auto, plan, plan_wide, tuned, xla)",
    )
    parser.add_argument(
        "--with-plan-conv",
        action="store_true",
        help="also time the JAX step with the plan's fixed thresholds (config.model.conv=plan)",
    )
    parser.add_argument(
        "--with-tuned-conv",
        action="store_true",
        help="also time the JAX step with each layer measured (config.model.conv=tuned)",
    )
    parser.add_argument(
        "--conv-max-scratch",
        type=float,
        default=float("inf"),
        help="config.model.conv_max_scratch of the tuned JAX steps: extra scratch memory a "
        "layer may use over XLA's convolution, in multiples of its input (inf = no bound)",
    )
    parser.add_argument(
        "--cpu-scheduler",
        choices=("auto", "memory", "concurrency"),
        default="auto",
        help="config.train.cpu_scheduler of the JAX steps: XLA CPU's order of operations, "
        "for fewer live buffers or for overlap (XLA's own); auto: memory with the CPU "
        "convolution plan, concurrency with XLA's convolutions",
    )
    parser.add_argument(
        "--cold-conv-cache",
        action="store_true",
        help="measure every convolution layer afresh (an empty cache), to show its cost",
    )
    parser.add_argument("--check", action="store_true", help="only the equivalence check")
    parser.add_argument("--probe", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--probe-shape", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.reps = "quick", min(args.reps, 3)
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape {unknown[0]!r}; choose from {sorted(SHAPES)}")
    return args


def build_and_describe(
    args: argparse.Namespace, device_batch: dict[str, Any], conv: str, name: str = "jax"
) -> JaxStep:
    """Builds a JAX step with ``config.model.conv=conv`` and prints its compile time.

    When its convolutions were measured (``tuned``), also each new layer's algorithms.
    """
    from mlb_jax.models import conv_tune

    planned = len(conv_tune.decisions())
    step, _ = build_jax_step(
        args.method,
        args.base_width,
        device_batch,
        conv=conv,
        conv_max_scratch=args.conv_max_scratch,
        cpu_scheduler=args.cpu_scheduler,
    )
    decisions = conv_tune.decisions()[planned:]
    print(f"  {name} compile (trace + lower + compile): {step.compile_seconds:.1f} s", flush=True)
    if decisions:
        print(
            f"    of which measuring {len(decisions)} new convolution layer shapes (cache "
            f"{conv_tune.tuner(args.conv_max_scratch).path}):"
        )
    for decision in decisions:
        print(
            f"    {decision['layer']:40} forward {decision['forward']:8} input_grad "
            f"{decision['input_grad']:8} kernel_grad {decision['kernel_grad']}"
        )
    return step


def measure_shape(args: argparse.Namespace, torch: Any, shape: str) -> None:
    """Compiles, times and (optionally) probes the memory of both frameworks at one shape."""
    import jax

    spectrogram, frames = SHAPES[shape]
    frames = (args.frames, *frames[1:])
    print(
        f"\nshape {shape}: audio {spectrogram[0]}x{spectrogram[1]}, video "
        f"{frames[0]}x{frames[3]}x{frames[1]}x{frames[2]} (T x C x H x W), batch {args.batch}, "
        f"base width {args.base_width}, method {args.method}",
        flush=True,
    )
    batch = make_batch(args.batch, spectrogram, frames)
    device_batch = jax_batch(batch)
    jax_step = build_and_describe(args, device_batch, args.conv)
    _, step = build_torch_step(torch, args.method, args.base_width, args.device)
    inputs = torch_batch(torch, batch, args.device)
    runners = {
        "jax": lambda: jax_step.run(device_batch),
        "pytorch": torch_runner(torch, step, inputs, args.device),
    }
    for choice in ("xla", "plan", "tuned"):
        if getattr(args, f"with_{choice}_conv"):
            other = build_and_describe(args, device_batch, choice, f"jax-{choice}conv")
            runners[f"jax-{choice}conv"] = lambda other=other: other.run(device_batch)
    times = alternate(runners, args.reps, args.warmup)
    for name, seconds in times.items():
        print(describe_times(name, seconds, args.batch))
    print("  " + ratio_summary(times, "jax", "pytorch"), flush=True)
    for name in runners:
        if name.startswith("jax-"):
            print("  " + ratio_summary(times, name, "pytorch"))
            print("  " + ratio_summary(times, "jax", name), flush=True)
    if args.device == "gpu":
        jax_peak = jax.devices()[0].memory_stats().get("peak_bytes_in_use", 0)
        torch_peak = torch.cuda.max_memory_allocated()
        print(
            f"  peak GPU memory (allocator peaks): jax {jax_peak / 2**20:.0f} MiB, "
            f"pytorch {torch_peak / 2**20:.0f} MiB"
        )
    elif not args.no_memory:
        for framework in ("jax", "pytorch"):
            probe = child_peak_rss(args, "jax" if framework == "jax" else "torch", shape)
            print(
                f"  peak RSS, {framework} alone in a child process (VmHWM): "
                f"{probe['peak_kib'] / 2**10:.0f} MiB, "
                f"{(probe['peak_kib'] - probe['before_kib']) / 2**10:.0f} MiB above the "
                "imports and the batch",
                flush=True,
            )
    if jax_step.memory_analysis is not None:
        temp = getattr(jax_step.memory_analysis, "temp_size_in_bytes", 0)
        print(f"  XLA's buffer plan of the JAX step: {temp / 2**20:.0f} MiB of temporaries")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.threads = configure(
        device=args.device, threads=args.threads, xla_flags=args.xla_flags, malloc=args.malloc
    )
    if args.probe:
        if args.probe == "jax":  # the PyTorch probe computes nothing with JAX
            import jax

            # Load the parent's compilation from the persistent cache instead of compiling.
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        memory_probe(args)
        return
    if args.cold_conv_cache:  # before the tuner's first use; the memory probes inherit it
        os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="step_speed_conv_plans_")
    torch = import_torch(args.threads, args.device)
    import jax

    from mlb_jax.allocator import allocator_mode
    from mlb_jax.machine import cpu_description

    if args.device == "gpu":
        problem = check_gpu(torch)
        if problem:
            print(f"--device=gpu: no usable GPU here ({problem}); run with --device=cpu")
            sys.exit(2)
        jax.config.update("jax_default_matmul_precision", "highest")  # float32, as torch
    elif not args.no_memory:
        cache = tempfile.mkdtemp(prefix="step_speed_cache_")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = cache  # inherited by the memory probes
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    print(
        f"{cpu_description()}; "
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}, torch {torch.__version__}; "
        f"{args.threads} thread(s) each (os.cpu_count() = {os.cpu_count()}); float32; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; malloc {allocator_mode()}",
        flush=True,
    )
    if args.check:
        check_equivalence(args, torch)
        return
    for shape in args.shapes.split(","):
        measure_shape(args, torch, shape)


if __name__ == "__main__":
    main()
