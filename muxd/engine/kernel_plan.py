"""How a model's forward runs on this machine: one ``KernelPlan``, decided once at load.

What a user asks for (a dtype, a quantization) is not always what this CPU
can run well, or at all: oneDNN has no bf16 path without AVX-512 or
AVX-NE-CONVERT (PyTorch's pre-packed bf16 linear raises there), and q8 needs
a C compiler for its kernels. Rather than several places each falling back
to torch in silence, the plan says once what runs, on which instruction set,
and why it differs from what was asked; the unit logs it and
``/muxd/v1/status`` and ``muxd ps`` show it (``q8/avx2``).

``quantization = "auto"`` asks for the fastest plan on this CPU: q8 or the
full-precision weights, whichever a measured batch-1 linear runs faster.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import torch

from muxd.engine import cpu_isa
from muxd.engine.cpu_kernels import load_kernels

log = logging.getLogger(__name__)

AUTO = "auto"
_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True)
class KernelPlan:
    device: str  # "cpu", "cuda", "cuda:1"
    weights: str  # "q8", "int8", "nf4", "fp4", or the weights' dtype ("float32", "bfloat16", "float16")
    dtype: str  # the activations' dtype (and the weights' where not quantized)
    kernels: str  # the CPU kernels' instruction set ("avx2", ...), "torch" without them, or "cuda"
    reasons: tuple[str, ...] = ()  # where the plan differs from what was asked, why

    @property
    def quantization(self) -> str:
        """The loader's quantization: "none" where the weights are a dtype."""
        return "none" if self.weights in ("float32", "bfloat16", "float16") else self.weights

    @property
    def label(self) -> str:
        """Short, for tables: ``q8/avx2``, ``fp32/avx512-vnni``, ``bf16/cuda``."""
        return f"{_SHORT.get(self.weights, self.weights)}/{self.kernels}"

    def describe(self) -> str:
        why = "; ".join(self.reasons)
        return f"{self.label}, {self.dtype} activations" + (f" ({why})" if why else "")


def plan(device: str, dtype: str, quantization: str) -> KernelPlan:
    """The plan for a model asked to load on ``device`` in ``dtype`` with
    ``quantization``. Raises ValueError for a bad ``MUXD_CPU_ISA``."""
    kind = torch.device(device).type
    if kind != "cpu":
        quantization = "none" if quantization == AUTO else quantization
        return KernelPlan(device, dtype if quantization == "none" else quantization, dtype, kind)
    reasons: list[str] = []
    isa = cpu_isa.selected()  # first: a bad MUXD_CPU_ISA is an error, whatever else
    if dtype == "bfloat16" and not cpu_isa.bf16_supported():
        dtype = "float32"
        reasons.append(f"bfloat16 asked for, but oneDNN has no bf16 path on {_cpu()} (it needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT)")
    kernels = isa.name if load_kernels() is not None else "torch"
    if kernels == "torch":
        reasons.append("no C compiler or the kernels did not build: torch ops")
    if quantization == AUTO:
        quantization, why = fastest_cpu_quantization(dtype)
        reasons.append(why)
    return KernelPlan(device, dtype if quantization == "none" else quantization, dtype, kernels, tuple(reasons))


def _cpu() -> str:
    isa = cpu_isa.selected()
    forced = f", {cpu_isa.ENV}={isa.name}" if isa != cpu_isa.best() else ""
    return f"this CPU ({cpu_isa.cpu_model()}{forced})"


@functools.cache
def fastest_cpu_quantization(dtype: str) -> tuple[str, str]:
    """``("q8" or "none", why)``: whichever a batch-1 linear of 4096 x 2048
    weights (32 MB in fp32, more than most L3 slices) runs faster here,
    measured (median of 15 calls after warm-up). Once per process."""
    from muxd.engine.model import PackedLinear, can_pack
    from muxd.engine.q8 import Q8Linear

    if load_kernels() is None:
        return "none", "auto: no q8 kernels here, so full-precision weights"
    torch_dtype = getattr(torch, dtype)
    linear = torch.nn.Linear(2048, 4096, bias=False)
    full = PackedLinear(linear.to(torch_dtype)) if can_pack(torch.device("cpu"), torch_dtype) else linear.to(torch_dtype)
    times = {"q8": _median_call(Q8Linear(linear.float()), torch_dtype), "none": _median_call(full, torch_dtype)}
    best = min(times, key=times.__getitem__)
    return best, f"auto: q8 {times['q8'] * 1e3:.2f} ms against {dtype} {times['none'] * 1e3:.2f} ms a batch-1 linear here"


def _median_call(layer: torch.nn.Module, dtype: torch.dtype) -> float:
    x = torch.randn(1, 2048).to(dtype)
    with torch.inference_mode():
        for _ in range(3):
            layer(x)
        times = []
        for _ in range(15):
            start = time.perf_counter()
            layer(x)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
