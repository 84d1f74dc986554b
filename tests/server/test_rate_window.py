"""Rates of cumulative counters over a fixed window, whoever reads them and how often."""

from __future__ import annotations

import pytest

from muxd.server.telemetry import RATE_WINDOW_S, RateWindow


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def busy_at_half_the_time(t: float) -> dict[str, float]:
    return {"busy": (t - 100.0) / 2}  # the engine is busy half of the time from t = 100


def test_two_readers_at_their_own_rates_see_the_same_figure() -> None:
    clock = Clock()
    window = RateWindow(clock=clock)
    window.read(busy_at_half_the_time(100.0), start=100.0)
    figures = []
    for step in range(1, 60):  # a dashboard every 0.5 s; a scraper reads in between every 5 s
        clock.now = 100.0 + step * 0.5
        if step % 10 == 5:
            window.read(busy_at_half_the_time(clock.now), start=100.0)
        figures.append(window.read(busy_at_half_the_time(clock.now), start=100.0)["busy"])
    assert figures == pytest.approx([0.5] * len(figures))


def test_the_window_forgets_what_is_older_than_it() -> None:
    clock = Clock()
    window = RateWindow(clock=clock)
    window.read({"busy": 0.0}, start=100.0)
    clock.now = 100.0 + 3 * RATE_WINDOW_S  # busy all along until here...
    window.read({"busy": 3 * RATE_WINDOW_S})
    clock.now += 2 * RATE_WINDOW_S  # ...then idle for two windows
    window.read({"busy": 3 * RATE_WINDOW_S})
    clock.now += 1.0
    assert window.read({"busy": 3 * RATE_WINDOW_S})["busy"] == 0.0


def test_a_restart_starts_over_from_when_the_unit_became_ready() -> None:
    clock = Clock()
    window = RateWindow(clock=clock)
    window.read({"busy": 0.0}, epoch=0, start=100.0)
    clock.now = 110.0
    window.read({"busy": 9.0}, epoch=0, start=100.0)
    clock.now = 120.0  # restarted at 116, busy 1 s since
    assert window.read({"busy": 1.0}, epoch=1, start=116.0)["busy"] == 0.25


def test_a_counter_new_since_the_base_sample_has_no_rate_yet() -> None:
    clock = Clock()
    window = RateWindow(clock=clock)
    window.read({"a": 0.0}, start=100.0)
    clock.now = 101.0
    window.read({"a": 1.0})
    clock.now = 102.0
    assert window.read({"a": 2.0, "b": 5.0}) == {"a": 1.0}
