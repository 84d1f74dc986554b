"""Page accounting for the unified head-wise KV pool (no torch).

A *page* holds K and V of ``page_tokens`` tokens of one KV head of one layer.
Every model of a unit draws its pages from one free list, so memory that one
model frees is usable by any other at once. This module only counts pages;
``engine/kv_cache.py`` owns the tensors they index.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelPages:
    """One model's share of the pool: pages it holds and its soft quota."""

    held: int = 0
    quota: int = 0


@dataclass
class PagePool:
    """A free list of ``total`` page ids shared by all models of a unit.

    Invariant: every page id in ``range(total)`` is either on the free list
    or held by exactly one model, so ``num_free + sum(held) == total``.
    Quotas are *soft*: ``allocate`` refuses a model that would pass its quota
    only when ``enforce_quota`` is asked for (the scheduler decides; the
    quota rule of ADBS moves quotas between models).
    """

    total: int
    _free: list[int] = field(init=False, repr=False)
    _models: dict[str, ModelPages] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.total <= 0:
            raise ValueError(f"a page pool needs at least one page, got {self.total}")
        # Pop from the end: low page ids are handed out first.
        self._free = list(range(self.total - 1, -1, -1))

    # -- models ------------------------------------------------------------
    def register(self, model: str, quota: int | None = None) -> None:
        """Make ``model`` known to the pool; its quota defaults to the whole pool."""
        if model in self._models:
            raise ValueError(f"model {model!r} is already registered in the pool")
        self._models[model] = ModelPages(quota=self.total if quota is None else quota)

    @property
    def models(self) -> list[str]:
        return list(self._models)

    def held(self, model: str) -> int:
        return self._models[model].held

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
        pages = self._free[len(self._free) - n:]
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

    def check_integrity(self) -> None:
        """Raise AssertionError when the pool's invariant is broken (tests call it)."""
        free = set(self._free)
        assert len(free) == len(self._free), "a page is on the free list twice"
        assert all(0 <= p < self.total for p in free), "a free page id is out of range"
        held = sum(m.held for m in self._models.values())
        assert held + len(free) == self.total, (
            f"pages lost or duplicated: {held} held + {len(free)} free != {self.total}"
        )
