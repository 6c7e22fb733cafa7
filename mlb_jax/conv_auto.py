"""What ``config.model.conv='auto'`` runs on the CPU: the fastest train step of `CANDIDATES`.

The CPU convolution plan (`mlb_jax.models.conv.plan`) picks each layer's algorithm by
thresholds chosen on one CPU. On a CPU where they are wrong, its train step could be slower
than the same step under XLA's own convolutions, or than under the wide plan
(`mlb_jax.models.conv.plan_wide`, Winograd in the wide last-stage layers too, which one EPYC
generation runs faster and another not), and measuring layers one at a time (``'tuned'``,
`mlb_jax.models.conv_tune`) misjudges what a pass costs inside the step. So on the CPU
backend ``'auto'`` times the whole train step under each of `CANDIDATES`, once per machine
and step, and runs the fastest: never slower than XLA's convolutions by more than the noise
of `REPS` steps. The trainer does the timing (`mlb_jax.trainer.setup`); this module
holds the cache, the key and the choice.

Cache: one JSON file per machine key (`mlb_jax.models.conv_tune.machine_key`: CPU model and
generation, SIMD flags, threads, versions, ``XLA_FLAGS``, heap) beside the layer plans
(`mlb_jax.models.conv_tune.default_cache_dir`, ``$MLB_JAX_CONV_PLANS`` to move both), mapping
each step's key (`step_key`: the model block, method, batch, devices, input shapes, scheduler)
to the candidates' median step times. A choice is therefore a deterministic function of the
cache. A file that is unreadable, malformed or written for another machine key is ignored with
a warning and rewritten; writes are atomic (temporary file and rename).

Cost of a cold cache: the step is set up and compiled once per candidate (the winner's
compiled step is the run's own, so only the losers' compiles are extra: on a 2-core AMD EPYC,
the full-width ResNet-18 pair at 112x112 compiles in about 25 s under either plan and 15 s
under XLA's convolutions) plus ``1 + REPS`` steps of each, alternating between the candidates
so that a slow phase of a shared machine hits them all.
"""

import json
import pathlib
import statistics
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections

from mlb_jax import paths
from mlb_jax.models import conv_tune
from mlb_jax.models.conv import PLANNED, PLANNED_WIDE, XLA

# What 'auto' chooses between; a tie goes to the first.
CANDIDATES = (PLANNED, PLANNED_WIDE, XLA)
REPS = 3  # timed steps per candidate, after one untimed step (the compile)
FORMAT = 1  # cache file format; another value is ignored as foreign


def applies(choice: str) -> bool:
    """Whether ``model.conv=choice`` is chosen by timing here: 'auto' on one CPU process.

    Several processes would each time their own steps and could choose differently, and a
    process with a cached choice would skip steps the others run; there 'auto' keeps its
    unmeasured default (`mlb_jax.models.conv.resolve`: the plan on the CPU).
    """
    return choice == "auto" and jax.default_backend() == "cpu" and jax.process_count() == 1


def step_key(config: ml_collections.ConfigDict, input_shapes: Mapping[str, Any]) -> str:
    """What a step's speed depends on beyond the machine, as one string (a cache key).

    Args:
      config: the experiment config: its model block (but for ``conv``), method name, batch
        size, device count and CPU scheduler.
      input_shapes: modality -> shape of one example, as the step sees it.

    Returns:
      Sorted-key JSON text; equal keys are the same compiled step up to the optimiser's and
      the method's hyper-parameters, which do not change which convolutions are faster.
    """
    model = {k: v for k, v in config.model.to_dict().items() if k != "conv"}
    return json.dumps(
        {
            "model": model,
            "method": config.method.name,
            "batch_size": config.train.batch_size,
            "num_devices": config.train.get("num_devices", 0) or jax.device_count(),
            "cpu_scheduler": config.train.get("cpu_scheduler", "auto"),
            "inputs": {m: list(s) for m, s in sorted(input_shapes.items())},
        },
        sort_keys=True,
        default=str,  # e.g. conv_max_scratch = inf
    )


def cache_path() -> pathlib.Path:
    """This machine's file of step times, in `conv_tune.default_cache_dir`."""
    return conv_tune.cache_file(None, {**conv_tune.machine_key(), "cache": "train steps"})


def _read(path: pathlib.Path) -> dict[str, dict[str, float]]:
    """The file's steps; {} with a warning when it is unreadable or foreign."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or data.get("key") != conv_tune.machine_key():
            raise ValueError("written for another machine or version (its 'key' differs)")
        steps = data["steps"]
        for times in steps.values():
            if set(times) != set(CANDIDATES):
                raise ValueError(f"a step has times for {sorted(times)}, not {list(CANDIDATES)}")
            for ms in times.values():
                float(ms)
        return steps
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        warnings.warn(
            f"train step cache {path} ignored ({type(error).__name__}: {error}); "
            "model.conv=auto times the steps again and rewrites the file",
            stacklevel=3,
        )
        return {}


def lookup(key: str) -> dict[str, float] | None:
    """The cached step times (candidate -> ms) of `key` on this machine, or None."""
    return _read(cache_path()).get(key)


def store(key: str, times: Mapping[str, float]) -> None:
    """Adds one step's times (candidate -> ms) to this machine's file, atomically."""
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = {**_read(path), key: {c: float(times[c]) for c in CANDIDATES}}
    doc = {"format": FORMAT, "key": conv_tune.machine_key(), "steps": steps}
    paths.write_atomic(path, json.dumps(doc, indent=1))


def choose(times: Mapping[str, float]) -> str:
    """The candidate with the shortest step time; on a tie the first of `CANDIDATES`."""
    return min(CANDIDATES, key=lambda c: (times[c], CANDIDATES.index(c)))


def time_steps(steps: Mapping[str, Callable[[], float]], reps: int = REPS) -> dict[str, float]:
    """Median seconds of each candidate's step, in milliseconds.

    Args:
      steps: candidate -> a call that runs one step and returns its seconds.
      reps: timed calls per candidate, after one untimed call (which compiles the step).

    Returns:
      candidate -> the median of its `reps` timed calls, in ms. The calls alternate between
      the candidates, so that a slow phase of the machine does not fall on one of them.
    """
    for step in steps.values():
        step()
    seconds: dict[str, list[float]] = {c: [] for c in steps}
    for _ in range(reps):
        for c, step in steps.items():
            seconds[c].append(step())
    return {c: 1000.0 * statistics.median(s) for c, s in seconds.items()}


def record(times: Mapping[str, float], *, measured: bool) -> dict[str, Any]:
    """What a run records of the choice (config.json's environment, results.json).

    Returns:
      {'chosen': `choose(times)`, 'step_ms': {candidate: ms}, 'measured': True when timed by
      this process (False: read from the cache), 'cache': the cache file}.
    """
    return {
        "chosen": choose(times),
        "step_ms": {c: round(float(times[c]), 1) for c in CANDIDATES},
        "measured": measured,
        "cache": str(cache_path()),
    }


def summary(entry: Mapping[str, Any]) -> str:
    """One line for the log, e.g. ``model.conv=auto: plan (step 812.0 ms; xla 1130.0 ms; ...)``."""
    times = entry["step_ms"]
    chosen = entry["chosen"]
    others = "; ".join(f"{c} {times[c]:.1f} ms" for c in CANDIDATES if c != chosen)
    how = "timed now" if entry["measured"] else "timed earlier on this machine"
    return f"model.conv=auto: {chosen} (step {times[chosen]:.1f} ms; {others}; {how})"
