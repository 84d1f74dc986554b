"""Decode attention and the K/V write as Triton kernels, reading and writing muxd's pool in place.

The torch path (``attention.paged_attention``) copies every page of a
sequence's padded context out of the pool with ``index_select`` and
converts it to fp32 before a batched matmul; on a GPU that copy is most of
a decode step's attention. ``decode_attention`` reads the pages where they
are instead:

- **Layout**: the pool's K and V planes as ``[pages, page_tokens, row]``
  views (``KVCache.view``; ``row`` ≥ ``head_dim`` when a wider model shares
  the pool, so rows are strided), one KV head per page, and the runner's
  block tables ``[B, M, L, Hkv]`` as they are (the layer picked by an
  offset, no per-layer copy); per-sequence context lengths on the device.
- **Grid**: (sequence, KV head, split of the context). A program loads the
  ``G = Hq / Hkv`` query heads that share its KV head, so each K/V page is
  read once for all of them; scores, the online softmax and the sum are in
  fp32 whatever the cache's dtype.
- **Splits** (flash-decoding): each sequence's context (its pages from the
  window's first to its last) is cut into ``splits`` even runs of pages,
  each program writing its normalised partial output and log-sum-exp;
  ``_merge`` weighs them by ``softmax(lse)``. The split count is a function
  of the block table's width alone (``num_splits``), so a CUDA graph
  captured for a width replays with the same grid; the runs are cut from
  the sequence's length on the device, so a short context in a wide
  (padded) table still spreads over every split.
- **Sliding windows**: keys before ``length - window`` are skipped (whole
  pages of them are never read).

``write_kv`` stores a step's new K/V rows through a slot mapping ``[N,
Hkv]`` (page × page_tokens + offset; -1 writes nothing), one program per
(token, KV head).

Both run under ``TRITON_INTERPRET=1`` on a CPU, where the tests check them
against the torch path; Triton ships with PyTorch's CUDA builds and is a
test dependency here (``pip install triton``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_SPLITS = 8
MIN_PAGES_PER_SPLIT = 8  # a split of fewer pages costs more in its merge than it saves


def num_splits(max_blocks: int) -> int:
    """Context splits for block tables ``max_blocks`` wide: one per ``MIN_PAGES_PER_SPLIT`` blocks, at most ``MAX_SPLITS``."""
    return max(1, min(MAX_SPLITS, triton.cdiv(max_blocks, MIN_PAGES_PER_SPLIT)))


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, lse_ptr,
    stride_qb, stride_qh,
    stride_kp, stride_kt, stride_vp, stride_vt,
    stride_tb, stride_tm, stride_th,
    stride_ob, stride_oh, stride_os,
    stride_lb, stride_lh,
    scale, window,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, T: tl.constexpr,
):  # fmt: skip
    b, h, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    length = tl.load(lens_ptr + b)
    first_key = tl.where(window > 0, tl.maximum(length - window, 0), 0)
    first_page, end_page = first_key // T, tl.cdiv(length, T)
    per_split = tl.cdiv(end_page - first_page, tl.num_programs(2))  # this sequence's pages, evenly over the splits
    page_lo = first_page + s * per_split
    page_hi = tl.minimum(page_lo + per_split, end_page)
    g, d, t = tl.arange(0, GP), tl.arange(0, DP), tl.arange(0, T)
    heads = h * G + g
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=(g[:, None] < G) & (d[None, :] < D), other=0.0).to(tl.float32)  # [GP, DP]
    m = tl.full([GP], float("-inf"), tl.float32)
    l = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, DP], tl.float32)
    for page_idx in range(page_lo, page_hi):
        page = tl.load(tables_ptr + b * stride_tb + page_idx * stride_tm + h * stride_th).to(tl.int64)
        keys = page_idx * T + t
        valid = (keys < length) & (keys >= first_key)
        rows = valid[:, None] & (d[None, :] < D)
        k = tl.load(k_ptr + page * stride_kp + t[:, None] * stride_kt + d[None, :], mask=rows, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + page * stride_vp + t[:, None] * stride_vt + d[None, :], mask=rows, other=0.0).to(tl.float32)
        scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale  # [GP, T]
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(scores - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m = m_new
    out = acc / tl.where(l > 0, l, 1.0)[:, None]
    lse = tl.where(l > 0, m + tl.log(tl.where(l > 0, l, 1.0)), float("-inf"))
    keep = g < G
    tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + s * stride_os + d[None, :], out,
             mask=keep[:, None] & (d[None, :] < D))
    tl.store(lse_ptr + b * stride_lb + heads * stride_lh + s, lse, mask=keep)


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    layer: int,
    lengths: torch.Tensor,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """``q: [B, Hq, D]`` (one query per sequence, after RoPE) attending to each sequence's first
    ``lengths[b]`` keys in the pool -> ``[B, Hq, D]`` in ``q``'s dtype.

    ``k_cache``/``v_cache``: ``[pages, page_tokens, D]`` (rows may be wider than ``D``);
    ``block_tables``: ``[B, M, L, Hkv]`` page ids, this call reading layer ``layer``;
    ``lengths``: ``[B]`` int32/int64 on the device, the new token's key included.
    """
    B, Hq, D = q.shape
    _, M, _, Hkv = block_tables.shape
    T = k_cache.shape[1]
    if Hq % Hkv or k_cache.stride(2) != 1 or v_cache.stride(2) != 1 or q.stride(2) != 1:
        raise ValueError("decode_attention wants Hq divisible by Hkv and unit-stride rows")
    G, splits = Hq // Hkv, num_splits(M)
    tables = block_tables[:, :, layer, :]  # [B, M, Hkv], a view
    partial = torch.empty(B, Hq, splits, D, dtype=torch.float32, device=q.device)
    lse = torch.empty(B, Hq, splits, dtype=torch.float32, device=q.device)
    _decode_kernel[(B, Hkv, splits)](
        q, k_cache, v_cache, tables, lengths, partial, lse,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        tables.stride(0), tables.stride(1), tables.stride(2),
        partial.stride(0), partial.stride(1), partial.stride(2),
        lse.stride(0), lse.stride(1),
        scale, window or 0,
        G=G, GP=triton.next_power_of_2(G), D=D, DP=triton.next_power_of_2(D), T=T,
    )  # fmt: skip
    return _merge(partial, lse).to(q.dtype)


def _merge(partial: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Flash-decoding's merge: ``[B, Hq, S, D]`` partial outputs weighed by ``softmax`` of their ``[B, Hq, S]`` lse."""
    if partial.shape[2] == 1:
        return partial[:, :, 0]
    weights = torch.softmax(lse, dim=-1)  # a split with no keys has lse -inf: weight 0
    return (weights[..., None] * partial).sum(dim=2)


@triton.jit
def _write_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
    stride_kn, stride_kh, stride_vn, stride_vh, stride_sn, stride_sh,
    stride_kp, stride_kt, stride_vp, stride_vt,
    D: tl.constexpr, DP: tl.constexpr, T: tl.constexpr,
):  # fmt: skip
    n, h = tl.program_id(0), tl.program_id(1)
    slot = tl.load(slots_ptr + n * stride_sn + h * stride_sh).to(tl.int64)
    page, offset = tl.maximum(slot, 0) // T, tl.maximum(slot, 0) % T
    d = tl.arange(0, DP)
    inside = d < tl.where(slot >= 0, D, 0)  # slot -1: a padding row of a captured batch writes nothing
    k = tl.load(k_ptr + n * stride_kn + h * stride_kh + d, mask=inside)
    v = tl.load(v_ptr + n * stride_vn + h * stride_vh + d, mask=inside)
    tl.store(k_cache_ptr + page * stride_kp + offset * stride_kt + d, k, mask=inside)
    tl.store(v_cache_ptr + page * stride_vp + offset * stride_vt + d, v, mask=inside)


def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:  # fmt: skip
    """Store ``k, v: [N, Hkv, D]`` at ``slot_mapping: [N, Hkv]`` (page × page_tokens + offset) of the pool's planes."""
    N, Hkv, D = k.shape
    if k.dtype != k_cache.dtype or v.dtype != v_cache.dtype:
        raise ValueError(f"K/V of {k.dtype} cannot be written into a {k_cache.dtype} view of the pool")
    _write_kernel[(N, Hkv)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), slot_mapping.stride(0), slot_mapping.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        D=D, DP=triton.next_power_of_2(D), T=k_cache.shape[1],
    )  # fmt: skip
