"""The heap of XLA's buffers: the relaunch sets glibc's tunable once, reuse acts in place, and
either way the temporary's page faults drop."""

import json
import os
import platform
import subprocess
import sys

import pytest

from mlb_jax import allocator

# A child process, started as an entry point starts (`runtime.relaunch`, which re-executes
# it with the tunable or sets up reuse), then a program whose 96 MiB matrix product output is a
# temporary: the mode, the tunables, the dispatch and the minor page faults of each later call.
_CHILD = """
import json, os, resource
from mlb_jax import allocator, runtime
runtime.relaunch()
import jax, jax.numpy as jnp

@jax.jit
def f(a, b):
    return (a @ b)[::64, ::64].sum()

a, b = jnp.ones((6144, 8)), jnp.ones((8, 4096))
for _ in range(2):
    f(a, b).block_until_ready()
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(a, b).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({
    "mode": allocator.allocator_mode(),
    "tunables": os.environ.get("GLIBC_TUNABLES", ""),
    "async_dispatch": jax.config.values["jax_cpu_enable_async_dispatch"],
    "faults": faults,
}))
"""
_PAGES = 6144 * 4096 * 4 // os.sysconf("SC_PAGE_SIZE")  # the temporary's 4 KiB pages


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    inherited = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env = {**inherited, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", **env}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


def _child(**env: str) -> dict:
    proc = _run(_CHILD, **env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not allocator.hugepages_supported(), reason="needs glibc >= 2.35 and transparent huge pages"
)
def test_relaunch_adds_the_tunable_once_and_the_temporary_stops_faulting_page_by_page():
    # A tunable of the user's own is kept beside the added one.
    huge = _child(MLB_JAX_MALLOC="hugepages", GLIBC_TUNABLES="glibc.malloc.arena_max=4")
    system = _child(MLB_JAX_MALLOC="system", GLIBC_TUNABLES="glibc.malloc.arena_max=4")
    assert huge["mode"] == "hugepages" and system["mode"] == "system"
    assert huge["tunables"] == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"
    assert system["tunables"] == "glibc.malloc.arena_max=4"
    # As started, glibc maps the temporary afresh on each call: every 4 KiB page faults.
    assert min(system["faults"]) > 0.9 * _PAGES
    # On 2 MiB pages: 512 times fewer (48 for the temporary), under a tenth whatever else
    # faults.
    assert sum(huge["faults"]) / len(huge["faults"]) < 0.1 * _PAGES


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_reuse_acts_in_place_and_the_temporary_stops_faulting_page_by_page():
    reuse = _child(MLB_JAX_MALLOC="reuse", GLIBC_TUNABLES="glibc.malloc.arena_max=4")
    system = _child(MLB_JAX_MALLOC="system", GLIBC_TUNABLES="glibc.malloc.arena_max=4")
    # No relaunch: the tunables are the user's; programs run on the calling thread.
    assert reuse["mode"] == "reuse" and reuse["tunables"] == "glibc.malloc.arena_max=4"
    assert reuse["async_dispatch"] is False and system["async_dispatch"] is True
    assert min(system["faults"]) > 0.9 * _PAGES
    # Calls find an earlier call's pages in the main arena, once it has settled: a call whose
    # freed block small allocations have split grows the heap by one temporary (0 to 6 calls
    # in 28, in ten processes).
    assert sum(n > 0.5 * _PAGES for n in reuse["faults"]) <= 10
    assert sorted(reuse["faults"])[10] < 0.01 * _PAGES


def test_an_explicit_relaunch_keeps_a_process_that_asked_for_another_setting():
    code = (
        "import os; from mlb_jax import allocator; allocator.relaunch_with_hugepages(); "
        "print(os.environ['GLIBC_TUNABLES'])"
    )
    for mode in ("reuse", "system"):
        proc = _run(code, MLB_JAX_MALLOC=mode, GLIBC_TUNABLES="glibc.malloc.arena_max=4")
        # Not re-executed with the tunable: the user's tunables as given.
        assert proc.stdout.splitlines() == ["glibc.malloc.arena_max=4"], proc.stderr[-2000:]


def test_reuse_after_jax_has_started_is_refused_and_changes_nothing(monkeypatch):
    import jax

    jax.devices()  # the backends start
    with pytest.raises(RuntimeError, match=r"must run before JAX's first computation"):
        allocator.reuse_heap()
    assert jax.config.values["jax_cpu_enable_async_dispatch"] is True
    assert allocator.allocator_mode() == "system"
    # Once done (the entry point did it first), a second call is no error.
    monkeypatch.setattr(allocator, "_reusing", True)
    allocator.reuse_heap()


def test_bad_environment_value_ends_an_entry_point_with_one_error_line():
    proc = _run("from mlb_jax import runtime; runtime.relaunch()", MLB_JAX_MALLOC="tcmalloc")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: $MLB_JAX_MALLOC='tcmalloc' is not one of hugepages, reuse, system; use one of them"
    ]


def test_mode_follows_the_tunable_the_process_started_with(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert allocator.allocator_mode() == (
        "hugepages" if allocator.hugepages_supported() else "system"
    )
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert allocator.allocator_mode() == "system"
    monkeypatch.setattr(allocator, "_reusing", True)  # as after reuse_heap()
    assert allocator.allocator_mode() == "reuse"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert allocator.allocator_mode() == (
        "hugepages+reuse" if allocator.hugepages_supported() else "reuse"
    )
    monkeypatch.setenv(allocator.ENV, "jemalloc")
    with pytest.raises(ValueError, match=r"\$MLB_JAX_MALLOC='jemalloc' is not one of"):
        allocator.requested_mode()


@pytest.mark.parametrize("module", ["train", "compare", "evaluate", "sweep", "tune"])
def test_every_entry_point_relaunches_before_parsing_its_flags(module):
    # A bad $MLB_JAX_MALLOC is refused by the relaunch, before any flag is read.
    code = f"import runpy; runpy.run_module('mlb_jax.{module}', run_name='__main__')"
    proc = _run(code, MLB_JAX_MALLOC="bogus")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: $MLB_JAX_MALLOC='bogus'")
