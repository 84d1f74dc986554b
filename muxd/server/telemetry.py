"""What the front end measures per model, and the Prometheus text of it all.

Counters and latency samples are the front end's own (they survive unit
restarts); queue lengths and pages come from the units' ``StatsSnapshot``.
Latencies are kept as the last ``SAMPLES`` values per model, tokens/s over
the last ``WINDOW_S`` seconds.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from muxd.config import ModelConfig
from muxd.core.percentile import percentile

SAMPLES = 2048
WINDOW_S = 10.0


@dataclass
class ModelTelemetry:
    config: ModelConfig
    done: int = 0
    errors: int = 0
    rejected: int = 0  # 429s
    prompt_tokens: int = 0
    generated_tokens: int = 0
    ttft_s: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    tpot_s: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    slo_met: deque[bool] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    recent: deque[tuple[float, int]] = field(default_factory=deque)  # (time, tokens) in the window

    def meets_slo(self, ttft_s: float | None, tpot_s: float | None) -> bool | None:
        c = self.config
        if c.slo_ttft_ms is None and c.slo_tpot_ms is None:
            return None
        ok_ttft = c.slo_ttft_ms is None or (ttft_s is not None and ttft_s * 1e3 <= c.slo_ttft_ms)
        ok_tpot = c.slo_tpot_ms is None or tpot_s is None or tpot_s * 1e3 <= c.slo_tpot_ms
        return ok_ttft and ok_tpot


class BusyWindow:
    """A unit's busy fraction over the last ``WINDOW_S`` seconds, from the
    engine's cumulative busy seconds read at any times by any readers.

    Each reading adds a sample and the figure spans the oldest sample still
    at or before the window's start, so a dashboard and a Prometheus scraper
    reading at their own rates see the same figure (a figure "since the
    previous read" had each reset the other's). A restart, or busy seconds
    that go back, starts the samples over; until two samples span time, the
    figure is since the unit became ready.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.samples: deque[tuple[float, float]] = deque()  # (time, busy seconds)
        self.restarts = 0

    def read(self, busy_s: float, restarts: int, ready_at: float | None) -> float | None:
        now = self.clock()
        if restarts != self.restarts or (self.samples and busy_s < self.samples[-1][1]):
            self.samples.clear()
            self.restarts = restarts
        self.samples.append((now, busy_s))
        while len(self.samples) > 2 and self.samples[1][0] <= now - WINDOW_S:
            self.samples.popleft()
        start, busy_start = self.samples[0] if len(self.samples) > 1 else (ready_at or now, 0.0)
        return round(min(1.0, (busy_s - busy_start) / (now - start)), 4) if now > start else None


class Telemetry:
    def __init__(self, models: Iterable[ModelConfig], clock: Callable[[], float] = time.monotonic) -> None:
        self.models = {m.name: ModelTelemetry(m) for m in models}
        self.clock = clock

    def tokens(self, model: str, n: int) -> None:
        if n:
            self.models[model].recent.append((self.clock(), n))

    def finished(self, model: str, ttft_s: float | None, tpot_s: float | None, prompt: int, generated: int) -> None:
        m = self.models[model]
        m.done += 1
        m.prompt_tokens += prompt
        m.generated_tokens += generated
        if ttft_s is not None:
            m.ttft_s.append(ttft_s)
        if tpot_s is not None:
            m.tpot_s.append(tpot_s)
        met = m.meets_slo(ttft_s, tpot_s)
        if met is not None:
            m.slo_met.append(met)

    def failed(self, model: str) -> None:
        self.models[model].errors += 1

    def rejected(self, model: str) -> None:
        self.models[model].rejected += 1

    def tokens_per_s(self, model: str) -> float:
        m = self.models[model]
        horizon = self.clock() - WINDOW_S
        while m.recent and m.recent[0][0] < horizon:
            m.recent.popleft()
        return sum(n for _, n in m.recent) / WINDOW_S

    def latency_ms(self, model: str) -> dict[str, dict[str, float | None]]:
        m = self.models[model]

        def ms(values: deque[float], q: float) -> float | None:
            p = percentile(values, q)
            return None if p is None else round(p * 1e3, 3)

        return {
            "ttft_ms": {"p50": ms(m.ttft_s, 50), "p99": ms(m.ttft_s, 99)},
            "tpot_ms": {"p50": ms(m.tpot_s, 50), "p99": ms(m.tpot_s, 99)},
        }

    def slo_attainment(self, model: str) -> float | None:
        met = self.models[model].slo_met
        return sum(met) / len(met) if met else None


def prometheus(stats: dict, health: dict) -> str:
    """The ``/muxd/v1/stats`` document as Prometheus text (exposition format 0.0.4)."""
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float | None]]) -> None:
        out.append(f"# HELP muxd_{name} {help_text}")
        out.append(f"# TYPE muxd_{name} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            out.append(f"muxd_{name}{{{label_text}}} {float(value):g}")

    models = stats["models"]
    per_model = [
        ("requests_running", "gauge", "Requests decoding in the unit.", "running"),
        ("requests_queued", "gauge", "Requests waiting in the unit for their prefill.", "queued"),
        ("requests_in_flight", "gauge", "Requests admitted by the front end and not finished.", "in_flight"),
        ("requests_done_total", "counter", "Requests finished.", "done"),
        ("requests_failed_total", "counter", "Requests failed by a unit error or crash.", "errors"),
        ("requests_rejected_total", "counter", "Requests refused with 429 (queue full).", "rejected"),
        ("prompt_tokens_total", "counter", "Prompt tokens of finished requests.", "prompt_tokens"),
        ("generated_tokens_total", "counter", "Tokens generated by finished requests.", "generated_tokens"),
        ("tokens_per_second", "gauge", "Tokens generated per second over the last 10 s.", "tokens_per_s"),
        ("kv_pages_held", "gauge", "KV-cache pages the model's sequences hold.", "pages_held"),
        ("kv_pages_quota", "gauge", "The model's KV-cache page quota.", "pages_quota"),
        ("kv_pages_cached", "gauge", "Evictable KV pages of prefix blocks no request uses.", "pages_cached"),
        ("prefix_cache_hit_tokens_total", "counter", "Prompt tokens served from the prefix cache.", "prefix_hit_tokens"),
        ("prefix_cache_query_tokens_total", "counter", "Prompt tokens looked up in the prefix cache.",
         "prefix_query_tokens"),
        ("slo_attainment", "gauge", "Fraction of recent requests within the model's SLO targets.", "slo_attainment"),
    ]
    for name, kind, help_text, key in per_model:
        metric(name, kind, help_text, [({"model": m}, s[key]) for m, s in models.items()])
    for name, key in (("ttft_seconds", "ttft_ms"), ("tpot_seconds", "tpot_ms")):
        samples = [
            ({"model": m, "quantile": q}, None if s[key][p] is None else s[key][p] / 1e3)
            for m, s in models.items()
            for q, p in (("0.5", "p50"), ("0.99", "p99"))
        ]
        what = "Time to first token" if name.startswith("ttft") else "Time per output token"
        metric(name, "summary", f"{what} of recent requests.", samples)
    units = stats["units"]
    metric("unit_up", "gauge", "1 while the unit serves.", [({"unit": u}, float(s == "ready")) for u, s in health["units"].items()])
    metric("unit_restarts_total", "counter", "Times the unit was restarted.", [({"unit": u}, r) for u, r in health["restarts"].items()])
    metric("kv_pages_total", "gauge", "Pages of the unit's KV pool.", [({"unit": u}, s["pages_total"]) for u, s in units.items()])
    metric("kv_pages_free", "gauge", "Free pages of the unit's KV pool.", [({"unit": u}, s["pages_free"]) for u, s in units.items()])
    metric("unit_busy_seconds_total", "counter", "Seconds the unit's engine computed.", [({"unit": u}, s["busy_s"]) for u, s in units.items()])
    metric("preemptions_total", "counter", "Sequences preempted for lack of pages.", [({"unit": u}, s["preemptions"]) for u, s in units.items()])
    devices = stats["devices"]
    metric("device_utilization", "gauge", "Busy fraction of the device's unit.", [({"device": d, "unit": s["unit"]}, s["utilization"]) for d, s in devices.items()])
    metric("device_memory_used_bytes", "gauge", "Memory the unit process uses on the device.", [({"device": d, "unit": s["unit"]}, s["memory_used_bytes"]) for d, s in devices.items()])
    return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
