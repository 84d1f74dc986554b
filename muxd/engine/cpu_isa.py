"""Which instruction sets this CPU runs, read at run time, and which one muxd's kernels use.

muxd's C kernels are built once per instruction set (``engine/cpu_kernels.py``),
as ggml-cpu builds a variant per CPU generation, and the best build this CPU
can run is loaded: never decided by the compiler's ``-march=native`` on the
machine that happens to build them. ``MUXD_CPU_ISA`` names a lower one, so
that one host can run (and test) every path it can execute.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

ENV = "MUXD_CPU_ISA"

_X86 = ("x86_64", "amd64", "i686", "i386")
_ARM64 = ("aarch64", "arm64")
_AVX2 = ("-mavx2", "-mfma", "-mf16c")
_AVX512 = ("-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", *_AVX2)


@dataclass(frozen=True)
class Isa:
    """One path of the kernels: the ways to build it, each the CPU features
    it needs (as ``/proc/cpuinfo`` names them) and the compiler flags that
    make it; a CPU runs the path if it has the features of one of them."""

    name: str
    machines: tuple[str, ...]  # platform.machine() values it runs on; () = any
    builds: tuple[tuple[frozenset[str], tuple[str, ...]], ...]

    def cflags(self, flags: frozenset[str] | None = None) -> tuple[str, ...] | None:
        """The flags of the first build whose features ``flags`` has (the
        CPU's by default), None if none."""
        have = cpu_flags() if flags is None else flags
        return next((cflags for needs, cflags in self.builds if needs <= have), None)

    def runs_on(self, machine: str, flags: frozenset[str]) -> bool:
        return (not self.machines or machine in self.machines) and any(needs <= flags for needs, _ in self.builds)


def _isa(name: str, machines: tuple[str, ...], *builds: tuple[set[str], tuple[str, ...]]) -> Isa:
    return Isa(name, machines, tuple((frozenset(needs), cflags) for needs, cflags in builds))


_BASE = {"avx2", "fma", "f16c"}
_AVX512_BASE = _BASE | {"avx512f", "avx512bw", "avx512dq", "avx512vl"}
# From the most portable to the best of each architecture; the best a CPU runs wins.
ISAS: tuple[Isa, ...] = (
    _isa("portable", (), (set(), ())),
    _isa("avx2", _X86, (_BASE, (*_AVX2, "-DMUXD_AVX2"))),
    # AVX-VNNI's 256-bit int8 dot product (Intel Core 12th gen on, Zen 5);
    # AVX-512 VNNI CPUs run the same instruction in its EVEX encoding.
    _isa(
        "avx-vnni", _X86,
        (_BASE | {"avx_vnni"}, (*_AVX2, "-mavxvnni", "-DMUXD_AVX2", "-DMUXD_VNNI")),
        (_BASE | {"avx512_vnni", "avx512vl"}, (*_AVX2, "-mavx512vnni", "-mavx512vl", "-DMUXD_AVX2", "-DMUXD_VNNI")),
    ),  # fmt: skip
    _isa("avx512", _X86, (_AVX512_BASE, (*_AVX512, "-DMUXD_AVX512"))),
    _isa("avx512-vnni", _X86, (_AVX512_BASE | {"avx512_vnni"}, (*_AVX512, "-mavx512vnni", "-DMUXD_AVX512", "-DMUXD_VNNI"))),
    _isa("neon", _ARM64, ({"asimd"}, ("-march=armv8-a", "-DMUXD_NEON"))),
    _isa("neon-dotprod", _ARM64, ({"asimd", "asimddp"}, ("-march=armv8.2-a+dotprod", "-DMUXD_NEON"))),
)
BY_NAME = {isa.name: isa for isa in ISAS}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, ARM ``Features``); empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def cpu_model() -> str:
    """The CPU's model name, as ``grep -m1 'model name' /proc/cpuinfo`` shows it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runnable(machine: str | None = None, flags: frozenset[str] | None = None) -> list[Isa]:
    """The builds this CPU can execute, most portable first."""
    machine = (machine or platform.machine()).lower()
    flags = cpu_flags() if flags is None else flags
    return [isa for isa in ISAS if isa.runs_on(machine, flags)]


def best() -> Isa:
    return runnable()[-1]


def selected() -> Isa:
    """The build muxd uses: ``MUXD_CPU_ISA`` if set (it must be one this CPU
    runs), else the best this CPU runs. Raises ValueError naming the choices."""
    name = os.environ.get(ENV, "").strip().lower()
    if not name:
        return best()
    can = [isa.name for isa in runnable()]
    if name not in BY_NAME:
        raise ValueError(f"{ENV}={name!r} is not an instruction set muxd knows; this CPU runs: {', '.join(can)}")
    if name not in can:
        raise ValueError(f"{ENV}={name!r}: this CPU cannot run it; it runs: {', '.join(can)}")
    return BY_NAME[name]


def bf16_supported() -> bool:
    """Whether oneDNN (PyTorch's CPU linears) has a bf16 path here, as torch
    checks it: AVX-512 BW/VL/DQ or AVX-NE-CONVERT on x86, BF16 on ARM64.
    A ``MUXD_CPU_ISA`` below AVX-512 counts as a CPU without it, so that the
    forced path behaves as a CPU of that kind."""
    flags, isa = cpu_flags(), selected()
    if platform.machine().lower() in _ARM64:
        return "bf16" in flags
    if isa.name.startswith("avx512"):
        return {"avx512bw", "avx512vl", "avx512dq"} <= flags
    return isa.name != "portable" and "avx_ne_convert" in flags and os.environ.get(ENV) is None


def describe() -> dict[str, object]:
    """What benchmarks report of the CPU they ran on: its model, its vector
    instruction-set flags and the kernel builds it runs (the one a model
    used is in its kernel plan)."""
    interesting = sorted(f for f in cpu_flags() if f.startswith(("avx", "fma", "f16c", "amx", "asimd", "sve", "bf16")))
    return {"model": cpu_model(), "machine": platform.machine(), "flags": interesting,
            "runnable": [isa.name for isa in runnable()]}  # fmt: skip
