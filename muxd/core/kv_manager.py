"""Sequences' page tables on top of the shared ``PagePool`` (no torch).

The scheduler asks ``allocate_slots(seq, upto)`` before it puts a chunk in a
job, and gets pages or "no", as in vLLM v1's KV-cache manager. A model's
sequence grows one *block* at a time: ``layers x kv_heads`` pages holding
``page_tokens`` tokens of every head of every layer, so models of any depth
and width share one free list.

Automatic prefix caching (as vLLM's): chat requests share long prefixes (a
chat template's system prompt, earlier turns, a benchmark's repeated
prompts), so a full block that has been computed is registered under a hash
of its tokens chained to the hash of the block before it: a block matches
only when every token before it matches too. A new sequence starts from the
longest run of cached blocks of its tokens (``match_prefix``) instead of
recomputing them. Shared blocks are full and below every user's
``num_computed``, so nobody writes them again (the runner writes and zeroes
only blocks from ``ceil(chunk.start / page_tokens)`` on). A block no live
sequence uses stays cached (``PagePool`` state *cached*) until the free list
runs short; then idle blocks are evicted, least recently used first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from muxd.core.pages import PagePool
from muxd.core.sequence import Sequence

ROOT_HASH = 0  # the parent hash of every sequence's first block


@dataclass(eq=False)
class CachedBlock:
    """One model's computed block, reusable by any sequence with the same prefix.

    ``parent`` and ``tokens`` are kept so a hash collision reads as a miss
    instead of handing out another prefix's K/V.
    """

    model: str
    block_hash: int
    parent: int
    tokens: tuple[int, ...]
    pages: list[int]
    refs: int = 0  # live sequences using it; 0 means idle (pages cached, evictable)


def block_hash(parent: int, tokens: tuple[int, ...]) -> int:
    """The chain hash of a block: its tokens and the hash of the block before it.

    Python's tuple hash (64 bits, not randomised for ints); a collision of a
    block's own key is caught by comparing ``parent`` and ``tokens``.
    """
    return hash((parent, tokens))


class KVManager:
    """Invariant: ``len(seq.pages) == blocks(seq) * pages_per_block[seq.model]``.

    With prefix caching, block ``i`` of ``seq`` is either private (its pages
    are held for ``seq`` alone) or, when ``i in seq.shared_blocks``, a
    ``CachedBlock`` whose ``refs`` counts ``seq``; the pool's ``held`` counts
    each shared block's pages once.
    """

    def __init__(self, pool: PagePool, page_tokens: int, *, prefix_caching: bool = True) -> None:
        if page_tokens < 1:
            raise ValueError(f"page_tokens must be >= 1, got {page_tokens}")
        self.pool = pool
        self.page_tokens = page_tokens
        self.prefix_caching = prefix_caching
        self.pages_per_block: dict[str, int] = {}
        self._blocks: dict[str, dict[int, CachedBlock]] = {}  # model -> block hash -> block
        # Idle blocks of every model, least recently used first.
        self._idle: OrderedDict[tuple[str, int], CachedBlock] = OrderedDict()
        self.hit_tokens: dict[str, int] = {}  # per model: prompt tokens reused from the cache
        self.query_tokens: dict[str, int] = {}  # per model: tokens looked up by match_prefix

    def add_model(self, model: str, pages_per_block: int, quota: int | None = None) -> None:
        self.pool.register(model, quota)
        self.pages_per_block[model] = pages_per_block
        self._blocks[model] = {}
        self.hit_tokens[model] = 0
        self.query_tokens[model] = 0

    def remove_model(self, model: str) -> int:
        """Forget ``model`` (unloaded): evict its idle cached blocks, only its own, and
        unregister it; return the pages freed. No live sequence of it may hold pages."""
        if self.pool.held(model):
            raise ValueError(f"model {model!r} still holds {self.pool.held(model)} pages; drain it first")
        freed = 0
        for key in [k for k in self._idle if k[0] == model]:
            block = self._idle.pop(key)
            self.pool.evict(model, block.pages)
            freed += len(block.pages)
        self.pool.unregister(model)
        for table in (self.pages_per_block, self._blocks, self.hit_tokens, self.query_tokens):
            del table[model]
        return freed

    def pages_for_tokens(self, model: str, num_tokens: int) -> int:
        blocks = -(-num_tokens // self.page_tokens)
        return blocks * self.pages_per_block[model]

    def pages_needed(self, seq: Sequence, upto: int) -> int:
        """Extra pages ``seq`` needs so that its first ``upto`` tokens have slots."""
        return max(0, self.pages_for_tokens(seq.model, upto) - len(seq.pages))

    def allocate_slots(self, seq: Sequence, upto: int, *, enforce_quota: bool = False) -> bool:
        """Give ``seq`` slots for its first ``upto`` tokens, or return False
        (nothing taken, no block evicted). Idle cached blocks are evicted,
        least recently used first, only when that makes the request fit."""
        need = self.pages_needed(seq, upto)
        if need == 0:
            return True
        if enforce_quota and self.pool.held(seq.model) + need > self.pool.quota(seq.model):
            return False
        if need > self.pool.num_free + self.pool.num_cached:
            return False
        while self.pool.num_free < need:
            self._evict_lru()
        pages = self.pool.allocate(seq.model, need, enforce_quota=enforce_quota)
        assert pages is not None, "eviction made room, allocation cannot fail"
        seq.pages.extend(pages)
        return True

    def free(self, seq: Sequence) -> None:
        """Give back every page of ``seq`` (finish, abort or preemption).

        Private pages go to the free list; shared blocks lose a user and,
        when idle, stay cached. They are released last block first, so the
        tail of a prefix is evicted before its head (a head serves more
        requests, and a tail without its head can never match).
        """
        if seq.pages:
            ppb = self.pages_per_block[seq.model]
            private = [
                p
                for i in range(len(seq.pages) // ppb)
                if i not in seq.shared_blocks
                for p in seq.pages[i * ppb : (i + 1) * ppb]
            ]
            self.pool.free(seq.model, private)
            for i in sorted(seq.shared_blocks, reverse=True):
                self._release(self._blocks[seq.model][seq.block_hashes[i]])
            seq.pages = []
        seq.block_hashes = []
        seq.shared_blocks = set()
        seq.num_computed = 0

    # -- prefix caching ------------------------------------------------------
    def match_prefix(self, seq: Sequence) -> int:
        """Start a new ``seq`` (no pages, nothing computed) from the longest
        run of cached full blocks of its tokens; return the tokens reused.

        The last token is never reused: its logits are needed to sample, so
        only blocks ending at or before ``num_tokens - 1`` can match.
        """
        if not self.prefix_caching or seq.pages or seq.num_computed:
            return 0
        P, model = self.page_tokens, seq.model
        tokens = seq.token_ids
        blocks = self._blocks[model]
        parent = ROOT_HASH
        for i in range((len(tokens) - 1) // P):
            key = tuple(tokens[i * P : (i + 1) * P])
            h = block_hash(parent, key)
            block = blocks.get(h)
            if block is None or block.parent != parent or block.tokens != key:
                break
            self._acquire(block)
            seq.pages.extend(block.pages)
            seq.block_hashes.append(h)
            seq.shared_blocks.add(i)
            parent = h
        seq.num_computed = len(seq.block_hashes) * P
        self.query_tokens[model] += len(tokens)
        self.hit_tokens[model] += seq.num_computed
        return seq.num_computed

    def unmatch(self, seq: Sequence, reused: int) -> None:
        """Undo ``match_prefix`` (which reused ``reused`` tokens) for a sequence
        the scheduler could not place after all: its shared blocks go back,
        still cached, and the lookup leaves no trace in the hit counters, so
        a request retried every tick does not inflate them."""
        if self.prefix_caching:
            self.query_tokens[seq.model] -= seq.num_tokens
            self.hit_tokens[seq.model] -= reused
        self.free(seq)

    def commit(self, seq: Sequence) -> None:
        """Register ``seq``'s blocks that are now full and computed (called
        after a job advanced ``num_computed``; output tokens count too, so
        a later turn of a chat reuses the earlier answer).

        A block already cached under the same key (another sequence computed
        the same prefix meanwhile) stays private to ``seq``: its pages are
        freed with it.
        """
        if not self.prefix_caching:
            return
        P, model = self.page_tokens, seq.model
        full = seq.num_computed // P
        done = len(seq.block_hashes)
        if full <= done:
            return
        ppb = self.pages_per_block[model]
        tokens = seq.token_ids
        blocks = self._blocks[model]
        parent = seq.block_hashes[-1] if seq.block_hashes else ROOT_HASH
        for i in range(done, full):
            key = tuple(tokens[i * P : (i + 1) * P])
            h = block_hash(parent, key)
            if h not in blocks:
                blocks[h] = CachedBlock(model, h, parent, key, seq.pages[i * ppb : (i + 1) * ppb], refs=1)
                seq.shared_blocks.add(i)
            seq.block_hashes.append(h)
            parent = h

    def clear_cache(self) -> int:
        """Evict every idle block (e.g. before checking the pool is whole); return the pages freed."""
        freed = 0
        while self._idle:
            freed += self._evict_lru()
        return freed

    def num_cached_blocks(self, model: str) -> int:
        """Blocks of ``model`` in the cache, in use or idle."""
        return len(self._blocks[model])

    def _acquire(self, block: CachedBlock) -> None:
        if block.refs == 0:
            del self._idle[(block.model, block.block_hash)]
            self.pool.reuse(block.model, len(block.pages))
        block.refs += 1

    def _release(self, block: CachedBlock) -> None:
        block.refs -= 1
        if block.refs == 0:
            self.pool.cache(block.model, len(block.pages))
            self._idle[(block.model, block.block_hash)] = block

    def _evict_lru(self) -> int:
        (model, h), block = self._idle.popitem(last=False)
        del self._blocks[model][h]
        self.pool.evict(model, block.pages)
        return len(block.pages)
