"""The front end's records: latency over a fixed window and since start, SLO attainment by the one rule."""

from __future__ import annotations

from muxd.config import ModelConfig
from muxd.core.slo import Outcome
from muxd.server.telemetry import LATENCY_WINDOW_S, Telemetry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def telemetry(**slo) -> tuple[Telemetry, Clock]:
    clock = Clock()
    return Telemetry([ModelConfig("m", "/m", **slo)], clock), clock


def done(t: Telemetry, ttft_s: float, e2e_s: float = 1.0) -> None:
    t.finished("m", Outcome(ok=True, ttft_s=ttft_s, tpot_s=0.01, e2e_s=e2e_s), prompt=5, generated=10)


def test_the_window_holds_only_its_last_seconds_and_the_total_holds_all() -> None:
    t, clock = telemetry(slo_ttft_ms=100)
    done(t, 0.5)  # a miss, then the window moves past it
    clock.now += LATENCY_WINDOW_S + 1
    done(t, 0.05)
    t.expire()
    m = t.models["m"]
    assert m.window.latency().requests == 1 and m.window.latency().ttft_ms.p99 == 50.0
    assert m.total.latency().requests == 2 and m.total.latency().ttft_ms.p99 > 450
    assert m.slo().attainment == 1.0 and m.slo().attainment_total == 0.5 and m.slo().judged_total == 2


def test_failures_and_refusals_are_misses_without_latencies() -> None:
    t, _ = telemetry(slo_e2e_ms=2000)
    done(t, 0.1)
    t.failed("m")
    t.rejected("m")
    m = t.models["m"]
    assert (m.done, m.errors, m.rejected) == (1, 1, 1)
    assert m.slo().attainment == 1 / 3 and m.window.latency().requests == 1


def test_without_targets_attainment_is_none_but_latency_is_kept() -> None:
    t, _ = telemetry()
    done(t, 0.2)
    slo = t.models["m"].slo()
    assert slo.attainment is None and slo.judged == 0 and t.models["m"].window.latency().ttft_ms.p50 == 200.0


def test_percentiles_follow_removals_from_the_window() -> None:
    t, clock = telemetry()
    for i in range(100):
        done(t, (i + 1) / 1000)
        clock.now += 1.0  # one a second: the 60 s window keeps the last 60
    t.expire()
    lat = t.models["m"].window.latency()
    assert lat.requests == 60 and lat.ttft_ms.p50 == 70.5
