"""KV-cache quotas per model, and MuxServe's quota adaptation (no torch).

Initial quotas split the pool in proportion to ``rate x pages per token``:
what each model is expected to hold. Adaptation then moves quota from models
using little of theirs to models that are queueing, never below what a
model's sequences already hold, so memory follows the load without a model
losing what it runs on.
"""

from __future__ import annotations

from muxd.core.pages import PagePool


def initial_quotas(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``total`` pages in proportion to ``weights`` (rate x pages per block)."""
    if not weights:
        return {}
    positive = {m: max(w, 0.0) for m, w in weights.items()}
    norm = sum(positive.values())
    if norm == 0:
        positive = {m: 1.0 for m in weights}
        norm = float(len(weights))
    quotas = {m: int(total * w / norm) for m, w in positive.items()}
    # Hand the rounding remainder to the heaviest model so quotas sum to the pool.
    heaviest = max(positive, key=positive.get)
    quotas[heaviest] += total - sum(quotas.values())
    return quotas


def adapt_quotas(
    pool: PagePool,
    backlogged: set[str],
    low_usage: float = 0.9,
    lend_fraction: float = 0.5,
) -> dict[str, int]:
    """Lend spare quota of under-used models to backlogged ones; return the moves.

    A lender uses under ``low_usage`` of its quota and has no backlog; it
    gives ``lend_fraction`` of its unused quota, and never goes below the
    pages it holds. Borrowers share what is lent equally.
    """
    if not backlogged:
        return {}
    lenders = [
        m for m in pool.models
        if m not in backlogged and pool.held(m) < low_usage * pool.quota(m)
    ]
    lent = 0
    moves: dict[str, int] = {}
    for m in lenders:
        give = int((pool.quota(m) - pool.held(m)) * lend_fraction)
        if give > 0:
            pool.set_quota(m, pool.quota(m) - give)
            moves[m] = -give
            lent += give
    borrowers = sorted(backlogged)
    for i, m in enumerate(borrowers):
        share = lent // len(borrowers) + (1 if i < lent % len(borrowers) else 0)
        if share:
            pool.set_quota(m, pool.quota(m) + share)
            moves[m] = moves.get(m, 0) + share
    return moves
