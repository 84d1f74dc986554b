"""A compact forward for the Llama family (Llama, Mistral, Qwen2, Qwen3).

Written out in the gpt-fast manner rather than driving transformers' modules
because the hot path wants things those modules do not do: fused QKV and
gate/up projections, flat ragged batches with no padding in the linears,
K/V written straight into the shared page pool, and no per-layer mask
construction. Parity with transformers' ``generate`` is tested per family.
The linears are plain ``nn.Linear`` so quantized layers can take their place.
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from muxd.engine.attention import (
    AttentionMetadata,
    fused_decode_attention,
    paged_attention,
    triton_decode,
    triton_decode_attention,
    write_kv,
)
from muxd.engine import cpu_isa
from muxd.engine.cpu_kernels import DecodeBatch, DecodeLayer, DecodeModel, load_kernels
from muxd.engine.q8 import GEMM_ROWS, Q8Linear
from muxd.models.spec import ModelSpec


# Up to this many values (e.g. 64 rows of 1024) RMSNorm runs as one C call on
# a CPU (kernels/norm.c), which saves a decode step the dispatch of torch's
# half-dozen ops; bigger inputs (prefill) keep torch's ops, which use every
# intra-op thread where the C call uses one.
NORM_KERNEL_VALUES = 1 << 16


class RMSNorm(nn.Module):
    """transformers' LlamaRMSNorm in two ops: normalise (fp32 inside, rounded to
    the input dtype), then scale. Scaling after the rounding, as transformers
    does, matters in bf16: SmolLM2's first answer token is a near-tie there."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (kernels := self._kernels(x)) is not None:
            return self._in_c(kernels, x, None)[1]
        return self.weight * F.rms_norm(x, self.weight.shape, None, self.eps)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x + residual, self(x + residual))``, in one C call on a CPU decode step."""
        if (kernels := self._kernels(x)) is not None and residual.is_contiguous() and residual.dtype == x.dtype:
            return self._in_c(kernels, x, residual)
        total = x + residual
        return total, self(total)

    def _in_c(self, kernels, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``kernels/norm.c``: ``(x + residual, its norm)``, or ``(x, its norm)`` without a residual."""
        total = x if residual is None else torch.empty_like(x)
        out = torch.empty_like(x)
        kernels.add_rms_norm(
            x.data_ptr(), None if residual is None else residual.data_ptr(), self.weight.data_ptr(), self.eps,
            x.numel() // x.shape[-1], x.shape[-1], None if residual is None else total.data_ptr(), out.data_ptr(),
            int(x.dtype == torch.bfloat16),
        )  # fmt: skip
        return total, out

    def _kernels(self, x: torch.Tensor):
        """The C kernels where they apply: small batches (decode) of contiguous
        CPU rows in the weight's dtype."""
        if x.device.type != "cpu" or x.dtype != self.weight.dtype or x.dtype not in (torch.float32, torch.bfloat16):
            return None
        if x.numel() > NORM_KERNEL_VALUES or not x.is_contiguous():
            return None
        return load_kernels()


def linear(layer: nn.Module, x: torch.Tensor, threads: int, prefill: bool = False) -> torch.Tensor:
    """``layer(x)`` on ``threads`` intra-op threads (0: the caller's count, restored after).

    ``prefill``: the rows of a prompt, which a q8 layer computes from finer
    activations than a decode step's int8 (``Q8Linear.prefill``): a short
    prefill (the tail after a cached prefix) through int8 activations flipped
    SmolLM2's near-tie answer to the demo question.

    A CPU decode step runs its many small ops on one thread (they only pay
    OpenMP's fork/join on a second), but its matmuls are the weights' read
    and go faster on every core the job holds: on SmolLM2 at batch 1, bf16
    linears take 15.5 ms on two threads against 21.3 on one (fp32: 24.6
    against 37.9), and switching the count per call costs nothing measurable.
    """
    # ``layer.forward``, not ``layer(...)``: ``nn.Module.__call__`` costs ~6 us
    # of hook handling per call, 0.7 ms of a batch-1 step's 121 linears, and
    # the engine registers no hooks.
    forward = layer.prefill if prefill and isinstance(layer, Q8Linear) and x.shape[0] > 0 else layer.forward
    previous = torch.get_num_threads()
    if threads <= 0 or threads == previous:
        return forward(x)
    torch.set_num_threads(threads)
    try:
        return forward(x)
    finally:
        torch.set_num_threads(previous)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, layer: int, qkv_bias: bool, o_bias: bool) -> None:
        super().__init__()
        self.spec = spec
        self.layer = layer
        self.window = spec.sliding_windows[layer]
        self.scale = spec.head_dim**-0.5
        self.qkv_proj = nn.Linear(spec.hidden_size, spec.q_size + 2 * spec.kv_size, bias=qkv_bias)
        self.o_proj = nn.Linear(spec.q_size, spec.hidden_size, bias=o_bias)
        if spec.qk_norm:
            self.q_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps)
            self.k_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,  # [N, hidden]
        cos: torch.Tensor,  # [N, 1, D]
        sin: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
        threads: int = 0,
    ) -> torch.Tensor:
        s = self.spec
        prefill = meta.max_q > 1
        qkv = linear(self.qkv_proj, x, threads, prefill).view(-1, s.num_heads + 2 * s.num_kv_heads, s.head_dim)
        qk, v = qkv.split([s.num_heads + s.num_kv_heads, s.num_kv_heads], dim=1)  # [N, Hq + Hkv, D], [N, Hkv, D]
        if s.qk_norm:
            q, k = qk.split([s.num_heads, s.num_kv_heads], dim=1)
            qk = torch.cat((self.q_norm(q), self.k_norm(k)), dim=1)
        triton = not prefill and triton_decode(qk.device)
        fused = None if triton else fused_decode_attention(qk, v, cos, sin, kv[0], kv[1], meta, self.layer,
                                                           s.num_heads, self.scale, self.window)
        if fused is not None:  # a CPU decode step: the rest of this method in one C call
            return linear(self.o_proj, fused, threads)
        # RoPE on q and k at once. transformers' ``rotate_half(x) * sin`` is
        # ``[-x2 * s1, x1 * s2]``; rolling x by half a head and flipping the
        # sign of the first half of sin (done once, in ``set_rope``) gives the
        # same values, bit for bit, in fewer ops.
        qk = qk * cos + qk.roll(s.head_dim // 2, -1) * sin
        q, k = qk.split([s.num_heads, s.num_kv_heads], dim=1)
        out = triton_decode_attention(q, k, v, kv[0], kv[1], meta, self.layer, self.scale, self.window) \
            if triton else None  # a GPU decode step: pages read where they lie
        if out is None:
            write_kv(kv[0], kv[1], k, v, meta, self.layer)
            out = paged_attention(q, kv[0], kv[1], meta, self.layer, self.scale, self.window)
        return linear(self.o_proj, out, threads, prefill)


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec, bias: bool) -> None:
        super().__init__()
        self.intermediate = spec.intermediate_size
        self.gate_up_proj = nn.Linear(spec.hidden_size, 2 * spec.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, threads: int = 0, prefill: bool = False) -> torch.Tensor:
        gate, up = linear(self.gate_up_proj, x, threads, prefill).split(self.intermediate, dim=-1)
        return linear(self.down_proj, F.silu(gate) * up, threads, prefill)


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, layer: int, qkv_bias: bool, o_bias: bool, mlp_bias: bool) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.self_attn = Attention(spec, layer, qkv_bias, o_bias)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp = MLP(spec, mlp_bias)

    def forward(self, x, cos, sin, kv, meta, threads: int = 0) -> torch.Tensor:
        x, h = self.post_attention_layernorm.add_and_norm(x, self.self_attn(self.input_layernorm(x), cos, sin, kv, meta, threads))
        return x + self.mlp(h, threads, meta.max_q > 1)


class Logits(NamedTuple):
    """A step's logits ``[rows, vocab]`` (fp32) and, where the step computed
    them on the way (a CPU decode step in C), each row's argmax and
    log-normaliser, which the sampler then need not compute."""

    values: torch.Tensor
    argmax_lse: tuple[torch.Tensor, torch.Tensor] | None = None


class Transformer(nn.Module):
    """``forward(token_ids [N], meta, kv, sample_rows) -> Logits`` of ``len(sample_rows)`` rows.

    ``matmul_threads`` > 0 runs the linears on that many intra-op threads
    and leaves the caller's count (one, for a CPU decode job) to the rest.
    """

    def __init__(
        self,
        spec: ModelSpec,
        qkv_bias: bool = False,
        o_bias: bool = False,
        mlp_bias: bool = False,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(Block(spec, i, qkv_bias, o_bias, mlp_bias) for i in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        self.cos_table: torch.Tensor | None = None  # [max_position, D], set by set_rope
        self.sin_table: torch.Tensor | None = None  # first half negated

    def set_rope(self, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Store the tables, the first half of sin negated (see ``Attention.forward``)."""
        half = cos.shape[-1] // 2
        self.cos_table, self.sin_table = cos, torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)

    def forward(
        self,
        token_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv: tuple[torch.Tensor, torch.Tensor],
        sample_rows: torch.Tensor,
        matmul_threads: int = 0,
    ) -> Logits:
        x = self.embed_tokens(token_ids)  # [N, hidden]
        cos = self.cos_table[meta.positions][:, None, :]  # [N, 1, D], shared by all heads
        sin = self.sin_table[meta.positions][:, None, :]
        # A decode job samples every row, in order.
        every_row = meta.max_q == 1 and sample_rows.numel() == x.shape[0]
        done, logits = self._decode_in_c(x, cos, sin, kv, meta, matmul_threads, with_head=every_row)
        if logits is not None:
            return logits
        if not done:
            for block in self.layers:
                x = block(x, cos, sin, kv, meta, matmul_threads)
        if not every_row:
            x = x[sample_rows]
        return Logits(linear(self.lm_head, self.norm(x), matmul_threads).float())

    def _decode_in_c(
        self, x, cos, sin, kv, meta: AttentionMetadata, threads: int, with_head: bool = False
    ) -> tuple[bool, Logits | None]:
        """Run every block of a CPU decode step in one call of
        ``kernels/decode_step.c`` (``x`` updated in place) and, ``with_head``
        where lm_head is a q8 kernel layer too, the final norm, lm_head and
        each row's argmax and log-normaliser: ``(True, Logits or None)``.
        ``(False, None)``, having done nothing, where it does not apply: not a
        decode job, not on a CPU, not a q8 model, Qwen3's q/k norms, no
        compiled kernels."""
        if meta.max_q != 1 or x.device.type != "cpu" or (c_model := self._c_model(x.dtype)) is None:
            return False, None
        k_cache, v_cache = kv
        if k_cache.dtype != x.dtype or k_cache.stride() != v_cache.stride() or k_cache.stride(2) != 1:
            return False, None
        tables = meta.block_tables  # [B, M, L, Hkv], read as they are
        if not tables.is_contiguous():
            return False, None
        B, V = x.shape[0], self.spec.vocab_size
        logits = None
        if with_head and B < GEMM_ROWS and c_model.lm_head:
            f32, i64 = torch.float32, torch.int64
            logits = Logits(torch.empty(B, V, dtype=f32), (torch.empty(B, dtype=i64), torch.empty(B, dtype=f32)))
        batch = DecodeBatch(
            x.data_ptr(), B, cos.data_ptr(), sin.data_ptr(), meta.positions.data_ptr(),
            k_cache.data_ptr(), v_cache.data_ptr(), k_cache.stride(0), k_cache.stride(1), k_cache.shape[1],
            tables.data_ptr(), tables.shape[1],
            *((None,) * 3 if logits is None else (logits.values.data_ptr(), *(t.data_ptr() for t in logits.argmax_lse))),
            threads if threads > 0 else torch.get_num_threads(),
        )  # fmt: skip
        if c_model.kernels.decode_layers(ctypes.byref(c_model), ctypes.byref(batch)) != 0:
            raise MemoryError("decode step: no memory for its activations")
        return True, logits

    def _c_model(self, dtype: torch.dtype) -> DecodeModel | None:
        """``decode_step.c``'s view of this model (kernels.h's decode_model_t),
        made once per dtype (until ``_apply``); None where the blocks are not
        all q8 kernel layers. lm_head is in it where it is a q8 kernel layer
        too (else the head runs in torch, and at more rows takes the GEMM path)."""
        known = self.__dict__.setdefault("_c_models", {})
        if dtype not in known:
            known[dtype] = self._build_c_model(dtype)
        return known[dtype]

    def _build_c_model(self, dtype: torch.dtype) -> DecodeModel | None:
        kernels = load_kernels()
        if self.spec.qk_norm or dtype not in (torch.float32, torch.bfloat16) or kernels is None:
            return None
        layers = [_c_layer(block, dtype) for block in self.layers]
        if any(layer is None for layer in layers):
            return None
        s = self.spec
        c_layers = (DecodeLayer * len(layers))(*layers)
        head, norm = self.lm_head, self.norm.weight
        head_ok = isinstance(head, Q8Linear) and head.kernel is not None and head.c_weight is not None
        head_ok = head_ok and norm.dtype == dtype and norm.is_contiguous() and head.in_features == s.hidden_size
        c_model = DecodeModel(
            c_layers, s.num_layers, s.hidden_size, s.intermediate_size, s.num_heads, s.num_kv_heads, s.head_dim,
            s.vocab_size, s.rms_norm_eps, s.head_dim**-0.5, int(dtype == torch.bfloat16),
            norm.data_ptr() if head_ok else None, ctypes.pointer(head.c_weight) if head_ok else None,
        )  # fmt: skip
        c_model.layers_array, c_model.kernels = c_layers, kernels  # what it points into lives as long as it; its library
        return c_model

    def _apply(self, fn, recurse: bool = True):
        self.__dict__.pop("_c_models", None)  # moved or cast tensors: pointers change
        return super()._apply(fn, recurse)


def _c_layer(block: Block, dtype: torch.dtype) -> DecodeLayer | None:
    """One block as ``decode_step.c`` reads it, or None where it cannot."""
    attn, mlp = block.self_attn, block.mlp
    linears = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
    norms = (block.input_layernorm.weight, block.post_attention_layernorm.weight)
    if not all(isinstance(lin, Q8Linear) and lin.kernel is not None and lin.c_weight is not None for lin in linears):
        return None
    if not all(w.dtype == dtype and w.is_contiguous() for w in norms):
        return None
    qkv, o, gate_up, down = (lin.c_weight for lin in linears)
    return DecodeLayer(norms[0].data_ptr(), qkv, o, norms[1].data_ptr(), gate_up, down, attn.window or 0)


class PackedLinear(nn.Module):
    """A CPU linear whose weight is pre-packed once for oneDNN.

    On this project's CPUs a decode step is a chain of small-batch matmuls
    that should run at memory bandwidth; ``F.linear`` reaches about half of
    it at batch 1 (fp32 uses one core), a pre-packed oneDNN weight reaches
    nearly all of it for fp32 and bf16 and gives the same results (the
    engine bench measures both). The original weight is dropped (a tied
    lm_head is a ``TiedLinear`` instead, see ``pack_linears``).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach()))
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether oneDNN can pack a linear of ``dtype`` here (bf16 only where it has a bf16 path)."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and cpu_isa.bf16_supported())


class TiedLinear(nn.Linear):
    """A linear whose weight another module holds too (a tied lm_head: the
    embedding table), run by oneDNN on that plain tensor rather than packed,
    so the model keeps one copy (SmolLM2's is 113 MB in fp32). On SmolLM2's
    fp32 head that is as fast as packed at 1 row and ~1.6x slower at 16 (a
    batch-16 decode step ~8 % slower); ``F.linear`` is 1.7-2.4x slower."""

    @classmethod
    def sharing(cls, linear: nn.Linear) -> TiedLinear:
        with torch.device("meta"):  # no init: the shared tensors are assigned below
            tied = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        tied.weight, tied.bias = linear.weight, linear.bias
        return tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def pack_linears(model: nn.Module) -> None:
    """Swap every plain ``nn.Linear`` of ``model`` for a ``PackedLinear`` (in
    place), or for a ``TiedLinear`` where its weight is another module's too."""
    params = [p for _, p in model.named_parameters(remove_duplicate=False)]
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                shared = sum(p is child.weight for p in params) > 1  # a tied lm_head: the embedding's
                setattr(parent, name, TiedLinear.sharing(child) if shared else PackedLinear(child))


def rope_tables(hf_config, spec: ModelSpec, dtype: torch.dtype, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[max_position, head_dim]`` exactly as transformers computes them (fp32, then cast)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if spec.rope_type == "default":
        base = hf_config.rope_parameters["rope_theta"]
        d = spec.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float) / d))
        scaling = 1.0
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[spec.rope_type](hf_config, "cpu")
    positions = torch.arange(spec.max_position, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq.float()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos() * scaling, emb.sin() * scaling
    return cos.to(dtype=dtype, device=device), sin.to(dtype=dtype, device=device)
