"""A model's decode step captured as CUDA graphs, one per batch bucket (nano-vllm's ``capture_cudagraph``).

A GPU decode step of a small model is mostly launch gaps: some thirty
kernels a layer, each launched from Python. Captured once per batch bucket
(1, 2, 4, 8, ... up to the unit's batch), the step is one graph launch.
What changes between steps lives in fixed buffers the graphs read:

- ``ids [Bmax]``, ``positions [Bmax]``: the new tokens and their positions,
  written every step;
- ``tables [Bmax, Mmax, L, Hkv]``: block tables, padded with the null page,
  one persistent row per live sequence (``decode_rows.py``): a step writes
  only the entries of blocks gained since the last one, a new sequence's
  whole table once, and moves a row into the hole a leaving one left;
- ``lengths [Bmax]`` and ``slots [L, Bmax, Hkv]`` (``AttentionMetadata.static``):
  computed inside the graph from positions and tables, so no mask and no
  per-layer metadata is built per step.

A step's host data (ids, positions, the row order, moves, the table entries
written and the pages to zero) goes to the device in one copy from a pinned
buffer (``Staging``). The graph holds the forward and each row's argmax and
log-sum-exp (``Logits.argmax_lse``): a greedy step reads its tokens after
the replay, other sampling runs on the logits after it. Outputs come back
in the job's order (gathered by each job row's buffer row).

A batch of ``n`` runs the smallest bucket ``b ≥ n``; rows ``n..b`` are
padding: position 0 over the null page, so length 1, reading zeros, and
slot -1 (the Triton write skips it). Attention goes through the Triton
kernels (the torch path builds masks from Python lists, which a graph
cannot replay); every bucket shares one memory pool.

``capture=False`` runs the same buffers, rows and step without graphs:
what a CPU can test.
"""

from __future__ import annotations

import logging
import threading
from array import array
from collections.abc import Callable

import torch

from muxd.engine.attention import AttentionMetadata
from muxd.engine.decode_rows import DecodeRow, Rows, StepPlan
from muxd.engine.model import Logits

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor, AttentionMetadata, torch.Tensor], torch.Tensor]  # (ids, meta, rows) -> logits
StepOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # logits [b, V], argmax [b], log-sum-exp [b]


def buckets(max_batch: int) -> tuple[int, ...]:
    """Batch sizes to capture: powers of two below ``max_batch``, and ``max_batch`` itself."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return tuple(sorted({1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch} | {max_batch}))


def bucket_for(batch: int, sizes: tuple[int, ...]) -> int | None:
    """The smallest captured size that holds ``batch`` rows (None: larger than every bucket)."""
    return next((b for b in sizes if b >= batch), None)


class Staging:
    """A step's host ints packed into one int64 buffer, pinned where CUDA is, and copied to the
    device in one non-blocking copy. On a CPU the buffer is the device's and nothing is copied."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pinned = device.type == "cuda" and torch.cuda.is_available()
        self.host = self.dev = torch.empty(0, dtype=torch.int64)
        # Recorded after each copy; once passed, the host buffer may be written again.
        self._copied = torch.cuda.Event() if self.pinned else None

    def copy(self, parts: list[array]) -> list[torch.Tensor]:
        """Device views of ``parts``, in order, after one copy of them all."""
        flat = array("q")
        for part in parts:
            flat.extend(part)
        if self._copied is not None:
            self._copied.synchronize()  # the last step's copy may still read the host buffer
        self._reserve(len(flat))
        if flat:
            self.host[: len(flat)].copy_(torch.frombuffer(flat, dtype=torch.int64))
        if self.dev is not self.host and flat:
            self.dev[: len(flat)].copy_(self.host[: len(flat)], non_blocking=True)
            self._copied.record()
        return list(self.dev[: len(flat)].split([len(p) for p in parts]))

    def _reserve(self, size: int) -> None:
        if size <= self.host.numel():
            return
        size = 1 << (size - 1).bit_length()
        self.host = torch.empty(size, dtype=torch.int64, pin_memory=self.pinned)
        self.dev = self.host if self.device.type == "cpu" else torch.empty(size, dtype=torch.int64, device=self.device)


class DecodeGraphs:
    """Fixed input buffers, persistent rows and one graph (or, without capture, one plain call) per
    bucket for one model. ``kv``: the pool's planes as the forward sees them, where a step's new
    blocks are zeroed (None: nothing to zero, for tests with fake pages)."""

    def __init__(self, forward: Forward, *, max_batch: int, max_blocks: int, layers: int, kv_heads: int,
                 page_tokens: int, null_page: int, device: torch.device,
                 kv: tuple[torch.Tensor, torch.Tensor] | None = None, capture: bool = True) -> None:  # fmt: skip
        self.forward, self.sizes, self.capture, self.kv = forward, buckets(max_batch), capture, kv
        self.page_tokens, self.null_page = page_tokens, null_page
        B, M, i64 = self.sizes[-1], max_blocks, dict(dtype=torch.int64, device=device)
        self.inputs = torch.zeros(2, B, **i64)  # ids and positions: one copy fills both
        self.ids, self.positions = self.inputs[0], self.inputs[1]
        self.tables = torch.full((B, M, layers, kv_heads), null_page, **i64)
        self.lengths = torch.ones(B, **i64)
        self.slots = torch.full((layers, B, kv_heads), -1, **i64)
        self.rows = torch.arange(B, **i64)
        self.live = Rows(max_blocks=M, pages_per_block=layers * kv_heads, page_tokens=page_tokens)
        self.staging = Staging(torch.device(device))
        self.outputs: dict[int, StepOutput] = {}
        self._lock = threading.Lock()  # one step at a time through the shared buffers
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if capture:
            self._capture_all()

    @property
    def max_blocks(self) -> int:
        return self.tables.shape[1]

    @property
    def table_entries_written(self) -> int:
        """Block-table entries written into the buffers so far (new blocks and new rows only)."""
        return self.live.entries_written

    def _meta(self, b: int) -> AttentionMetadata:
        return AttentionMetadata.static(self.tables[:b], self.positions[:b], self.lengths[:b], self.slots[:, :b],
                                        self.page_tokens)  # fmt: skip

    def _step(self, b: int) -> StepOutput:
        """The captured step: lengths and slots from positions and tables, the forward, each row's
        argmax and log-sum-exp. A row whose current block is the null page (padding) writes nothing."""
        pos, P = self.positions[:b], self.page_tokens
        pages = self.tables[self.rows[:b], pos // P]  # [b, L, Hkv] the block each new token lands in
        self.lengths[:b].copy_(pos + 1)
        slots = torch.where(pages == self.null_page, -1, pages * P + (pos % P)[:, None, None])
        self.slots[:, :b].copy_(slots.transpose(0, 1))
        logits = self.forward(self.ids[:b], self._meta(b), self.rows[:b])
        return logits, logits.argmax(dim=-1), torch.logsumexp(logits, dim=-1)

    def _capture_all(self) -> None:
        pool = None
        for b in reversed(self.sizes):  # the largest first: the smaller ones reuse its memory
            self._step(b)  # warm-up: Triton compiles, allocator settles
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[b] = self._step(b)
            pool = pool or graph.pool()
            self.graphs[b] = graph
        torch.cuda.synchronize(self.ids.device)

    def run(self, rows: list[DecodeRow]) -> Logits | None:
        """Logits ``[n, vocab]`` of a decode step of ``rows`` (one token each), in their order, with
        each row's argmax and log-sum-exp; None where no bucket holds it (more rows than the
        largest, a table wider than the buffers): the caller runs it uncaptured."""
        b = bucket_for(len(rows), self.sizes)
        if not rows or b is None or not self.live.fits(rows):
            return None
        with self._lock:
            return self._replay(rows, self.live.plan(rows), b)

    def _replay(self, rows: list[DecodeRow], plan: StepPlan, b: int) -> Logits:
        inputs = array("q", bytes(16 * b))  # [2, b] ids and positions by buffer row; padding rows 0
        for r, i in zip(rows, plan.order):
            inputs[i], inputs[b + i] = r.token, r.position
        staged = self.staging.copy([inputs, plan.order, plan.holes, plan.movers, plan.dst, plan.pages, plan.fresh])
        inputs_dev, order, holes, movers, dst, pages, fresh = staged
        if len(holes):
            self.tables.index_copy_(0, holes, self.tables.index_select(0, movers))
        lo, hi = plan.vacated
        if hi > lo:
            self.tables[lo:hi] = self.null_page
        if len(dst):
            self.tables.view(-1).index_copy_(0, dst, pages)
        self.inputs[:, :b].copy_(inputs_dev.view(2, b))
        if len(fresh) and self.kv is not None:
            self.kv[0][fresh] = 0
            self.kv[1][fresh] = 0
        if self.capture:
            self.graphs[b].replay()
            logits, argmax, lse = self.outputs[b]
        else:
            logits, argmax, lse = self._step(b)
        # The gathers are fresh tensors: the next replay overwrites the graph's outputs.
        return Logits(logits.index_select(0, order), (argmax.index_select(0, order), lse.index_select(0, order)))
