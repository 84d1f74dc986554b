"""Every build of the C kernels computes what the portable build computes: this host's, and ARM64 NEON's under qemu.

A C driver (tests/engine/kernel_driver.c) runs each kernel on fixed
pseudo-random inputs and prints its results as JSON; it is compiled with
the kernel sources and the flags the library gets (cpu_kernels.FLAGS, the
build's cflags), once per build. The ARM64 builds are cross-compiled with
Debian's gcc-aarch64-linux-gnu, linked statically and run under qemu-user:
"neon" on a Cortex-A53 (ARMv8.0, no dot-product instructions), "neon-dotprod"
on qemu's "max" CPU.

How close "the same" is, per output (kind below):

* exact: integer results (argmax) and those with a single rounding in the
  same order on every build: q8_dequantize (int8 times its fp16 scale) and
  the residual sum before a norm.
* fp32: within 2^-16 of the array's largest magnitude. Activations quantize
  to the same int8 everywhere and the int8 dot products are exact, but the
  builds sum their fp32 terms in different orders (vector lanes, FMAs, the
  norm's vectorized sum of squares, a vector exp within an ulp of expf):
  a sum of n <= 256 terms moves by about sqrt(n) * 2^-24 * sum(|term|), and
  sum(|term|) is at most ~16 times the largest output here: 16 * 16 * 2^-24.
  Measured: at most 3e-7 of it; a wrong lane, group or scale is off by >1e-2.
* bf16: within one bf16 ulp: the fp32 values above, each rounded once to
  bf16, round alike unless they straddle a rounding boundary.
* step (decode_layers, two layers and the head): within 2^-5 of the array's
  largest magnitude. One rounding that falls the other way inside a step (an
  activation's int8, a bf16 intermediate) is carried through the layers
  after it: nudging one input of the portable build's step by one bf16 ulp,
  or by about one int8 step, moved its outputs by up to 2.4 % of their scale.
  Measured between builds: at most 3e-7. The argmax is exact: the top two
  logits of each row are more than 12 % of the scale apart.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import struct
import subprocess
from pathlib import Path

import pytest

from muxd.engine import cpu_isa, cpu_kernels

DRIVER = Path(__file__).with_name("kernel_driver.c")
CROSS_CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"
# The qemu CPU each ARM64 build runs on: the oldest core it must run on.
QEMU_CPU = {"neon": "cortex-a53", "neon-dotprod": "max"}
RELATIVE = {"fp32": 2.0**-16, "step": 2.0**-5}
HOST_ISAS = [isa.name for isa in cpu_isa.runnable() if isa.name != "portable"]


def build_driver(cc: str, isa: str, cflags: tuple[str, ...], out: Path, *extra: str) -> Path:
    """The driver linked with the kernel sources, compiled as cpu_kernels.build compiles the library."""
    binary = out / f"driver-{isa}"
    flags = [flag for flag in cpu_kernels.FLAGS if flag not in ("-shared", "-fPIC")]
    command = [cc, *extra, *flags, *cflags, f'-DMUXD_ISA_NAME="{isa}"', f"-I{cpu_kernels.KERNELS}", str(DRIVER),
               *map(str, cpu_kernels.SOURCES), "-o", str(binary), "-lm"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the {isa} build does not compile:\n{done.stderr[-4000:]}"
    return binary


def run_driver(*command: str) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(done.stdout)


def kind(key: str) -> str:
    if key.endswith("argmax") or key.startswith("q8_dequantize/") or key.endswith("/sum"):
        return "exact"
    if key.startswith("decode_layers/"):
        return "step"
    return "bf16" if "/bf16/" in key else "fp32"


def bf16_ordinal(value: float) -> int:
    """A bf16 value's place on the number line: neighbouring bf16 values differ by 1."""
    bits = struct.unpack("<I", struct.pack("<f", value))[0] >> 16
    return bits if bits < 0x8000 else -(bits & 0x7FFF)


def close(how: str, got: float, want: float, scale: float) -> bool:
    if not (math.isfinite(got) and math.isfinite(want)):  # NaN where NaN, the same infinity
        return (math.isnan(got) and math.isnan(want)) or got == want
    if how == "exact":
        return got == want
    if how == "bf16":
        return abs(bf16_ordinal(got) - bf16_ordinal(want)) <= 1
    return abs(got - want) <= RELATIVE[how] * scale


def assert_same_results(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    wrong = []
    for key, values in want.items():
        if key == "isa":
            continue
        assert len(got[key]) == len(values), key
        scale = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
        bad = [i for i, (g, w) in enumerate(zip(got[key], values)) if not close(kind(key), g, w, scale)]
        if bad:
            i = bad[0]
            example = f"[{i}] {got[key][i]!r}, portable {values[i]!r}"
            wrong.append(f"{key} ({kind(key)}): {len(bad)} of {len(values)} differ, e.g. {example}")
    assert not wrong, "\n".join(wrong)


@pytest.fixture(scope="module")
def host_cc() -> str:
    cc = cpu_kernels._compiler()
    if cc is None:
        pytest.skip("no C compiler here: the kernels are not built")
    return cc


@pytest.fixture(scope="module")
def portable(host_cc, tmp_path_factory) -> dict:
    """The portable build's results on this host: plain C, the reference."""
    binary = build_driver(host_cc, "portable", (), tmp_path_factory.mktemp("portable"))
    results = run_driver(str(binary))
    assert results["isa"] == "portable"
    return results


@pytest.fixture(scope="module")
def arm64_drivers(tmp_path_factory) -> dict[str, Path]:
    missing = [tool for tool in (CROSS_CC, QEMU) if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian: apt-get install gcc-aarch64-linux-gnu qemu-user): "
                    "the ARM64 NEON builds are not checked")  # fmt: skip
    out = tmp_path_factory.mktemp("arm64")
    # Static: qemu then needs no ARM64 sysroot. builds[0]: the build's flags whatever this CPU has.
    return {name: build_driver(CROSS_CC, name, cpu_isa.BY_NAME[name].builds[0][1], out, "-static")
            for name in QEMU_CPU}  # fmt: skip


def test_the_driver_runs_every_kernel_in_the_portable_build(portable) -> None:
    kernels = {key.split("/")[0] for key in portable if key != "isa"}
    assert kernels == {"q8_linear", "q8_dequantize", "add_rms_norm", "logits_argmax_lse", "decode_attention",
                       "decode_layers"}  # fmt: skip
    argmax, lse = portable["logits_argmax_lse/argmax"], portable["logits_argmax_lse/lse"]
    assert argmax[1] == 700 and math.isnan(lse[1])  # the row with a NaN: its index, and a NaN lse
    assert lse[3] == -math.inf  # a row of -inf


@pytest.mark.parametrize("isa", HOST_ISAS)
def test_each_build_this_host_runs_computes_what_the_portable_build_computes(host_cc, portable, tmp_path, isa) -> None:
    binary = build_driver(host_cc, isa, cpu_isa.BY_NAME[isa].cflags(), tmp_path)
    results = run_driver(str(binary))
    assert results["isa"] == isa
    assert_same_results(results, portable)


@pytest.mark.parametrize("isa", list(QEMU_CPU))
def test_the_arm64_neon_builds_compute_under_qemu_what_the_portable_build_computes(arm64_drivers, portable, isa):
    results = run_driver(QEMU, "-cpu", QEMU_CPU[isa], str(arm64_drivers[isa]))
    assert results["isa"] == isa
    assert_same_results(results, portable)


def test_the_dotprod_build_uses_the_dot_product_instructions_a_cortex_a53_lacks(arm64_drivers) -> None:
    """Its q8 dot products are sdot (the __ARM_FEATURE_DOTPROD path), not the plain NEON build's smull and sadalp."""
    binary = arm64_drivers["neon-dotprod"]
    command = [QEMU, "-cpu", "cortex-a53", str(binary)]
    done = subprocess.run(command, capture_output=True, cwd=binary.parent, timeout=120)  # cwd: for its core file
    assert done.returncode == -signal.SIGILL
