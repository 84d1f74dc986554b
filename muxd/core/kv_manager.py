"""Sequences' page tables on top of the shared ``PagePool`` (no torch).

The scheduler asks ``allocate_slots(seq, upto)`` before it puts a chunk in a
job, and gets pages or "no", as in vLLM v1's KV-cache manager. A model's
sequence grows one *block* at a time: ``layers x kv_heads`` pages holding
``page_tokens`` tokens of every head of every layer, so models of any depth
and width share one free list.
"""

from __future__ import annotations

from muxd.core.pages import PagePool
from muxd.core.sequence import Sequence


class KVManager:
    """Invariant: ``len(seq.pages) == blocks(seq) * pages_per_block[seq.model]``."""

    def __init__(self, pool: PagePool, page_tokens: int) -> None:
        if page_tokens < 1:
            raise ValueError(f"page_tokens must be >= 1, got {page_tokens}")
        self.pool = pool
        self.page_tokens = page_tokens
        self.pages_per_block: dict[str, int] = {}

    def add_model(self, model: str, pages_per_block: int, quota: int | None = None) -> None:
        self.pool.register(model, quota)
        self.pages_per_block[model] = pages_per_block

    def pages_for_tokens(self, model: str, num_tokens: int) -> int:
        blocks = -(-num_tokens // self.page_tokens)
        return blocks * self.pages_per_block[model]

    def pages_needed(self, seq: Sequence, upto: int) -> int:
        """Extra pages ``seq`` needs so that its first ``upto`` tokens have slots."""
        return max(0, self.pages_for_tokens(seq.model, upto) - len(seq.pages))

    def allocate_slots(self, seq: Sequence, upto: int, *, enforce_quota: bool = False) -> bool:
        need = self.pages_needed(seq, upto)
        if need == 0:
            return True
        pages = self.pool.allocate(seq.model, need, enforce_quota=enforce_quota)
        if pages is None:
            return False
        seq.pages.extend(pages)
        return True

    def free(self, seq: Sequence) -> None:
        """Give back every page of ``seq`` (finish, abort or preemption)."""
        if seq.pages:
            self.pool.free(seq.model, seq.pages)
            seq.pages = []
        seq.num_computed = 0
