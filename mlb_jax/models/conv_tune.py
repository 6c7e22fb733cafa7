"""Measured per-layer choice of the CPU convolution plan's algorithms, cached per machine.

The thresholds of `mlb_jax.models.conv.plan` were chosen on one CPU; on another (e.g. an Intel
Xeon whose oneDNN convolutions are 3x faster) they can lose to XLA's own convolution. A
`Tuner` is a planner for `mlb_jax.models.conv.apply_planner` that instead measures, the first
time a layer shape is traced, every algorithm each of its three passes can run
(`conv.candidates`: XLA's convolution, im2col patches, shifted rows, Winograd) on this
machine, and keeps per pass the fastest, or XLA's convolution unless another is faster by more
than `MARGIN` (measurement noise), so that a tuned layer is never slower than XLA's by more
than that noise: ``config.model.conv='tuned'``. It is not what ``'auto'`` runs: on the CPUs
measured, whole train steps under the fixed plan were faster than under the measured one
(README, "Speed"), because a pass timed alone does not cost what it costs inside the step;
``'auto'`` times whole steps instead, the plan's against XLA's (`mlb_jax.conv_auto`).

Cache: one JSON file per machine key (`machine_key`: CPU model and generation, SIMD flags,
thread count, jax/jaxlib/mlb_jax versions and ``XLA_FLAGS``) in
``$XDG_CACHE_HOME/mlb_jax/conv_plans/`` (default ``~/.cache/mlb_jax/conv_plans/``;
``$MLB_JAX_CONV_PLANS`` names another folder; the test suite uses ``.jax_cache/conv_plans``),
holding every candidate's time and scratch memory per layer, so that a choice is a
deterministic function of the cache and the memory knob. A file that is unreadable, malformed
or written for another machine key is ignored with a warning (and replaced on the next write);
writes are atomic (temporary file and rename).

Cost of a cold cache: per new layer shape, one compile and at most `REPS` timed calls (stopped
after `BUDGET_S` seconds) of each candidate, at most 3 + 3 + 4 = 10 candidates. Measured on a
2-core AMD EPYC: the full-width ResNet-18 pair at the 112 shapes has 22 distinct layer shapes,
and measuring them lengthened the step's compile from 12 s to 61 s, once (benchmarks/README.md,
"History of the CPU step against PyTorch").

Memory knob: ``config.model.conv_max_scratch`` bounds the extra temporary memory of a chosen
algorithm over XLA's for the same pass (``compiled.memory_analysis().temp_size_in_bytes`` of
the pass alone), in multiples of the layer's input size; candidates above it are not chosen.
``inf`` (default) chooses on speed alone; ``0`` allows no more scratch than XLA's own.

The timing runs inside the trace of the model's step (``jax.ensure_compile_time_eval``), on
random inputs of the traced shapes on the default device.
"""

import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mlb_jax import machine
from mlb_jax.models import conv

FORMAT = 2  # cache file format; another value is ignored as foreign (1: one copy per call)
# A candidate replaces XLA's convolution only when faster by more than this fraction: smaller
# differences are within the run-to-run noise of a shared 2-core machine.
MARGIN = 0.05
REPS = 5  # timed calls per candidate (after one warm-up), fewer when BUDGET_S runs out
BUDGET_S = 2.0  # seconds of timed calls per candidate, at least one call
# Each timed call runs the pass on this many independent inputs, one after the other, and the
# time per copy is kept: a single pass repeated on the same buffers finds them in cache and
# favours XLA's convolution by up to 1.5x over what it costs inside a train step (measured on
# a 2-core AMD EPYC: one 48x28x28x64 3x3 convolution 13.3 ms, two 31.6 ms; Winograd 17.7, 30.4).
COPIES = 2
PASSES = ("forward", "input_grad", "kernel_grad")
CACHE_ENV = "MLB_JAX_CONV_PLANS"  # a folder for the cache files instead of the default
_PASS_FUNCTIONS = {
    "forward": lambda alg, s, p: lambda x, k, dy: conv.forward(alg, x, k, s, p),
    "input_grad": lambda alg, s, p: lambda x, k, dy: conv.input_grad(alg, x, k, dy, s, p),
    "kernel_grad": lambda alg, s, p: lambda x, k, dy: conv.kernel_grad(alg, x, k, dy, s, p),
}


def machine_key() -> dict[str, Any]:
    """What a measurement depends on besides the layer: CPU, threads, versions, XLA flags, heap.

    The CPU is its model name and its generation's numbers (`mlb_jax.machine.cpu_identity`):
    two EPYC generations that one shared cache folder serves have the same name under KVM.

    ``algorithms`` is `mlb_jax.models.conv.ALGORITHMS_REVISION`, so that a change to an
    algorithm's code within one release does not reuse the old code's timings.

    The heap setting (`mlb_jax.allocator`) is part of it: without huge pages or reuse every pass
    also pays a page fault per 4 KiB of the buffers it allocates, which weighs most on the
    algorithms that build large ones (patches, Winograd tiles).
    """
    import jaxlib

    from mlb_jax import __version__
    from mlb_jax.allocator import allocator_mode

    return {
        "cpu": machine.cpu_model(),
        "cpu_id": machine.cpu_identity(),
        "simd": list(machine.simd_flags()),
        "threads": machine.thread_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "mlb_jax": __version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "malloc": allocator_mode(),
        "algorithms": conv.ALGORITHMS_REVISION,
    }


def default_cache_dir() -> pathlib.Path:
    """The cache folder: ``$MLB_JAX_CONV_PLANS``, else ``$XDG_CACHE_HOME/mlb_jax/conv_plans``."""
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return pathlib.Path(base).expanduser() / "mlb_jax" / "conv_plans"


def cache_file(cache_dir: str | os.PathLike | None, key: dict[str, Any]) -> pathlib.Path:
    """The cache file of one machine key: ``<cache_dir>/<hash of the key>.json``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return pathlib.Path(cache_dir or default_cache_dir()) / f"{digest}.json"


def layer_name(x_shape, kernel_shape, strides, padding) -> str:
    """A layer's cache key, e.g. ``'x48x56x56x64 k3x3x64x64 s1x1 p1,1,1,1'``."""
    pads = ",".join(str(int(v)) for pair in padding for v in pair)
    return (
        f"x{'x'.join(map(str, x_shape))} k{'x'.join(map(str, kernel_shape))} "
        f"s{'x'.join(map(str, strides))} p{pads}"
    )


def measure(
    x_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    padding: Sequence[Sequence[int]],
    *,
    reps: int = REPS,
    budget_s: float = BUDGET_S,
) -> dict[str, dict[str, dict[str, float]]]:
    """Times every candidate algorithm of each pass of one float32 convolution.

    Args:
        x_shape: [N, H, W, C_in].
        kernel_shape: [kh, kw, C_in, C_out].
        strides: (sh, sw).
        padding: ((top, bottom), (left, right)).
        reps: timed calls per candidate after one warm-up (the minimum is kept); each call
            runs the pass on `COPIES` independent inputs.
        budget_s: stop a candidate's timed calls after this many seconds (at least one call).

    Returns:
        ``{pass: {algorithm: {'ms': fastest call in ms per copy, 'scratch_bytes': compiled
        temporary memory per copy}}}`` for the passes in `PASSES` and the algorithms of
        `conv.candidates`.
    """
    rng = np.random.default_rng(0)
    out_hw = conv._out_hw(x_shape, kernel_shape, strides, padding)
    shapes = (x_shape, kernel_shape, (x_shape[0], *out_hw, kernel_shape[3]))
    arrays = [rng.standard_normal(shape, np.float32) for _ in range(COPIES) for shape in shapes]
    choices = conv.candidates(x_shape, kernel_shape, strides, padding)
    result: dict[str, dict[str, dict[str, float]]] = {}
    # Run, not stage: this is called while the model's step is being traced.
    with jax.ensure_compile_time_eval():
        inputs = [jnp.asarray(a) for a in arrays]
        for name in PASSES:
            result[name] = {}
            for algorithm in getattr(choices, name):
                one = _PASS_FUNCTIONS[name](algorithm, tuple(strides), padding)

                def copies(*args, one=one):
                    return [one(*args[i : i + 3]) for i in range(0, len(args), 3)]

                compiled = jax.jit(copies).lower(*inputs).compile()
                memory = compiled.memory_analysis()
                jax.block_until_ready(compiled(*inputs))  # warm-up
                times: list[float] = []
                while len(times) < max(1, reps) and (not times or sum(times) < budget_s):
                    start = time.perf_counter()
                    jax.block_until_ready(compiled(*inputs))
                    times.append(time.perf_counter() - start)
                result[name][algorithm] = {
                    "ms": 1000 * min(times) / COPIES,
                    "scratch_bytes": int(getattr(memory, "temp_size_in_bytes", 0) or 0) // COPIES,
                }
    return result


def choose(
    measured: dict[str, dict[str, dict[str, float]]],
    input_bytes: int,
    *,
    max_scratch: float = math.inf,
    margin: float = MARGIN,
) -> conv.Plan:
    """Each pass's algorithm from its measurements (deterministic).

    Args:
        measured: one layer's `measure` result.
        input_bytes: the size of the layer's input x, the unit of ``max_scratch``.
        max_scratch: a candidate whose scratch memory exceeds XLA's (same pass) by more than
            this many times ``input_bytes`` is not chosen.
        margin: a candidate replaces XLA's convolution only when its time is below
            ``(1 - margin)`` times XLA's.

    Returns:
        The plan.
    """
    chosen = {}
    for name in PASSES:
        times = measured[name]
        xla = times[conv.XLA]
        limit = xla["scratch_bytes"] + max_scratch * input_bytes
        best = conv.XLA
        for algorithm, entry in times.items():
            if entry["scratch_bytes"] <= limit and entry["ms"] < times[best]["ms"]:
                best = algorithm
        chosen[name] = best if times[best]["ms"] < (1 - margin) * xla["ms"] else conv.XLA
    return conv.Plan(**chosen)


@dataclasses.dataclass(eq=False)  # hashed by identity: it is a static argument of the models
class Tuner:
    """A measuring planner: ``tuner(x_shape, kernel_shape, strides, padding, dtype) -> Plan``.

    Attributes:
        cache_dir: where the per-machine cache files live (None: `default_cache_dir`).
        max_scratch: the memory knob, see `choose`.
        margin: see `choose`.
        reps, budget_s: see `measure`.
        log: called with one line per newly measured layer (progress of a cold cache).
    """

    cache_dir: str | os.PathLike | None = None
    max_scratch: float = math.inf
    margin: float = MARGIN
    reps: int = REPS
    budget_s: float = BUDGET_S
    log: Callable[[str], None] | None = None
    _layers: dict[str, Any] | None = dataclasses.field(default=None, repr=False)
    _decisions: dict[str, conv.Plan] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def path(self) -> pathlib.Path:
        """This machine's cache file."""
        return cache_file(self.cache_dir, machine_key())

    def _read(self, quiet: bool = False) -> dict[str, Any]:
        """The cache file's layers; {} (with a warning unless `quiet`) when it is unusable."""
        path = self.path
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT or data.get("key") != machine_key():
                raise ValueError("written for another machine or version (its 'key' differs)")
            layers = data["layers"]
            for entry in layers.values():
                for name in PASSES:
                    for value in entry[name].values():
                        float(value["ms"]), int(value["scratch_bytes"])
            return layers
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            if quiet:
                return {}
            warnings.warn(
                f"convolution plan cache {path} ignored ({type(error).__name__}: {error}); "
                "layers are measured again and the file is rewritten",
                stacklevel=3,
            )
            return {}

    def _write(self, layers: dict[str, Any]) -> None:
        """Atomically writes the cache file (temporary file in the same folder, then rename)."""
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": FORMAT, "key": machine_key(), "layers": layers}, indent=1)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
            f.write(text)
        os.replace(f.name, path)

    def measurements(self, name: str) -> dict[str, Any] | None:
        """One layer's cached measurements (see `layer_name`), or None."""
        if self._layers is None:
            self._layers = self._read()
        return self._layers.get(name)

    def __call__(self, x_shape, kernel_shape, strides, padding, dtype=np.float32) -> conv.Plan:
        """The measured plan of one convolution (measured now if not cached); see `conv.plan`."""
        if dtype is None or jnp.dtype(dtype) != jnp.float32:
            return conv.ALL_XLA
        name = layer_name(x_shape, kernel_shape, strides, padding)
        measured = self.measurements(name)
        if measured is None:
            start = time.perf_counter()
            measured = measure(
                x_shape, kernel_shape, strides, padding, reps=self.reps, budget_s=self.budget_s
            )
            # Merge with what other processes may have written meanwhile.
            self._layers = {**self._read(quiet=True), **self._layers, name: measured}
            self._write(self._layers)
            if self.log is not None:
                self.log(
                    f"convolution {name}: measured in {time.perf_counter() - start:.1f} s, "
                    f"{describe(measured)}"
                )
        chosen = choose(
            measured,
            4 * math.prod(x_shape),
            max_scratch=self.max_scratch,
            margin=self.margin,
        )
        self._decisions[name] = chosen
        return chosen

    def decisions(self) -> list[dict[str, str]]:
        """The layers this tuner has planned in this process and their algorithms, by name."""
        return [{"layer": name, **plan._asdict()} for name, plan in sorted(self._decisions.items())]


def describe(measured: dict[str, dict[str, dict[str, float]]]) -> str:
    """One line of a layer's times, e.g. 'forward xla 7.9 winograd 3.1 ms; ...'."""
    return "; ".join(
        f"{name} " + " ".join(f"{alg} {v['ms']:.1f}" for alg, v in measured[name].items()) + " ms"
        for name in PASSES
    )


def _log(line: str) -> None:
    from absl import logging

    logging.info("%s", line)


# The process's tuners and conv functions, one per memory knob (one object each, so that
# models built alike have equal graph definitions).
_TUNERS: dict[float, Tuner] = {}
_FUNCTIONS: dict[float, Callable[..., jax.Array]] = {}


def tuner(max_scratch: float = math.inf) -> Tuner:
    """The process's tuner for one memory knob, logging each newly measured layer."""
    if max_scratch not in _TUNERS:
        _TUNERS[max_scratch] = Tuner(max_scratch=max_scratch, log=_log)
    return _TUNERS[max_scratch]


def conv_function(max_scratch: float = math.inf) -> Callable[..., jax.Array]:
    """``nnx.Conv``'s ``conv_general_dilated`` running the measured plan (`tuner`)."""
    max_scratch = float(max_scratch)
    if max_scratch not in _FUNCTIONS:
        _FUNCTIONS[max_scratch] = functools.partial(conv.apply_planner, tuner(max_scratch))
    return _FUNCTIONS[max_scratch]


def decisions() -> list[dict[str, Any]]:
    """Layers planned in this process by the models' tuners, with the memory knob they used."""
    return [
        {**d, "max_scratch": None if math.isinf(knob) else knob}
        for knob, t in sorted(_TUNERS.items())
        for d in t.decisions()
    ]
