"""A unit's busy fraction over a fixed window, whoever reads it and how often."""

from __future__ import annotations

from muxd.server.telemetry import WINDOW_S, BusyWindow


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def busy_at_half_the_time(t: float) -> float:
    return (t - 100.0) / 2  # the engine is busy half of the time from t = 100


def test_two_readers_at_their_own_rates_see_the_same_figure() -> None:
    clock = Clock()
    window = BusyWindow(clock)
    window.read(0.0, 0, ready_at=100.0)
    figures = []
    for step in range(1, 60):  # a dashboard every 0.5 s; a scraper reads in between every 5 s
        clock.now = 100.0 + step * 0.5
        if step % 10 == 5:
            window.read(busy_at_half_the_time(clock.now), 0, ready_at=100.0)
        figures.append(window.read(busy_at_half_the_time(clock.now), 0, ready_at=100.0))
    assert all(f == 0.5 for f in figures)


def test_the_window_forgets_what_is_older_than_it() -> None:
    clock = Clock()
    window = BusyWindow(clock)
    window.read(0.0, 0, ready_at=100.0)
    clock.now = 100.0 + 3 * WINDOW_S  # busy all along until here...
    window.read(3 * WINDOW_S, 0, ready_at=100.0)
    clock.now += 2 * WINDOW_S  # ...then idle for two windows
    window.read(3 * WINDOW_S, 0, ready_at=100.0)
    clock.now += 1.0
    assert window.read(3 * WINDOW_S, 0, ready_at=100.0) == 0.0


def test_a_restart_starts_over_from_when_the_unit_became_ready() -> None:
    clock = Clock()
    window = BusyWindow(clock)
    window.read(0.0, 0, ready_at=100.0)
    clock.now = 110.0
    window.read(9.0, 0, ready_at=100.0)
    clock.now = 120.0  # restarted at 116, busy 1 s since
    assert window.read(1.0, 1, ready_at=116.0) == 0.25
