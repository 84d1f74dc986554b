"""``muxd bench stats``: do the daemon's live figures tell the truth under load?

Against a running daemon: an open-loop Poisson load over its models (each
model's share of requests in proportion to its configured rate), streamed
chat completions timed by the bench, while a subscriber reads
``/muxd/v1/stats/stream``. Then:

- SLO attainment per model: the daemon's (its latency window) against the
  bench's own, from its own timings of the requests that finished in the same
  window, judged by the same rule (``core.slo``) against the targets the
  daemon reports;
- compute shares: in each stats document under load, the models' shares
  against their unit's busy share (they should add up to it);
- the stream's cost: the daemon's CPU time with ``subscribers`` streams at
  ``interval_ms`` against none, per subscriber, in % of one core.

Only httpx, psutil and the standard library: no torch.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from muxd.client import AsyncClient
from muxd.errors import MuxdError
from muxd.core.percentile import percentile
from muxd.engine import cpu_isa
from muxd.core.slo import Outcome, SloTarget, attainment, meets
from muxd.protocol import Stats

PROMPTS = ("Tell me about the sea.", "What is the capital of France?", "Write a short poem.", "Explain gravity.")


@dataclass
class Timing:
    model: str
    outcome: Outcome
    finished_at: float  # unix seconds


async def one_request(client: AsyncClient, model: str, prompt: str, max_tokens: int) -> Timing:
    sent = time.monotonic()
    first = None
    try:
        stream = await client.chat(model, prompt, stream=True, max_tokens=max_tokens, temperature=0, ignore_eos=True,
                                   include_usage=True)  # fmt: skip
        tokens = 0
        async for chunk in stream:
            if any(c.delta.content or c.finish_reason for c in chunk.choices):
                first = first or time.monotonic()  # the first chunk that carries text (or ends the answer)
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens  # a chunk may carry several tokens: count them all
        end = time.monotonic()
        tpot = (end - first) / (tokens - 1) if first is not None and tokens > 1 else None
        outcome = Outcome(ok=True, ttft_s=None if first is None else first - sent, tpot_s=tpot, e2e_s=end - sent)
    except MuxdError:
        outcome = Outcome(ok=False)
    return Timing(model, outcome, time.time())


async def load(client: AsyncClient, rates: dict[str, float], duration_s: float, max_tokens: int, seed: int) -> list[Timing]:
    rng = random.Random(seed)
    total = sum(rates.values())
    models, weights = list(rates), list(rates.values())
    tasks, t = [], 0.0
    start = time.monotonic()
    while True:
        t += rng.expovariate(total)
        if t > duration_s:
            break
        await asyncio.sleep(max(0.0, start + t - time.monotonic()))
        model = rng.choices(models, weights)[0]
        tokens = rng.randint(max(2, max_tokens // 4), max_tokens)
        tasks.append(asyncio.create_task(one_request(client, model, rng.choice(PROMPTS), tokens)))
    return list(await asyncio.gather(*tasks))


async def collect(client: AsyncClient, docs: list[Stats], interval_ms: int) -> None:
    async with await client.stats_stream(interval_ms=interval_ms) as stream:
        async for item in stream:
            if isinstance(item, Stats):
                docs.append(item)


def compare_attainment(final: Stats, timings: list[Timing]) -> dict[str, Any]:
    out = {}
    since = final.time - final.latency_window_s
    for name, m in final.models.items():
        target = SloTarget.from_ms(m.slo.ttft_ms, m.slo.tpot_ms, m.slo.e2e_ms)
        mine = [t for t in timings if t.model == name]
        window = attainment(meets(target, t.outcome) for t in mine if t.finished_at >= since)
        out[name] = {
            "requests": len(mine),
            "daemon_window": m.slo.attainment, "bench_window": window,
            "daemon_total": m.slo.attainment_total, "bench_total": attainment(meets(target, t.outcome) for t in mine),
            "points_apart": None if window is None or m.slo.attainment is None else round(100 * abs(window - m.slo.attainment), 2),
            # where the two vantage points differ: the bench's clock runs in another process on the same cores
            "ttft_p50_ms": {"daemon": m.latency.ttft_ms.p50, "bench": _ms(percentile([t.outcome.ttft_s for t in mine if t.outcome.ttft_s is not None], 50))},
            "tpot_p50_ms": {"daemon": m.latency.tpot_ms.p50, "bench": _ms(percentile([t.outcome.tpot_s for t in mine if t.outcome.tpot_s is not None], 50))},
        }  # fmt: skip
    return out


def share_ratios(docs: list[Stats], min_busy: float) -> dict[str, Any]:
    """Σ models' shares / unit busy share, over the documents where the unit was at least ``min_busy`` busy."""
    ratios = []
    for doc in docs:
        for unit_name, unit in doc.units.items():
            if unit.busy is not None and unit.busy >= min_busy:
                shares = sum(m.share.total for m in doc.models.values() if m.unit == unit_name)
                ratios.append(shares / unit.busy)
    if not ratios:
        return {"documents": 0}
    return {"documents": len(ratios), "median": round(statistics.median(ratios), 4),
            "min": round(min(ratios), 4), "max": round(max(ratios), 4)}  # fmt: skip


async def stream_cost(socket: str, pid: int, subscribers: int, interval_ms: int, seconds: float) -> dict[str, float]:
    """The daemon's CPU (% of a core) idle with no stream, then with ``subscribers`` streams."""
    proc = psutil.Process(pid)

    def cpu() -> float:
        t = proc.cpu_times()
        return t.user + t.system

    before = cpu()
    await asyncio.sleep(seconds)
    alone = (cpu() - before) / seconds
    clients = [AsyncClient(socket) for _ in range(subscribers)]
    sinks: list[list[Stats]] = [[] for _ in clients]
    tasks = [asyncio.create_task(collect(c, s, interval_ms)) for c, s in zip(clients, sinks)]
    await asyncio.sleep(1.0)
    before = cpu()
    await asyncio.sleep(seconds)
    streaming = (cpu() - before) / seconds
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in clients:
        await c.aclose()
    return {
        "daemon_core_pct_no_stream": round(100 * alone, 3), "daemon_core_pct_streaming": round(100 * streaming, 3),
        "subscribers": subscribers, "interval_ms": interval_ms,
        "per_subscriber_core_pct": round(100 * (streaming - alone) / subscribers, 3),
        "documents_per_subscriber": round(statistics.mean(len(s) for s in sinks), 1),
    }  # fmt: skip


async def run_stats_bench(socket: str, duration_s: float = 60.0, max_tokens: int = 32, seed: int = 0,
                          subscribers: int = 4, interval_ms: int = 500, cost_seconds: float = 10.0,
                          progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:  # fmt: skip
    async with AsyncClient(socket) as client:
        status = await client.status()
        rates = {m.name: max(m.rate, 0.1) for m in status.models}
        docs: list[Stats] = []
        collector = asyncio.create_task(collect(client, docs, interval_ms))
        progress(f"load: {sum(rates.values()):.1f} req/s over {', '.join(rates)} for {duration_s:.0f} s")
        timings = await load(client, rates, duration_s, max_tokens, seed)
        await asyncio.sleep(2 * interval_ms / 1e3)  # a tick after the last request
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
        final = await client.stats()
    progress(f"stream cost: {subscribers} subscribers at {interval_ms} ms")
    cost = await stream_cost(socket, status.pid, subscribers, interval_ms, cost_seconds)
    return {
        "cpu": cpu_isa.cpu_model(), "duration_s": duration_s, "requests": len(timings),
        "failed": sum(not t.outcome.ok for t in timings),
        "slo_attainment": compare_attainment(final, timings),
        "share_sum_over_busy": share_ratios(docs, min_busy=0.2),
        "stream": cost,
    }  # fmt: skip


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)
