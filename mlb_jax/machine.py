"""What machine this process runs on: CPU model, instruction-set flags and thread count.

Speed figures and measured choices (the convolution plan's autotune cache,
`mlb_jax.models.conv_tune`) hold for one kind of CPU only; these functions name it. Linux's
``/proc/cpuinfo`` is read; elsewhere the platform's processor string stands in and the flags
are unknown.
"""

import os
import pathlib
import platform

# Instruction-set extensions that decide which convolution and matrix kernels run fast
# (/proc/cpuinfo's names).
SIMD_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def _cpuinfo_field(name: str) -> str | None:
    """The first value of `name` in Linux's /proc/cpuinfo, or None elsewhere."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def simd_flags() -> tuple[str, ...]:
    """Which of `SIMD_FLAGS` this CPU has, in `SIMD_FLAGS` order (empty when unknown)."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return tuple(f for f in SIMD_FLAGS if f in flags)


def cpu_description() -> str:
    """The CPU's model and SIMD flags, e.g. 'AMD EPYC [avx avx2 fma]' (figures depend on both)."""
    return f"{cpu_model()} [{' '.join(simd_flags()) or 'SIMD flags unknown'}]"


def thread_count() -> int:
    """CPUs this process may run on (its affinity mask), which sizes XLA's thread pool."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
