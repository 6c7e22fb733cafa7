"""What machine this process runs on: CPU model, instruction-set flags and thread count.

Speed figures and measured choices (the convolution plan's autotune cache,
`mlb_jax.models.conv_tune`) hold for one kind of CPU only; these functions name it. Linux's
``/proc/cpuinfo`` is read; elsewhere the platform's processor string stands in and the flags
are unknown. The model name alone does not tell CPU generations apart under a hypervisor
(KVM calls AMD's Zen 4 and Zen 5 EPYCs both "AMD EPYC", with the same SIMD flags), so the
vendor's family, model and stepping numbers name the CPU too.
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


# Where Linux describes the CPUs; a module attribute so that tests can point it elsewhere.
CPUINFO = pathlib.Path("/proc/cpuinfo")

# /proc/cpuinfo's fields that number a CPU's generation, each with its label in
# `cpu_identity`: x86's, then Arm's.
_IDENTITY_FIELDS = (
    (("vendor_id", ""), ("cpu family", "family"), ("model", "model"), ("stepping", "stepping")),
    (
        ("CPU implementer", "implementer"),
        ("CPU architecture", "architecture"),
        ("CPU variant", "variant"),
        ("CPU part", "part"),
        ("CPU revision", "revision"),
    ),
)


def _cpuinfo_field(name: str) -> str | None:
    """The first value of `name` in Linux's /proc/cpuinfo, or None elsewhere."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def cpu_identity() -> str:
    """The numbers of this CPU's generation, e.g. 'AuthenticAMD family 25 model 17 stepping 1'.

    From /proc/cpuinfo on x86 (vendor, family, model, stepping) and Arm (implementer,
    architecture, variant, part, revision); empty where they are unknown.
    """
    for fields in _IDENTITY_FIELDS:
        values = [_cpuinfo_field(name) for name, _ in fields]
        if None not in values:
            return " ".join(f"{label} {value}".strip() for (_, label), value in zip(fields, values))
    return ""


def simd_flags() -> tuple[str, ...]:
    """Which of `SIMD_FLAGS` this CPU has, in `SIMD_FLAGS` order (empty when unknown)."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return tuple(f for f in SIMD_FLAGS if f in flags)


def cpu_description() -> str:
    """The CPU's model, generation and SIMD flags (figures depend on all three).

    E.g. 'AMD EPYC (AuthenticAMD family 25 model 17 stepping 1) [avx avx2 fma]'.
    """
    identity = cpu_identity()
    named = f"{cpu_model()} ({identity})" if identity else cpu_model()
    return f"{named} [{' '.join(simd_flags()) or 'SIMD flags unknown'}]"


def thread_count() -> int:
    """CPUs this process may run on (its affinity mask), which sizes XLA's thread pool."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
