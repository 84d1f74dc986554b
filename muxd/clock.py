"""Injected clocks: the engine loop reads time only through one of these.

A clock is any ``() -> float`` of seconds (``time.monotonic`` when serving).
Tests and the cluster simulator pass a ``ManualClock`` that moves only when
told, so a simulated executor can make jobs finish at exact times.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]


class ManualClock:
    """Seconds that move only when told: ``clock()`` reads, ``advance_to`` moves.

    ``now`` may also be set directly (tests step time by hand); the
    simulated executor only ever moves it forward.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance_to(self, t: float) -> None:
        """Move to ``t`` unless the clock is already past it."""
        self.now = max(self.now, t)
