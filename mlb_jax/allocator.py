"""Huge pages for XLA's CPU buffers: glibc's ``malloc.hugetlb`` tunable, set by relaunching.

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
"""

import os
import pathlib
import sys

MODES = ("hugepages", "system")
ENV = "MLB_JAX_MALLOC"
TUNABLE = "glibc.malloc.hugetlb=1"
_THP_SETTING = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


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
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = (int(part) for part in version.split(".")[:2])
        thp = _THP_SETTING.read_text()
    except (AttributeError, ValueError, OSError):
        return False  # not glibc, or no THP setting to read (not Linux)
    # The kernel marks the active choice of "always [madvise] never" with brackets.
    return name == "glibc" and (major, minor) >= (2, 35) and "[never]" not in thp


def allocator_mode() -> str:
    """'hugepages' when this process started with the tunable (and it can act), else 'system'."""
    tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
    return "hugepages" if TUNABLE in tunables and hugepages_supported() else "system"


def relaunch_with_hugepages() -> None:
    """Re-executes this process with ``glibc.malloc.hugetlb=1`` unless it has it or cannot use it.

    Call it before the process has done anything worth keeping: what it printed stays, every
    other state is lost. Returns (does nothing) under ``MLB_JAX_MALLOC=system``, when the
    tunable is already set, when `hugepages_supported` is false or when the command line is
    unknown (an embedded interpreter).

    Raises:
      ValueError: ``$MLB_JAX_MALLOC`` is not one of `MODES`.
    """
    if requested_mode() == "system" or allocator_mode() == "hugepages":
        return
    if not hugepages_supported() or not getattr(sys, "orig_argv", None):
        return
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    env = dict(os.environ, GLIBC_TUNABLES=f"{tunables}:{TUNABLE}" if tunables else TUNABLE)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
