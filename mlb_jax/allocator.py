"""The heap of XLA's CPU buffers: huge pages by relaunching, or reused blocks in-process.

XLA's CPU runtime ``malloc``s a program's temporaries and outputs on every execution and frees
them afterwards (1.4 GiB of temporaries for the benchmarked MLB step at 112x112, 3 GiB at
224x224). glibc serves blocks that large with ``mmap`` and returns them with ``munmap``, so
every step faults in and zeroes every 4 KiB page of its buffers again: 370 000 minor page
faults per step at 112x112 on a 2-core CPU. With glibc's tunable ``glibc.malloc.hugetlb=1``
(glibc 2.35 or later) those mappings ask for transparent huge pages (``madvise``): 2 MiB pages,
512x fewer faults (measured on a 2-core CPU, `benchmarks/heap_speed.py`: the step at 112x112
took 1043 ms instead of 1390 ms, 2561 ms instead of 3127 ms at 224x224, and the process's peak
resident memory fell from 3.7 to 3.1 GiB and from 5.6 to 5.0 GiB).
Numbers computed are unchanged; PyTorch's CPU tensors come from the same ``malloc``.

A tunable is read once, when the process starts, so `relaunch_with_hugepages` re-executes the
process (same interpreter, same ``sys.orig_argv``) with it added to ``GLIBC_TUNABLES``. The
command-line entry points do this first; a script of one's own can call it at its top, or be
started with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``. Nothing happens where it cannot help:
another C library, glibc before 2.35, or transparent huge pages off
(``/sys/kernel/mm/transparent_hugepage/enabled`` = never). ``MLB_JAX_MALLOC=system`` keeps the
process as started.

``MLB_JAX_MALLOC=reuse`` removes the faults without a relaunch (`reuse_heap`, in-process, so it
also serves a notebook or a script that cannot restart itself, and machines where transparent
huge pages are off): XLA's CPU programs run on the calling thread (JAX's
``jax_cpu_enable_async_dispatch=False``), whose heap is glibc's main arena, and that arena
keeps large blocks instead of mapping them afresh (``mallopt``: no ``mmap``, no trimming below
2 GiB), so each step reuses the previous step's pages. Blocks allocated by other threads are
mapped as before: a non-main arena sends blocks over its 64 MiB heap to ``mmap`` whatever the
settings.
"""

import ctypes
import os
import pathlib
import sys

MODES = ("hugepages", "reuse", "system")
ENV = "MLB_JAX_MALLOC"
TUNABLE = "glibc.malloc.hugetlb=1"
_THP_SETTING = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
# glibc's mallopt parameters (malloc.h) and the largest trim threshold an int carries.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_NEVER_TRIM = 2**31 - 1
_reusing = False  # set by reuse_heap: this process's heap keeps large blocks


def requested_mode() -> str:
    """``$MLB_JAX_MALLOC``, default 'hugepages'.

    Raises:
      ValueError: it is not one of `MODES`.
    """
    mode = os.environ.get(ENV, "hugepages")
    if mode not in MODES:
        raise ValueError(f"${ENV}={mode!r} is not one of {', '.join(MODES)}; use one of them")
    return mode


def hugepages_supported() -> bool:
    """Whether the tunable can take effect here: glibc >= 2.35 and transparent huge pages on."""
    try:
        thp = _THP_SETTING.read_text()
    except OSError:
        return False  # no THP setting to read (not Linux)
    # The kernel marks the active choice of "always [madvise] never" with brackets.
    return _glibc_version() >= (2, 35) and "[never]" not in thp


def _glibc_version() -> tuple[int, int]:
    """(major, minor) of the C library when it is glibc, else (0, 0)."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = (int(part) for part in version.split(".")[:2])
    except (AttributeError, ValueError, OSError):
        return (0, 0)
    return (major, minor) if name == "glibc" else (0, 0)


def allocator_mode() -> str:
    """The heap setting in force: 'hugepages', 'reuse', both joined by '+', or 'system'.

    'hugepages' when this process started with the tunable (and it can act), 'reuse' after
    `reuse_heap`.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
    modes = [
        name
        for name, active in (
            ("hugepages", TUNABLE in tunables and hugepages_supported()),
            ("reuse", _reusing),
        )
        if active
    ]
    return "+".join(modes) or "system"


def setup_heap() -> None:
    """Applies ``$MLB_JAX_MALLOC`` to this process: `relaunch_with_hugepages` or `reuse_heap`.

    Call it first, before JAX has run anything. 'system' leaves the process as started.

    Raises:
      ValueError: ``$MLB_JAX_MALLOC`` is not one of `MODES`.
      RuntimeError: 'reuse' after JAX has started its backends (`reuse_heap`).
    """
    mode = requested_mode()
    if mode == "hugepages":
        relaunch_with_hugepages()
    elif mode == "reuse":
        reuse_heap()


def reuse_heap() -> None:
    """Makes XLA's CPU buffers reuse the previous execution's pages instead of faulting anew.

    Two process-wide settings, for the rest of the process: JAX's CPU client dispatches
    synchronously (``jax_cpu_enable_async_dispatch=False``: a program runs on the thread that
    calls it, and ``jax.jit`` returns when it has finished), so that its buffers come from the
    calling thread's heap, and that heap (glibc's main arena, when called from the main
    thread) serves large blocks from memory it keeps (``mallopt(M_MMAP_MAX, 0)``,
    ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)``). PyTorch or NumPy blocks the main thread allocates
    are kept alike. Does nothing where the C library is not glibc or it is already done.

    Memory: the heap keeps what it has grown to. A freed block that small allocations then
    split no longer fits the next call's, which grows the heap instead, until it settles: with
    one 96 MiB temporary (tests/test_allocator.py) at 1 to 7 times the temporary within 15
    calls. The MLB step's peak stayed that of huge pages (`benchmarks/heap_speed.py`).

    Raises:
      RuntimeError: JAX's backends have already started (the dispatch setting is read then):
        call it first, before any JAX computation.
    """
    global _reusing
    if _reusing or _glibc_version() == (0, 0):
        return
    import jax
    from jax._src import xla_bridge  # JAX's own check, as jax.distributed.initialize makes

    if xla_bridge.backends_are_initialized():
        raise RuntimeError(
            "mlb_jax.allocator.reuse_heap() must run before JAX's first computation (it sets "
            "jax_cpu_enable_async_dispatch, read when JAX starts its backends); call it first "
            "in the script"
        )
    libc = ctypes.CDLL(None)
    # mallopt returns 1 on success; these two parameters are glibc's since 2.0.
    if libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM):
        jax.config.update("jax_cpu_enable_async_dispatch", False)
        _reusing = True


def relaunch_with_hugepages() -> None:
    """Re-executes this process with ``glibc.malloc.hugetlb=1`` unless it has it or cannot use it.

    Call it before the process has done anything worth keeping: what it printed stays, every
    other state is lost. Returns (does nothing) unless ``$MLB_JAX_MALLOC`` asks for huge
    pages (its default), when the tunable is already set, when `hugepages_supported` is false
    or when the command line is unknown (an embedded interpreter).

    Raises:
      ValueError: ``$MLB_JAX_MALLOC`` is not one of `MODES`.
    """
    if requested_mode() != "hugepages" or "hugepages" in allocator_mode().split("+"):
        return
    if not hugepages_supported() or not getattr(sys, "orig_argv", None):
        return
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    env = dict(os.environ, GLIBC_TUNABLES=f"{tunables}:{TUNABLE}" if tunables else TUNABLE)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
