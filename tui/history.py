"""What the sparklines draw: each model's generated tokens/s and SLO attainment over the last minutes.

The daemon sends figures over its rate window, not their past, so the app
keeps the past itself: one point per ``step_s`` of the daemon's clock, at
most ``points`` per model (five minutes by default), the oldest dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from muxd.protocol import Stats


@dataclass
class Series:
    """One model's figures over time, oldest first."""

    tokens_per_s: deque[float]  # generated tokens/s over the daemon's rate window
    attainment: deque[float | None]


@dataclass
class History:
    step_s: float = 2.0
    points: int = 150
    models: dict[str, Series] = field(default_factory=dict)
    last_time: float | None = None

    def add(self, stats: Stats) -> bool:
        """Take a point from ``stats`` if ``step_s`` has passed since the last one; say whether it did.

        A daemon's clock that went back (a new daemon, a clock step) starts
        the spacing over rather than waiting for it to catch up.
        """
        if self.last_time is not None and 0 <= stats.time - self.last_time < self.step_s:
            return False
        self.last_time = stats.time
        for name, m in stats.models.items():
            series = self.models.get(name)
            if series is None:
                series = self.models[name] = Series(deque(maxlen=self.points), deque(maxlen=self.points))
            series.tokens_per_s.append(m.tokens_out_per_s)
            series.attainment.append(m.slo.attainment)
        return True

    def tokens_per_s(self, model: str) -> list[float]:
        series = self.models.get(model)
        return list(series.tokens_per_s) if series else []

    def attainment(self, model: str) -> list[float | None]:
        series = self.models.get(model)
        return list(series.attainment) if series else []

    @property
    def span_s(self) -> float:
        """How much time the full series cover."""
        return self.step_s * self.points
