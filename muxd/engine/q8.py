"""The ``q8`` CPU linear: int8 weights read at memory bandwidth (``kernels/q8.c``).

A batch-1 decode step is the weights' read. On this project's CPUs PyTorch's
int8 kernels read far below bandwidth and oneDNN's bf16 GEMV about half of
it; ``q8.c`` streams int8 weights (half of bf16's bytes) at nearly the
bandwidth ``torch.sum`` reaches, so SmolLM2's linears take about 5 ms a
step instead of about 14. The format is llama.cpp's Q8_0 on both sides:
int8 in groups of 32 with a scale each, for the weights (fp16 scales, at
load) and for the activations (fp32 scales, per call).

The kernel is part of muxd's CPU kernel library (``engine/cpu_kernels.py``:
compiled on first use, loaded with ``ctypes``). Where it cannot be built,
``Q8Linear`` computes the same arithmetic with torch ops (slower, same
results to rounding).
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from torch import nn

from muxd.engine import cpu_isa
from muxd.engine.cpu_kernels import Q8Weight, load_kernels

GROUP = 32  # inputs per scale, weights and activations alike (kernels/q8.c: GROUP)
CHUNK = 64  # K is padded to whole vectors of two groups (kernels/q8.c: CHUNK)
# From this many rows on (a prefill, a big decode batch) the weight is
# dequantized for a BLAS GEMM (bf16, or fp32 without oneDNN's bf16 path)
# instead of the GEMV-shaped kernel; below it a prefill's rows take the
# kernel's two int8 passes (``Q8Linear.prefill``). On AVX-512 VNNI the
# kernel stayed ahead of the GEMM to about 56 rows, but one int8 pass over a
# ~35-token prefill of the demo's question lost its answer (Paris), and the
# two-pass path costs twice the kernel; docs/llama-cpp-peer.md has the figures.
GEMM_ROWS = 24


def padded(k: int) -> int:
    return -(-k // CHUNK) * CHUNK


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight [N, K]`` -> int8 ``[N, Kp]`` (zero-padded) and an fp16 scale per
    row and group of 32 ``[N, Kp / 32]`` (llama.cpp's Q8_0: 8.5 bits a weight).
    The values are rounded against the fp16 scale the kernel will use."""
    w = F.pad(weight.detach().float(), (0, padded(weight.shape[1]) - weight.shape[1]))
    groups = w.view(w.shape[0], -1, GROUP)
    scale = (groups.abs().amax(dim=-1) / 127.0).half()  # [N, Kp / 32]
    inverse = torch.where(scale > 0, 1.0 / scale.float(), 0.0)
    q = torch.round(groups * inverse[..., None]).clamp(-127, 127).to(torch.int8)
    return q.view_as(w).contiguous(), scale.contiguous()


def dequantize(weight_q: torch.Tensor, scale: torch.Tensor, k: int) -> torch.Tensor:
    """The fp32 weight ``[N, k]`` that ``weight_q`` and ``scale`` stand for."""
    n, kp = weight_q.shape
    return (weight_q.view(n, -1, GROUP).float() * scale.float()[..., None]).view(n, kp)[:, :k]


def reference_linear(
    x: torch.Tensor, weight_q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, fine: bool = False
) -> torch.Tensor:
    """The kernel's arithmetic in torch ops: ``x`` quantized per row and group
    of 32 (symmetric, ties to even), exact integer dot products per group,
    scaled by both groups' scales and summed in fp32; ``fine``: a second pass
    over x's rounding error, quantized alike. The fallback without a
    compiler, and the tests' reference."""
    m, k = x.shape
    kp = weight_q.shape[1]
    xg = F.pad(x.float(), (0, kp - k)).view(m, kp // GROUP, GROUP)
    wg = weight_q.view(-1, kp // GROUP, GROUP).float()  # [N, groups, 32]
    xq, x_scale = _quantize_groups(xg)
    y = _int8_pass(xq, x_scale, wg, scale)
    if fine:
        y = y + _int8_pass(*_quantize_groups(xg - xq * x_scale[..., None]), wg, scale)
    return y + bias.float() if bias is not None else y


def _quantize_groups(xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``xg [M, groups, 32]`` -> its int8 values (as floats) and a scale per group, as q8.c rounds."""
    amax = xg.abs().amax(dim=-1)
    return torch.round(xg * torch.where(amax > 0, 127.0 / amax, 0.0)[..., None]), amax / 127.0


def _int8_pass(xq: torch.Tensor, x_scale: torch.Tensor, wg: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    dots = torch.einsum("mgk,ngk->mng", xq, wg)  # integers below 2**24: exact in fp32
    return (dots * (x_scale[:, None, :] * scale.float()[None, :, :])).sum(-1)


class Q8Linear(nn.Module):
    """A CPU linear with int8 weights (an fp16 scale per group of 32) run by ``kernels/q8.c``.

    The input may be bf16 or fp32 and the output has its dtype. The kernel
    splits the output rows over the caller's intra-op thread count
    (``torch.get_num_threads()``), which ``engine.model.linear`` sets per job.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight_q, scale = quantize_weight(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().float().contiguous()
        self._hold(linear.in_features, linear.out_features, weight_q, scale, bias)
        self.refresh()

    @classmethod
    def shell(cls, linear: nn.Linear) -> Q8Linear:
        """A layer of ``linear``'s shape that quantizes nothing: its buffers are
        on the meta device, for quantized tensors saved earlier to be assigned
        (``models.prepared``); call ``refresh`` once they are."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        n, kp = linear.out_features, padded(linear.in_features)
        weight_q = torch.empty(n, kp, dtype=torch.int8, device="meta")
        scale = torch.empty(n, kp // GROUP, dtype=torch.float16, device="meta")
        bias = None if linear.bias is None else torch.empty(n, device="meta")
        layer._hold(linear.in_features, n, weight_q, scale, bias)
        layer.c_weight = None
        return layer

    def _hold(self, k: int, n: int, weight_q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.in_features, self.out_features = k, n
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias_f32", bias)
        self.kernel = load_kernels()
        self.gemm_dtype = gemm_dtype()  # decided once, with the kernels' build

    def refresh(self) -> None:
        """Keep the kernel's view of the weights (``Q8Weight``, kernels.h's
        q8_weight_t) made once: reading buffers through ``nn.Module.__getattr__``
        and calling ``data_ptr`` on each cost more than the kernel's own call at
        batch 1 (a decode step makes 121 of these calls on SmolLM2). None where
        the buffers are not what the kernel reads (moved or cast): the general
        path then handles it."""
        w, scale, bias = self.weight_q, self.weight_scale, self.bias_f32
        ok = w.device.type == "cpu" and w.dtype == torch.int8 and scale.dtype == torch.float16
        ok = ok and (bias is None or bias.dtype == torch.float32)
        self.c_weight = (
            Q8Weight(w.data_ptr(), scale.data_ptr(), None if bias is None else bias.data_ptr(), self.out_features, self.in_features)
            if ok else None
        )  # fmt: skip

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.refresh()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and 0 < x.shape[0] < GEMM_ROWS and x.dtype in _KERNEL_DTYPES and x.is_cpu:
            if self.kernel is not None and self.c_weight is not None and x.is_contiguous():  # a decode step's path
                return self._kernel(x)
        return self._general(x)

    def _kernel(self, x: torch.Tensor, fine: bool = False) -> torch.Tensor:
        """``kernels/q8.c`` on contiguous CPU rows ``x [M, K]`` (fp32 or bf16);
        ``fine``: x quantized twice (its rounding error the second time), for
        about 15 bits of x where int8 alone could tip a near tie."""
        y = x.new_empty(x.shape[0], self.out_features)
        bf16 = x.dtype is torch.bfloat16
        th = torch.get_num_threads()
        if self.kernel.q8_linear(x.data_ptr(), bf16, x.shape[0], ctypes.byref(self.c_weight), y.data_ptr(), bf16, fine, th):
            raise MemoryError("q8: no memory for the activations' quantized copy")
        return y

    def prefill(self, x: torch.Tensor) -> torch.Tensor:
        """``x . W^T`` for a prompt's rows, from activations finer than the
        decode path's int8: the kernel's two int8 passes below ``GEMM_ROWS``
        rows (a prefix-cached prompt's short tail), the GEMM from there on.
        Int8 activations alone turned a prefix-cached repeat of the demo's
        question from Paris to another answer."""
        return self._general(x, fine=True)

    def _general(self, x: torch.Tensor, fine: bool = False) -> torch.Tensor:
        """Any shape, dtype and row count: no rows, the GEMM, the fallback or
        the kernel (``fine``: two int8 passes, see ``_kernel``)."""
        out_shape = (*x.shape[:-1], self.out_features)
        x = x.reshape(-1, self.in_features)
        if x.shape[0] == 0:  # a prefill chunk that samples no token hands lm_head no rows
            return x.new_empty(out_shape)
        if x.shape[0] >= GEMM_ROWS:
            return self.gemm(x).view(out_shape)
        if self.kernel is None or self.c_weight is None or x.dtype not in _KERNEL_DTYPES or x.device.type != "cpu":
            y = reference_linear(x, self.weight_q, self.weight_scale, self.bias_f32, fine=fine)
            return y.to(x.dtype).view(out_shape)
        return self._kernel(x.contiguous(), fine).view(out_shape)

    def gemm(self, x: torch.Tensor) -> torch.Tensor:
        """``x [M, K] . W^T`` as a BLAS GEMM on the dequantized weight (from
        ``GEMM_ROWS`` rows on), whatever ``x``'s dtype: bf16 where oneDNN has
        a bf16 path on this CPU (bf16 GEMMs ran several times faster than
        fp32 ones on AVX-512), else fp32. Either way the activations are
        finer than the kernel's int8 ones."""
        dtype = self.gemm_dtype
        if self.kernel is None or self.c_weight is None:
            weight = dequantize(self.weight_q, self.weight_scale, self.in_features).to(dtype)
        else:
            weight = torch.empty(self.out_features, self.in_features, dtype=dtype)
            bf16 = int(dtype is torch.bfloat16)
            self.kernel.q8_dequantize(ctypes.byref(self.c_weight), weight.data_ptr(), bf16, torch.get_num_threads())
        bias = None if self.bias_f32 is None else self.bias_f32.to(dtype)
        return F.linear(x.to(dtype), weight, bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias_f32 is not None}"


_KERNEL_DTYPES = (torch.float32, torch.bfloat16)


def gemm_dtype() -> torch.dtype:
    """The dtype of the GEMM that many rows take: bf16 where this CPU has oneDNN's bf16 path."""
    return torch.bfloat16 if cpu_isa.bf16_supported() else torch.float32


def quantize_q8(model: nn.Module, names: tuple[str, ...]) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` whose attribute name is in ``names``
    for a ``Q8Linear`` (in place; returns ``model``). CPU only."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in names and type(child) is nn.Linear:
                if child.weight.device.type != "cpu":
                    raise ValueError("q8 is a CPU kernel; on CUDA use int8, nf4 or fp4")
                setattr(parent, name, Q8Linear(child))
    return model


def q8_shells(model: nn.Module, names: tuple[str, ...]) -> nn.Module:
    """``quantize_q8``'s layout without its work: each ``nn.Linear`` named in
    ``names`` becomes a ``Q8Linear.shell`` (in place; returns ``model``)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in names and type(child) is nn.Linear:
                setattr(parent, name, Q8Linear.shell(child))
    return model
