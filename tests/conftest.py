"""Test-session set-up: CPU only, 8 fake devices, quiet TensorFlow, quick cached compiles.

Everything here must happen before jax or tensorflow is imported anywhere, so it sits at the
top of the root conftest. The environment variables are inherited by subprocesses the tests
start (CLI runs, notebooks), so they see the same 8-device CPU platform.
"""

import os
import pathlib

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["JAX_NUM_CPU_DEVICES"] = "8"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_ROOT / ".jax_cache"))
# Every program is cached, the small eager ones too: the CLI tests' subprocesses would each
# compile them again (a tiny run compiles ~160 programs, most under 0.1 s).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The tests' programs are tiny, so compiling them is most of the suite's time on a cold cache
# (CI's): at LLVM's optimisation level 0 a tiny MLB run's train step compiled in 2.8 s instead
# of 3.9 and the whole run took 13.9 s instead of 16.3. Tests compare programs built alike.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()
# The CLI tests' subprocesses start as they are: the entry points' relaunch with huge pages
# (mlb_jax.allocator) would import everything twice for buffers too small to gain from it.
# tests/test_allocator.py sets it per child.
os.environ["MLB_JAX_MALLOC"] = "system"
# The measured convolution plans of the tests' tiny layers, beside the compilation cache
# rather than in the user's ~/.cache (mlb_jax.models.conv_tune).
os.environ.setdefault("MLB_JAX_CONV_PLANS", str(_ROOT / ".jax_cache" / "conv_plans"))

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)


@pytest.fixture(scope="session")
def data_cache() -> pathlib.Path:
    """The synthetic datasets' cache shared by every test, xdist worker and run.

    A dataset's directory is keyed by a hash of its knobs, so a stale one is never reused, and
    two workers building the same one at once is handled by `ensure_synthetic`.
    """
    return _ROOT / ".test_data"


# The longest test files (`--durations=0`, summed per file; test_sweep.py ~150 s of a 460 s
# warm-cache suite on 2 cores), first. `make test` distributes whole files (`--dist loadfile
# --no-loadscope-reorder`) in collection order; xdist's default order, by number of tests,
# started test_sweep.py (8 tests, the longest file) among the last.
_LONGEST_FIRST = (
    "test_sweep.py",
    "test_train.py",
    "test_sweep_settings.py",
    "test_tune.py",
    "test_multiprocess.py",
    "test_reference_rows.py",
    "test_method_pmr.py",
    "test_data_prep.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Puts the files of `_LONGEST_FIRST` first, in that order; keeps every file's own order."""
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture
def tracer_sharding_reads(monkeypatch) -> list[str]:
    """The type names of the tracers whose ``sharding`` is read from now on (reads still raise).

    Reading it raises AttributeError after building a message that walks every equation traced
    so far; flax's ``Variable.__setitem__`` reads it on each whole-array update.
    """
    reads = []
    original = jax.core.Tracer.sharding

    def sharding(tracer):
        reads.append(type(tracer).__name__)
        return original.fget(tracer)

    monkeypatch.setattr(jax.core.Tracer, "sharding", property(sharding))
    return reads
