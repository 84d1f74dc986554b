"""What the front end measures per model, and the windows its figures span.

Counters and latency records are the front end's own (they survive unit
restarts). Each finished request is a ``Record``: its TTFT, TPOT and
end-to-end latency and its SLO verdict (``core.slo``, the one rule);
failures and 429s are records too, misses without latencies. Latency
percentiles and SLO attainment span the last ``LATENCY_WINDOW_S`` seconds
and, since start, the last ``TOTAL_RECORDS`` requests (attainment since
start counts every request). Rates (tokens/s, compute and busy shares)
come from cumulative counters through a ``RateWindow``.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from muxd import protocol
from muxd.config import ModelConfig
from muxd.core import slo
from muxd.core.percentile import percentile_sorted

RATE_WINDOW_S = 10.0
LATENCY_WINDOW_S = 60.0
TOTAL_RECORDS = 65_536


class RateWindow:
    """Rates of cumulative counters over the last ``span_s`` seconds, from
    samples taken at any times by any readers.

    The rates span the oldest sample still at or before the window's start,
    so readers at their own rates see the same figures (a figure "since the
    previous read" had each reset the other's). A new ``epoch`` (a restart)
    or a counter that goes back starts the samples over; until two samples
    span time, rates run from ``start`` with every counter at 0.
    """

    def __init__(self, span_s: float = RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.span_s = span_s
        self.clock = clock
        self.samples: deque[tuple[float, dict[str, float]]] = deque()
        self.epoch = 0

    def read(self, counters: dict[str, float], epoch: int = 0, start: float | None = None) -> dict[str, float]:
        """Per-second rates of ``counters`` (a key new since the base sample has none)."""
        now = self.clock()
        last = self.samples[-1][1] if self.samples else {}
        if epoch != self.epoch or any(v < last[k] for k, v in counters.items() if k in last):
            self.samples.clear()
            self.epoch = epoch
        self.samples.append((now, dict(counters)))
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.span_s:
            self.samples.popleft()
        if len(self.samples) > 1:
            base_at, base = self.samples[0]
        else:
            base_at, base = (start if start is not None else now), dict.fromkeys(counters, 0.0)
        if now <= base_at:
            return {}
        return {k: (v - base[k]) / (now - base_at) for k, v in counters.items() if k in base}


class SortedValues:
    """A multiset kept in order, so a percentile costs no sort."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def add(self, value: float | None) -> None:
        if value is not None:
            bisect.insort(self.values, value)

    def remove(self, value: float | None) -> None:
        if value is not None:
            del self.values[bisect.bisect_left(self.values, value)]

    def percentiles(self) -> protocol.Percentiles:
        def ms(q: float) -> float | None:
            p = percentile_sorted(self.values, q)
            return None if p is None else round(p * 1e3, 3)

        return protocol.Percentiles(p50=ms(50), p99=ms(99))


@dataclass(frozen=True)
class Record:
    time: float
    outcome: slo.Outcome
    verdict: bool | None  # slo.meets; None: the model has no target


class Span:
    """The records of the last ``window_s`` seconds, or of the last ``maxlen`` requests."""

    def __init__(self, window_s: float | None = None, maxlen: int | None = None) -> None:
        self.window_s, self.maxlen = window_s, maxlen
        self.records: deque[Record] = deque()
        self.ttft, self.tpot, self.e2e = SortedValues(), SortedValues(), SortedValues()
        self.finished = self.met = self.judged = 0

    def add(self, record: Record) -> None:
        self._count(record, +1)
        self.records.append(record)
        if self.maxlen is not None and len(self.records) > self.maxlen:
            self._count(self.records.popleft(), -1)

    def expire(self, now: float) -> None:
        while self.window_s is not None and self.records and self.records[0].time < now - self.window_s:
            self._count(self.records.popleft(), -1)

    def _count(self, r: Record, sign: int) -> None:
        o = r.outcome
        for values, v in ((self.ttft, o.ttft_s), (self.tpot, o.tpot_s), (self.e2e, o.e2e_s)):
            values.add(v) if sign > 0 else values.remove(v)
        self.finished += sign * o.ok
        self.judged += sign * (r.verdict is not None)
        self.met += sign * bool(r.verdict)

    def latency(self) -> protocol.Latency:
        return protocol.Latency(requests=self.finished, ttft_ms=self.ttft.percentiles(),
                                tpot_ms=self.tpot.percentiles(), e2e_ms=self.e2e.percentiles())  # fmt: skip

    def attainment(self) -> float | None:
        return self.met / self.judged if self.judged else None


class ModelTelemetry:
    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.target = slo.SloTarget.from_ms(config.slo_ttft_ms, config.slo_tpot_ms, config.slo_e2e_ms)
        self.done = self.errors = self.rejected = 0
        self.prompt_tokens = self.generated_tokens = 0  # of finished requests
        self.tokens_in = self.tokens_out = 0  # as they happen: the rates' counters
        self.window = Span(window_s=LATENCY_WINDOW_S)
        self.total = Span(maxlen=TOTAL_RECORDS)
        self.met_total = self.judged_total = 0

    def record(self, now: float, outcome: slo.Outcome) -> None:
        verdict = slo.meets(self.target, outcome)
        r = Record(now, outcome, verdict)
        self.window.add(r)
        self.total.add(r)
        self.judged_total += verdict is not None
        self.met_total += bool(verdict)

    def slo(self) -> protocol.Slo:
        c = self.config
        return protocol.Slo(
            ttft_ms=c.slo_ttft_ms, tpot_ms=c.slo_tpot_ms, e2e_ms=c.slo_e2e_ms, goal=c.slo_goal,
            attainment=self.window.attainment(), judged=self.window.judged,
            attainment_total=self.met_total / self.judged_total if self.judged_total else None,
            judged_total=self.judged_total,
        )  # fmt: skip


class Telemetry:
    """The front end's per-model counters and latency records."""

    def __init__(self, models: Iterable[ModelConfig], clock: Callable[[], float] = time.monotonic) -> None:
        self.models = {m.name: ModelTelemetry(m) for m in models}
        self.clock = clock

    def tokens(self, model: str, n: int) -> None:
        self.models[model].tokens_out += n

    def prompt_done(self, model: str, n: int) -> None:
        """A choice's prompt was processed (its first token came)."""
        self.models[model].tokens_in += n

    def finished(self, model: str, outcome: slo.Outcome, prompt: int, generated: int) -> None:
        m = self.models[model]
        m.done += 1
        m.prompt_tokens += prompt
        m.generated_tokens += generated
        m.record(self.clock(), outcome)

    def failed(self, model: str) -> None:
        self.models[model].errors += 1
        self.models[model].record(self.clock(), slo.Outcome(ok=False))

    def rejected(self, model: str) -> None:
        self.models[model].rejected += 1
        self.models[model].record(self.clock(), slo.Outcome(ok=False))

    def expire(self) -> None:
        now = self.clock()
        for m in self.models.values():
            m.window.expire(now)

    def counters(self) -> dict[str, float]:
        """Cumulative token counters for the rate window: ``"<model>/in"`` and ``"<model>/out"``."""
        out: dict[str, float] = {}
        for name, m in self.models.items():
            out[f"{name}/in"], out[f"{name}/out"] = m.tokens_in, m.tokens_out
        return out
