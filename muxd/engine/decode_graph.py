"""A model's decode step captured as CUDA graphs, one per batch bucket (nano-vllm's ``capture_cudagraph``).

A GPU decode step of a small model is mostly launch gaps: some thirty
kernels a layer, each launched from Python. Captured once per batch bucket
(1, 2, 4, 8, ... up to the unit's batch), the step is one graph launch.
What changes between steps lives in fixed buffers the graphs read, filled
before each replay:

- ``ids [Bmax]``, ``positions [Bmax]``: the new tokens and their positions;
- ``tables [Bmax, Mmax, L, Hkv]``: block tables, padded with the null page;
- ``lengths [Bmax]`` and ``slots [L, Bmax, Hkv]``: context lengths and the
  new K/V's slots (``AttentionMetadata.static``).

A batch of ``n`` runs the smallest bucket ``b ≥ n``; rows ``n..b`` are
padding: length 1 over the null page (it reads zeros) and slot -1 (the
Triton write skips it), so they never touch a live page. Attention goes
through the Triton kernels (the torch path builds masks from Python lists,
which a graph cannot replay); every bucket shares one memory pool.

``capture=False`` runs the same buffers and padding without graphs (each
``run`` calls the forward on the fixed buffers): what a CPU can test.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch

from muxd.engine.attention import AttentionMetadata

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor, AttentionMetadata, torch.Tensor], torch.Tensor]  # (ids, meta, rows) -> logits


def buckets(max_batch: int) -> tuple[int, ...]:
    """Batch sizes to capture: powers of two below ``max_batch``, and ``max_batch`` itself."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return tuple(sorted({1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch} | {max_batch}))


def bucket_for(batch: int, sizes: tuple[int, ...]) -> int | None:
    """The smallest captured size that holds ``batch`` rows (None: larger than every bucket)."""
    return next((b for b in sizes if b >= batch), None)


class DecodeGraphs:
    """Fixed input buffers and one graph (or, without capture, one plain call) per bucket for one model."""

    def __init__(self, forward: Forward, *, max_batch: int, max_blocks: int, layers: int, kv_heads: int,
                 page_tokens: int, null_page: int, device: torch.device, capture: bool = True) -> None:  # fmt: skip
        self.forward, self.sizes, self.capture = forward, buckets(max_batch), capture
        self.page_tokens, self.null_page = page_tokens, null_page
        B, M, i64 = self.sizes[-1], max_blocks, dict(dtype=torch.int64, device=device)
        self.ids = torch.zeros(B, **i64)
        self.positions = torch.zeros(B, **i64)
        self.tables = torch.full((B, M, layers, kv_heads), null_page, **i64)
        self.lengths = torch.ones(B, **i64)
        self.slots = torch.full((layers, B, kv_heads), -1, **i64)
        self.rows = torch.arange(B, **i64)
        self.outputs: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()  # one step at a time through the shared buffers
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if capture:
            self._capture_all()

    @property
    def max_blocks(self) -> int:
        return self.tables.shape[1]

    def _meta(self, b: int) -> AttentionMetadata:
        return AttentionMetadata.static(self.tables[:b], self.positions[:b], self.lengths[:b], self.slots[:, :b],
                                        self.page_tokens)  # fmt: skip

    def _capture_all(self) -> None:
        pool = None
        for b in reversed(self.sizes):  # the largest first: the smaller ones reuse its memory
            meta = self._meta(b)
            self.forward(self.ids[:b], meta, self.rows[:b])  # warm-up: Triton compiles, allocator settles
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[b] = self.forward(self.ids[:b], meta, self.rows[:b])
            pool = pool or graph.pool()
            self.graphs[b] = graph
        torch.cuda.synchronize(self.ids.device)

    def run(self, token_ids: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor | None:
        """Logits ``[n, vocab]`` of a decode job (``meta`` as the runner built it), or None where no
        bucket holds it (more rows than the largest, a table wider than the buffers)."""
        n, width = meta.block_tables.shape[:2]
        b = bucket_for(n, self.sizes)
        if b is None or width > self.max_blocks or meta.max_q != 1:
            return None
        with self._lock:
            return self._replay(token_ids, meta, n, width, b)

    def _replay(self, token_ids: torch.Tensor, meta: AttentionMetadata, n: int, width: int, b: int) -> torch.Tensor:
        self.ids[:n] = token_ids
        self.positions[:n] = meta.positions
        self.tables[:n, :width] = meta.block_tables
        self.tables[:n, width:] = self.null_page
        self.lengths[:n] = meta.lengths
        self.slots[:, :n] = meta.slot_mapping
        self.tables[n:b], self.lengths[n:b], self.slots[:, n:b] = self.null_page, 1, -1  # padding rows
        if self.capture:
            self.graphs[b].replay()
            return self.outputs[b][:n].clone()  # the next replay overwrites the graph's output
        return self.forward(self.ids[:b], self._meta(b), self.rows[:b])[:n]
