"""mlb_jax.machine: the CPU's name, generation and flags, and the cache key they enter."""

import pytest

from mlb_jax import machine
from mlb_jax.models import conv_tune

# Two processors of /proc/cpuinfo as KVM shows AMD's Zen 4 and Zen 5 EPYCs: the same model
# name and SIMD flags, different family and model numbers.
_FLAGS = "fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 rdrand"
_ZEN = """processor\t: {cpu}
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model\t\t: {model}
model name\t: AMD EPYC
stepping\t: {stepping}
flags\t\t: {flags}
"""
ZEN4 = "\n".join(_ZEN.format(cpu=i, family=25, model=17, stepping=1, flags=_FLAGS) for i in (0, 1))
ZEN5 = _ZEN.format(cpu=0, family=26, model=2, stepping=0, flags=_FLAGS)
# An Arm Neoverse V1 (no model name line, as on most Arm kernels).
NEOVERSE = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes sve
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1
"""


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point mlb_jax.machine at a written /proc/cpuinfo."""

    def write(text: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(machine, "CPUINFO", path)

    return write


def test_x86_cpu_is_named_by_model_generation_and_flags(cpuinfo):
    cpuinfo(ZEN4)
    assert machine.cpu_model() == "AMD EPYC"
    assert machine.cpu_identity() == "AuthenticAMD family 25 model 17 stepping 1"
    # Those of SIMD_FLAGS the CPU has, in SIMD_FLAGS order; not fpu, sse2 or rdrand.
    simd = "avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16"
    assert machine.simd_flags() == tuple(simd.split())
    assert machine.cpu_description() == (
        f"AMD EPYC (AuthenticAMD family 25 model 17 stepping 1) [{simd}]"
    )


def test_arm_cpu_is_named_by_its_part_numbers(cpuinfo, monkeypatch):
    cpuinfo(NEOVERSE)
    monkeypatch.setattr(machine.platform, "processor", lambda: "aarch64")
    assert machine.cpu_identity() == (
        "implementer 0x41 architecture 8 variant 0x1 part 0xd40 revision 1"
    )
    assert machine.cpu_description() == (
        "aarch64 (implementer 0x41 architecture 8 variant 0x1 part 0xd40 revision 1) "
        "[SIMD flags unknown]"
    )


def test_without_cpuinfo_the_generation_is_left_out(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "absent")
    monkeypatch.setattr(machine.platform, "processor", lambda: "i386")
    assert machine.cpu_identity() == ""
    assert machine.cpu_description() == "i386 [SIMD flags unknown]"


def test_two_generations_of_one_cpu_name_keep_separate_caches(cpuinfo, tmp_path):
    # A cache folder shared by both (a network home) must not hand one's timings to the other.
    cpuinfo(ZEN4)
    zen4 = conv_tune.machine_key()
    cpuinfo(ZEN5)
    zen5 = conv_tune.machine_key()
    assert (zen4["cpu"], zen4["simd"]) == (zen5["cpu"], zen5["simd"])
    assert zen4 != zen5
    assert conv_tune.cache_file(tmp_path, zen4) != conv_tune.cache_file(tmp_path, zen5)
