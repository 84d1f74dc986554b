"""The tensors behind the unified head-wise KV pool.

One byte buffer per unit holds every page: ``storage[0, page]`` is the K
half and ``storage[1, page]`` the V half of page ``page`` (the
``[2, page_tokens, head_dim]`` page of ARCHITECTURE.md, its halves kept in
two planes so that a gather of K pages is already ``[..., tokens, head_dim]``).
A page is sized for the largest ``head_dim x element size`` among the unit's
models; each model sees the buffer through a typed view of its own dtype and
head_dim, so models of any dtype, depth and width draw from one free list.
Page ids are handed out by ``core.pages.PagePool``; this module only stores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVLayout:
    page_tokens: int
    page_bytes: int  # bytes of one half-page (K or V) of one head

    @classmethod
    def for_models(cls, page_tokens: int, heads: list[tuple[int, torch.dtype]]) -> KVLayout:
        """Size a page for every ``(head_dim, dtype)`` given."""
        widest = max(head_dim * torch.empty((), dtype=dtype).element_size() for head_dim, dtype in heads)
        return cls(page_tokens, page_tokens * widest)


class KVCache:
    """``num_pages`` pages on ``device``; ``view(dtype, head_dim)`` gives a model's K and V.

    The last page is the *null page*: always zero, never handed out (the
    pool counts ``num_pages - 1``). Block tables are padded with it, and the
    runner zeroes a block's pages when a sequence first writes it, so
    attention never reads stale bytes, which in another model's dtype can be
    NaN and would poison a whole row even behind a mask (0 x NaN = NaN).
    """

    def __init__(self, layout: KVLayout, num_pages: int, device: torch.device | str = "cpu") -> None:
        if num_pages < 2:
            raise ValueError(f"a KV cache needs at least 2 pages (one is the null page), got {num_pages}")
        self.layout = layout
        self.num_pages = num_pages
        self.null_page = num_pages - 1
        self.storage = torch.zeros((2, num_pages, layout.page_bytes), dtype=torch.uint8, device=device)
        if self.storage.is_cuda:
            # Zeroed on this thread's stream; the executor's streams read the
            # pool next (the null page must be zero) and do not wait for it.
            torch.cuda.synchronize(self.storage.device)

    @property
    def usable_pages(self) -> int:
        return self.num_pages - 1

    @classmethod
    def from_budget(cls, layout: KVLayout, budget_bytes: int, device: torch.device | str = "cpu") -> KVCache:
        num_pages = budget_bytes // (2 * layout.page_bytes)
        if num_pages < 2:
            raise ValueError(f"a KV budget of {budget_bytes} bytes holds no page of {2 * layout.page_bytes} bytes")
        return cls(layout, num_pages, device)

    @property
    def nbytes(self) -> int:
        return self.storage.numel()

    def view(self, dtype: torch.dtype, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V planes as ``[num_pages, page_tokens, head_dim]`` of ``dtype``.

        The views alias the shared storage: writes through them land in the
        pool. When this model's head is narrower than the page, the view is
        a strided slice of the wider row.
        """
        typed = self.storage.view(dtype).view(2, self.num_pages, self.layout.page_tokens, -1)
        if typed.shape[-1] < head_dim:
            raise ValueError(f"pages of width {typed.shape[-1]} cannot hold head_dim {head_dim} in {dtype}")
        typed = typed[..., :head_dim]
        return typed[0], typed[1]
