"""The one percentile of muxd's figures: the daemon's /stats, `muxd bench mux` and `muxd bench serve`
all use it, so their p50s and p99s compare."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (``q`` in [0, 100]) with linear interpolation
    between the closest ranks (numpy's default); None for no values."""
    return percentile_sorted(sorted(values), q)


def percentile_sorted(ordered: Sequence[float], q: float) -> float | None:
    """``percentile`` of values already in ascending order (no copy, no sort)."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
