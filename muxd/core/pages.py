"""Page accounting for the unified head-wise KV pool (no torch).

A *page* holds K and V of ``page_tokens`` tokens of one KV head of one layer.
Every model of a unit draws its pages from one free list, so memory that one
model frees is usable by any other at once. This module only counts pages;
``engine/kv_cache.py`` owns the tensors they index.

A page is in one of three states: *free* (on the free list), *held* (a live
sequence needs it) or *cached* (it keeps a computed prefix block that no live
sequence uses, for a later request to reuse; ``core/kv_manager.py`` evicts it
when the free list runs short). Quotas compare ``held`` only: cached pages are
memory nobody needs right now, so they never count against a model.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field


@dataclass
class ModelPages:
    """One model's share of the pool: pages it holds, pages it keeps cached, its soft quota."""

    held: int = 0
    quota: int = 0
    cached: int = 0


@dataclass
class PagePool:
    """A free list of ``total`` page ids shared by all models of a unit.

    Invariant: every page id in ``range(total)`` is either on the free list,
    held by exactly one model or cached by exactly one model, so
    ``num_free + sum(held) + sum(cached) == total``.
    Quotas are *soft*: ``allocate`` refuses a model that would pass its quota
    only when ``enforce_quota`` is asked for (the scheduler decides; the
    quota rule of ADBS moves quotas between models).
    """

    total: int
    _free: array[int] = field(init=False, repr=False)  # 8 bytes a page: a pool of millions of pages fits
    _models: dict[str, ModelPages] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.total <= 0:
            raise ValueError(f"a page pool needs at least one page, got {self.total}")
        # Pop from the end: low page ids are handed out first.
        self._free = array("q", range(self.total - 1, -1, -1))

    # -- models ------------------------------------------------------------
    def register(self, model: str, quota: int | None = None) -> None:
        """Make ``model`` known to the pool; its quota defaults to the whole pool."""
        if model in self._models:
            raise ValueError(f"model {model!r} is already registered in the pool")
        self._models[model] = ModelPages(quota=self.total if quota is None else quota)

    def unregister(self, model: str) -> None:
        """Forget ``model``, which must hold and cache no page (unload it from the KV manager first)."""
        account = self._models[model]
        if account.held or account.cached:
            raise ValueError(f"model {model!r} still holds {account.held} and caches {account.cached} pages")
        del self._models[model]

    @property
    def models(self) -> list[str]:
        return list(self._models)

    def held(self, model: str) -> int:
        return self._models[model].held

    def cached(self, model: str) -> int:
        """Pages ``model`` keeps for prefix reuse that no live sequence needs."""
        return self._models[model].cached

    def quota(self, model: str) -> int:
        return self._models[model].quota

    def set_quota(self, model: str, quota: int) -> None:
        if quota < 0:
            raise ValueError(f"quota must be >= 0, got {quota}")
        self._models[model].quota = quota

    # -- pages -------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return sum(m.cached for m in self._models.values())

    def can_allocate(self, model: str, n: int, *, enforce_quota: bool = False) -> bool:
        if n > len(self._free):
            return False
        return not enforce_quota or self._models[model].held + n <= self._models[model].quota

    def allocate(self, model: str, n: int, *, enforce_quota: bool = False) -> list[int] | None:
        """Take ``n`` pages for ``model``, or return None (nothing taken)."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if not self.can_allocate(model, n, enforce_quota=enforce_quota):
            return None
        pages = self._free[len(self._free) - n:].tolist()
        del self._free[len(self._free) - n:]
        self._models[model].held += n
        return pages

    def free(self, model: str, pages: list[int]) -> None:
        """Return ``pages`` held by ``model`` to the shared free list."""
        account = self._models[model]
        if len(pages) > account.held:
            raise ValueError(f"model {model!r} frees {len(pages)} pages but holds {account.held}")
        account.held -= len(pages)
        self._free.extend(pages)

    # -- cached pages (the pool only counts them; KVManager knows which) ----
    def cache(self, model: str, n: int) -> None:
        """``n`` held pages of ``model`` are no longer needed but kept for reuse."""
        account = self._models[model]
        if not 0 <= n <= account.held:
            raise ValueError(f"model {model!r} caches {n} pages but holds {account.held}")
        account.held -= n
        account.cached += n

    def reuse(self, model: str, n: int) -> None:
        """``n`` cached pages of ``model`` are needed by a live sequence again."""
        account = self._models[model]
        if not 0 <= n <= account.cached:
            raise ValueError(f"model {model!r} reuses {n} pages but caches {account.cached}")
        account.cached -= n
        account.held += n

    def evict(self, model: str, pages: list[int]) -> None:
        """Return cached ``pages`` of ``model`` to the shared free list."""
        account = self._models[model]
        if len(pages) > account.cached:
            raise ValueError(f"model {model!r} evicts {len(pages)} pages but caches {account.cached}")
        account.cached -= len(pages)
        self._free.extend(pages)

    def check_integrity(self) -> None:
        """Raise AssertionError when the pool's invariant is broken (tests call it)."""
        free = set(self._free)
        assert len(free) == len(self._free), "a page is on the free list twice"
        assert all(0 <= p < self.total for p in free), "a free page id is out of range"
        held = sum(m.held for m in self._models.values())
        cached = self.num_cached
        assert all(m.held >= 0 and m.cached >= 0 for m in self._models.values()), "a negative page count"
        assert held + cached + len(free) == self.total, (
            f"pages lost or duplicated: {held} held + {cached} cached + {len(free)} free != {self.total}"
        )
