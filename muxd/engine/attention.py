"""Paged attention over the unified pool, in plain vectorised torch.

The runner builds one ``AttentionMetadata`` per job and every layer reuses
it (it travels with the job, never in a global: two models' forwards may
run at once in one unit). Tokens are flat (``N`` new tokens of ``B``
sequences, ragged); attention pads queries to ``[B, Tq]`` and gathers each
sequence's K/V pages into ``[B, kv_heads, S, head_dim]`` with ``S = blocks x
page_tokens``, masking what lies past a sequence's context.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
from dataclasses import dataclass, field
from functools import cached_property

import torch

from muxd.engine.cpu_kernels import DecodeAttention, load_kernels


@dataclass
class AttentionMetadata:
    """A job's attention metadata. The per-layer views of its page tables
    (``tables``, ``write_pages``, ``write_slots``) are made on first use: a
    CPU decode step in C reads ``block_tables`` as they are and never needs
    them (their half-dozen ops cost ~0.1 ms of a ~5 ms SmolLM2 step)."""

    num_seqs: int  # B
    max_q: int  # Tq: the longest chunk of the job (1 for decode)
    block_tables: torch.Tensor  # [B, M, L, Hkv] page ids of each sequence's blocks, padded with page 0
    page_tokens: int
    starts: list[int]  # [B] each chunk's first position (for the masks)
    ends: list[int]  # [B] context length of each sequence after the job
    pad_index: torch.Tensor | None  # [N] row of each token in [B * Tq]; None when no padding
    positions: torch.Tensor  # [N] position of each new token in its sequence
    token_seqs: list[int]  # [N] the sequence of each new token
    _masks: dict[int | None, torch.Tensor] = field(default_factory=dict, repr=False)
    _decode_masks: dict[tuple[int | None, int], torch.Tensor] = field(default_factory=dict, repr=False)

    @cached_property
    def tables(self) -> torch.Tensor:
        """``[L, B, Hkv, M]`` page ids per layer."""
        return self.block_tables.permute(2, 0, 3, 1).contiguous()

    @cached_property
    def write_pages(self) -> torch.Tensor:
        """``[L, N, Hkv]`` page of each new token per layer."""
        seqs = torch.tensor(self.token_seqs, device=self.positions.device)
        return self.block_tables[seqs, self.positions // self.page_tokens].permute(1, 0, 2).contiguous()

    @cached_property
    def slot_mapping(self) -> torch.Tensor:
        """``[L, N, Hkv]`` flat slot (page × page_tokens + offset) of each new token per layer: the Triton write's."""
        return self.write_pages * self.page_tokens + self.write_slots.view(1, -1, 1)

    @cached_property
    def lengths(self) -> torch.Tensor:
        """``[B]`` context length of each sequence after the job, on the device."""
        return torch.tensor(self.ends, device=self.block_tables.device)

    @cached_property
    def write_slots(self) -> torch.Tensor:
        """``[N, 1]`` slot of each new token inside its page."""
        return (self.positions % self.page_tokens)[:, None]

    def mask(self, window: int | None) -> torch.Tensor:
        """The additive fp32 mask ``[B, 1, 1, Tq, S]`` for ``window`` (None: no
        window): key j is visible to a query if j <= its position, j < the
        context and, under a window, j > its position - window. Built on first
        use, then shared by every layer; a CPU decode step in C never needs one."""
        mask = self._masks.get(window)
        if mask is None:
            device = self.block_tables.device
            keys = torch.arange(self.block_tables.shape[1] * self.page_tokens, device=device)
            starts, ends = torch.tensor(self.starts, device=device), torch.tensor(self.ends, device=device)
            q_pos = (starts[:, None] + torch.arange(self.max_q, device=device))[:, :, None]  # [B, Tq, 1]
            visible = (keys <= q_pos) & (keys < ends[:, None, None])
            if window is not None:
                visible &= keys > q_pos - window
            zero = torch.zeros((), dtype=torch.float32, device=keys.device)
            mask = self._masks[window] = torch.where(visible, zero, float("-inf"))[:, None, None]
        return mask

    def decode_mask(self, window: int | None, kv_heads: int) -> torch.Tensor:
        """A decode job's mask as ``[B * kv_heads or 1, 1, S]`` for ``baddbmm``:
        built once per job and window, then shared by every layer."""
        mask = self._decode_masks.get((window, kv_heads))
        if mask is None:
            B = self.num_seqs
            mask = self.mask(window).view(B, 1, 1, -1)
            mask = mask.view(1, 1, -1) if B == 1 else mask.expand(B, kv_heads, 1, -1).reshape(B * kv_heads, 1, -1)
            self._decode_masks[(window, kv_heads)] = mask
        return mask

    @classmethod
    def static(cls, block_tables: torch.Tensor, positions: torch.Tensor, lengths: torch.Tensor,
               slot_mapping: torch.Tensor, page_tokens: int) -> AttentionMetadata:  # fmt: skip
        """A decode job's metadata over fixed device buffers (``decode_graph.py``): block tables
        ``[B, M, L, Hkv]``, positions ``[B]``, lengths ``[B]`` and slots ``[L, B, Hkv]`` as given, no
        Python lists. Only the Triton decode path reads it; the torch path's masks cannot be built."""
        meta = cls(num_seqs=block_tables.shape[0], max_q=1, block_tables=block_tables, page_tokens=page_tokens,
                   starts=[], ends=[], pad_index=None, positions=positions, token_seqs=[])  # fmt: skip
        meta.__dict__["lengths"], meta.__dict__["slot_mapping"] = lengths, slot_mapping  # the cached properties
        return meta

    @classmethod
    def build(
        cls,
        starts: list[int],
        ends: list[int],
        block_tables: torch.Tensor,
        page_tokens: int,
    ) -> AttentionMetadata:
        """Build the metadata of a job whose chunk ``b`` covers ``[starts[b], ends[b])``.

        ``block_tables``: ``[B, M, L, Hkv]`` page ids of each sequence's blocks.
        """
        device = block_tables.device
        B = block_tables.shape[0]
        max_q = max(e - s for s, e in zip(starts, ends))
        # Flat tokens: sequence index, position and padded row of each of the
        # N new tokens, listed in Python (a decode step's handful of ints is
        # cheaper so than a dozen small torch ops).
        seq_of = [b for b, (s, e) in enumerate(zip(starts, ends)) for _ in range(e - s)]
        flat = [p for s, e in zip(starts, ends) for p in range(s, e)]
        pad_index = None
        if max_q > 1:
            pad = [b * max_q + p - starts[b] for b, p in zip(seq_of, flat)]
            pad_index = torch.tensor(pad, device=device)
        return cls(
            num_seqs=B,
            max_q=max_q,
            block_tables=block_tables,
            page_tokens=page_tokens,
            starts=list(starts),
            ends=list(ends),
            pad_index=pad_index,
            positions=torch.tensor(flat, device=device),
            token_seqs=seq_of,
        )


DECODE_ATTENTION_ENV = "MUXD_DECODE_ATTENTION"  # auto (Triton on CUDA), triton (anywhere: tests), torch
log = logging.getLogger(__name__)
_TRITON_FAILED = threading.Event()  # a Triton kernel failed in this process: the torch path from then on


def triton_failed() -> bool:
    """Whether a Triton decode kernel failed in this process (it then serves on the torch path)."""
    return _TRITON_FAILED.is_set()


def triton_decode(device: torch.device) -> bool:
    """Whether a decode job's attention takes the Triton kernels (``triton_attention.py``): on CUDA
    where Triton imports and its kernels have not failed; anywhere with ``MUXD_DECODE_ATTENTION=triton``
    (a CPU runs them under ``TRITON_INTERPRET=1``: the tests); never with ``=torch``."""
    choice = os.environ.get(DECODE_ATTENTION_ENV, "auto")
    if triton_failed():
        return False
    if choice == "triton":
        return True
    return choice == "auto" and device.type == "cuda" and _triton_kernels() is not None


@functools.cache
def _triton_kernels():
    try:
        from muxd.engine import triton_attention
    except ImportError as e:  # a CUDA torch without Triton: the torch path
        log.warning("no Triton (%s): decode attention takes the torch path", e)
        return None
    return triton_attention


def triton_decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    meta: AttentionMetadata, layer: int, scale: float, window: int | None,
) -> torch.Tensor | None:  # fmt: skip
    """A decode step's K/V write and attention in the Triton kernels -> ``[B, Hq * D]``; None where
    they fail (a kernel that does not compile on this GPU): logged once, the torch path from then on."""
    kernels = _triton_kernels()
    if kernels is None:
        return None
    try:
        kernels.write_kv(k, v, k_cache, v_cache, meta.slot_mapping[layer])
        out = kernels.decode_attention(q, k_cache, v_cache, meta.block_tables, layer, meta.lengths, scale, window)
    except Exception as e:  # noqa: BLE001 - any compiler or launch error: serve on the torch path
        log.error("the Triton decode attention failed (%s): the torch path from now on", e)
        _TRITON_FAILED.set()
        return None
    return out.view(q.shape[0], -1)


def write_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata, layer: int
) -> None:
    """Store the new tokens' ``k, v: [N, Hkv, D]`` into their pages."""
    pages = meta.write_pages[layer]  # [N, Hkv]
    k_cache[pages, meta.write_slots] = k
    v_cache[pages, meta.write_slots] = v


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    layer: int,
    scale: float,
    window: int | None,
) -> torch.Tensor:
    """``q: [N, Hq, D]`` attending to its sequences' cached K/V -> ``[N, Hq * D]``."""
    N, Hq, D = q.shape
    B, Tq = meta.num_seqs, meta.max_q
    tables = meta.tables[layer]  # [B, Hkv, M]
    Hkv = tables.shape[1]
    G = Hq // Hkv
    # Attention math in fp32: CPU bf16 batched matmuls of these small shapes are
    # slower than fp32 ones, and scores rounded to bf16 lose the SDPA accuracy.
    out_dtype = q.dtype
    q = q.float()
    # index_select, not k_cache[tables]: the same gather 3-5x faster on CPU.
    pages = tables.reshape(-1)
    k = k_cache.index_select(0, pages).view(B, Hkv, -1, D).float()  # [B, Hkv, S, D]
    v = v_cache.index_select(0, pages).view(B, Hkv, -1, D).float()
    if Tq == 1:
        # Decode: one query per sequence. 3-D batched matmuls over (sequence,
        # kv head) with the scale and the mask folded into ``baddbmm``: half
        # the ops of the general path below, in the step's hottest loop.
        k, v = k.view(B * Hkv, -1, D), v.view(B * Hkv, -1, D)
        scores = torch.baddbmm(meta.decode_mask(window, Hkv), q.reshape(B * Hkv, G, D), k.transpose(1, 2), alpha=scale)
        return torch.bmm(torch.softmax(scores, dim=-1), v).view(B, Hq * D).to(out_dtype)
    if meta.pad_index is not None:
        padded = q.new_zeros(B * Tq, Hq, D)
        padded[meta.pad_index] = q
        q = padded
    # [B, Tq, Hkv, G, D] -> [B, Hkv, G * Tq, D]: grouped heads share their K/V.
    q = q.view(B, Tq, Hkv, G, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, G * Tq, D)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale).view(B, Hkv, G, Tq, -1)
    scores = scores + meta.mask(window)
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs.view(B, Hkv, G * Tq, -1), v)  # [B, Hkv, G * Tq, D]
    out = out.view(B, Hkv, G, Tq, D).permute(0, 3, 1, 2, 4).reshape(B * Tq, Hq * D).to(out_dtype)
    return out if meta.pad_index is None else out[meta.pad_index]


def fused_decode_attention(
    qk: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    layer: int,
    num_heads: int,
    scale: float,
    window: int | None,
) -> torch.Tensor | None:
    """A CPU decode step's RoPE, KV write and attention for one layer in one
    call of ``kernels/attention.c`` -> ``[B, Hq * D]``; None where that does
    not apply (not a CPU decode job, no kernels, another layout), and the
    caller takes the torch path: ``Attention.forward``'s RoPE, ``write_kv``
    and ``paged_attention``, whose arithmetic the kernel repeats.

    ``qk``: ``[B, Hq + Hkv, D]`` before RoPE; ``v``: ``[B, Hkv, D]``;
    ``cos``/``sin``: the tables' rows at the tokens' positions, ``[B, 1, D]``
    (``sin``'s first half negated, see ``Transformer.set_rope``).
    """
    if meta.max_q != 1 or qk.device.type != "cpu" or (kernels := load_kernels()) is None:
        return None
    B, heads, D = qk.shape
    dtype = qk.dtype
    tables, pages = meta.tables[layer], meta.write_pages[layer]  # [B, Hkv, M], [B, Hkv]
    if (
        dtype not in (torch.float32, torch.bfloat16)
        or any(t.dtype != dtype for t in (v, cos, sin, k_cache, v_cache))
        or qk.stride()[1:] != (D, 1)
        or v.stride()[1:] != (D, 1)
        or not (cos.is_contiguous() and sin.is_contiguous() and tables.is_contiguous() and pages.is_contiguous())
        or k_cache.stride() != v_cache.stride()
        or k_cache.stride(2) != 1
    ):
        return None
    out = qk.new_empty(B, num_heads * D)
    args = DecodeAttention(
        qk.data_ptr(), qk.stride(0), v.data_ptr(), v.stride(0), cos.data_ptr(), sin.data_ptr(), meta.positions.data_ptr(),
        k_cache.data_ptr(), v_cache.data_ptr(), k_cache.stride(0), k_cache.stride(1), k_cache.shape[1],
        pages.data_ptr(), tables.data_ptr(), tables.shape[2], window or 0, scale,
        B, num_heads, heads - num_heads, D, out.data_ptr(), int(dtype == torch.bfloat16), torch.get_num_threads(),
    )  # fmt: skip
    if kernels.decode_attention(ctypes.byref(args)) != 0:
        raise MemoryError("decode attention: no memory for its scores")
    return out
