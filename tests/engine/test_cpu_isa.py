"""The kernels' builds per instruction set: chosen from the CPU at run time, forced lower by MUXD_CPU_ISA, all compiling."""

from __future__ import annotations

import platform
import shutil

import pytest
import torch

from muxd.engine import cpu_isa, cpu_kernels, kernel_plan
from muxd.engine.cpu_kernels import load_kernels

AVX2_ONLY = frozenset({"avx", "avx2", "fma", "f16c", "sse4_2"})  # an AMD Zen 3, Intel Core 12th-14th gen without AVX-VNNI
ZEN4 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16"}
ALDER_LAKE = AVX2_ONLY | {"avx_vnni"}


def names(isas) -> list[str]:
    return [isa.name for isa in isas]


def test_the_best_build_follows_the_cpus_features() -> None:
    assert names(cpu_isa.runnable("x86_64", AVX2_ONLY)) == ["portable", "avx2"]
    assert names(cpu_isa.runnable("x86_64", ALDER_LAKE)) == ["portable", "avx2", "avx-vnni"]
    assert names(cpu_isa.runnable("x86_64", ZEN4)) == ["portable", "avx2", "avx-vnni", "avx512", "avx512-vnni"]
    assert names(cpu_isa.runnable("aarch64", frozenset({"asimd", "asimddp"}))) == ["portable", "neon", "neon-dotprod"]
    assert names(cpu_isa.runnable("riscv64", frozenset({"rvv"}))) == ["portable"]


def test_avx_vnni_runs_on_avx512_vnni_cpus_in_its_evex_form() -> None:
    isa = cpu_isa.BY_NAME["avx-vnni"]
    assert "-mavxvnni" in isa.cflags(ALDER_LAKE)
    assert "-mavx512vnni" in isa.cflags(ZEN4) and "-DMUXD_AVX2" in isa.cflags(ZEN4)
    assert isa.cflags(AVX2_ONLY) is None


def test_without_the_variable_muxd_takes_the_best_build_this_cpu_runs(monkeypatch) -> None:
    monkeypatch.delenv(cpu_isa.ENV, raising=False)
    assert cpu_isa.selected() == cpu_isa.runnable()[-1]


def test_the_variable_forces_a_lower_build(monkeypatch) -> None:
    monkeypatch.setenv(cpu_isa.ENV, "portable")
    assert cpu_isa.selected().name == "portable"
    lib = load_kernels()
    if lib is not None:
        assert lib.muxd_isa() == b"portable"


@pytest.mark.parametrize("value, message", [("avx9", "not an instruction set muxd knows"), ("sve2", "not an instruction set")])
def test_an_unknown_build_is_refused_by_name(monkeypatch, value, message) -> None:
    monkeypatch.setenv(cpu_isa.ENV, value)
    with pytest.raises(ValueError, match=f"{message}.*this CPU runs: portable"):
        cpu_isa.selected()


def test_a_build_this_cpu_cannot_run_is_refused(monkeypatch) -> None:
    other = "neon" if platform.machine() in ("x86_64", "amd64") else "avx2"
    monkeypatch.setenv(cpu_isa.ENV, other)
    with pytest.raises(ValueError, match="this CPU cannot run it"):
        cpu_isa.selected()


def test_a_forced_build_below_avx512_has_no_bf16(monkeypatch) -> None:
    monkeypatch.setenv(cpu_isa.ENV, "avx2")
    assert not cpu_isa.bf16_supported()


def every_build_for_this_architecture():
    """(isa, cflags) of every build of this machine's architecture, runnable here or not."""
    machine = platform.machine().lower()
    for isa in cpu_isa.ISAS:
        if not isa.machines or machine in isa.machines:
            for _, cflags in isa.builds:
                yield pytest.param(isa, cflags, id=f"{isa.name}{' ' + cflags[-2] if len(isa.builds) > 1 else ''}")


@pytest.mark.parametrize("isa, cflags", list(every_build_for_this_architecture()))
def test_every_build_compiles_even_where_this_cpu_cannot_run_it(isa, cflags) -> None:
    if cpu_kernels._compiler() is None:
        pytest.skip("no C compiler here")
    assert cpu_kernels.build(isa, cflags) is not None


def test_no_compiler_leaves_the_plan_on_torch(monkeypatch) -> None:
    monkeypatch.setattr(cpu_kernels, "_compiler", lambda: None)
    load_kernels.cache_clear()
    try:
        plan = kernel_plan.plan("cpu", "float32", "q8")
        assert plan.label == "q8/torch" and "no C compiler" in plan.describe()
    finally:
        load_kernels.cache_clear()


def test_the_plan_names_the_instruction_set(cpu_isa_name) -> None:
    if cpu_kernels._compiler() is None:
        pytest.skip("no C compiler here")
    assert kernel_plan.plan("cpu", "float32", "q8").label == f"q8/{cpu_isa_name}"


def test_bf16_asked_for_where_onednn_has_no_bf16_path_runs_in_fp32(monkeypatch, tiny_model_dirs) -> None:
    from muxd.models.loader import load_model

    monkeypatch.setenv(cpu_isa.ENV, "avx2")
    loaded = load_model(tiny_model_dirs["llama"], "bfloat16")
    assert loaded.dtype == torch.float32
    assert loaded.plan.dtype == "float32" and "no bf16 path" in loaded.plan.describe()
    assert not any(type(m).__name__ == "PackedLinear" and m.packed_weight.dtype == torch.bfloat16 for m in loaded.model.modules())


def test_auto_takes_the_faster_of_q8_and_full_precision_as_measured(monkeypatch) -> None:
    kernel_plan.fastest_cpu_quantization.cache_clear()
    plan = kernel_plan.plan("cpu", "float32", "auto")
    assert plan.quantization in ("q8", "none")
    assert "auto: q8" in plan.describe() or "no q8 kernels" in plan.describe()


def test_a_gpu_plan_keeps_what_was_asked() -> None:
    plan = kernel_plan.plan("cuda", "bfloat16", "auto")
    assert (plan.label, plan.dtype) == ("bf16/cuda", "bfloat16")


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="no ARM64 cross compiler (gcc-aarch64-linux-gnu)")
@pytest.mark.parametrize("name", ["neon", "neon-dotprod"])
def test_the_neon_builds_compile_with_the_cross_compiler(name) -> None:
    isa = cpu_isa.BY_NAME[name]
    assert cpu_kernels.build(isa, isa.builds[0][1], cc=shutil.which("aarch64-linux-gnu-gcc")) is not None
