"""Replaying a workload open-loop against an engine, and the figures of a replay.

``replay`` drives anything with ``add_request`` / ``step`` / ``abort`` /
``has_unfinished`` on an injected clock: the real engine in real time
(``muxd bench mux``), or an ``EngineCore`` on a ``SimulatedExecutor`` and a
``ManualClock`` (the simulator, ``muxd.placement.simulator``), so both are
measured by one piece of code. ``summarize`` gives throughput, SLO
attainment (``core.slo``, the daemon's rule) and latency percentiles
(``core.percentile``). No torch.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from muxd.core.percentile import percentile
from muxd.core.slo import Outcome, SloTarget, attainment, meets
from muxd.workload import RequestSpec


@dataclass
class Record:
    """What happened to one request, in seconds from the start of the replay."""

    request: RequestSpec
    first_token_s: float | None = None
    finish_s: float | None = None
    output_tokens: int = 0

    def latency(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.request.arrival_s

    def outcome(self) -> Outcome:
        ttft = None if self.first_token_s is None else self.first_token_s - self.request.arrival_s
        tpot = None
        if self.finish_s is not None and self.first_token_s is not None and self.output_tokens > 1:
            tpot = (self.finish_s - self.first_token_s) / (self.output_tokens - 1)
        return Outcome(ok=self.finish_s is not None, ttft_s=ttft, tpot_s=tpot, e2e_s=self.latency())

    def verdict(self) -> bool | None:
        """``core.slo.meets`` against the request's end-to-end target: the daemon's rule."""
        return meets(SloTarget(e2e_s=self.request.slo_s), self.outcome())

    def missed(self, now: float) -> bool:
        """Known to miss its SLO by ``now``: finished late, or still running past it."""
        slo = self.request.slo_s
        if slo is None:
            return False
        end = self.finish_s if self.finish_s is not None else now
        return end - self.request.arrival_s > slo


def prompt_ids(request: RequestSpec, vocab_size: int, seed: int = 0) -> list[int]:
    """The request's prompt: random token ids, the same for every policy and every run."""
    rng = random.Random(f"{seed}:{request.id}")
    return [rng.randrange(vocab_size) for _ in range(request.prompt_tokens)]


def replay(
    engine: Any,
    requests: list[RequestSpec],
    prompts: dict[str, list[int]],
    *,
    deadline_s: float | None = None,
    max_misses: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[Record], float]:
    """Replay ``requests`` open-loop; returns their records and the run's length in seconds.

    Stops early at ``deadline_s`` or once more than ``max_misses`` requests
    are known to miss their SLO; what is unfinished then is aborted and
    counts as a miss.
    """
    from muxd.core.sequence import SamplingParams

    records = {r.id: Record(r) for r in requests}
    pending = deque(sorted(requests, key=lambda r: r.arrival_s))
    live: dict[str, Record] = {}
    late = 0  # finished past their SLO
    start = clock()
    now = 0.0
    while pending or live:
        now = clock() - start
        while pending and pending[0].arrival_s <= now:
            r = pending.popleft()
            params = SamplingParams(max_tokens=r.output_tokens, ignore_eos=True)
            slo = None if r.slo_s is None else r.slo_s - (now - r.arrival_s)  # what is left of it
            engine.add_request(r.model, prompts[r.id], params, request_id=r.id, slo_s=slo)
            live[r.id] = records[r.id]
        if deadline_s is not None and now > deadline_s:
            break
        if max_misses is not None and late + sum(rec.missed(now) for rec in live.values()) > max_misses:
            break
        if not engine.has_unfinished:
            sleep(max(pending[0].arrival_s - now, 0.0))
            continue
        outputs = engine.step()
        now = clock() - start
        for out in outputs:
            rec = records[out.request_id]
            rec.output_tokens = len(out.output_ids)
            if rec.first_token_s is None and out.output_ids:
                rec.first_token_s = now
            if out.finished:
                rec.finish_s = now
                late += rec.missed(now)
                live.pop(out.request_id, None)
    for request_id in live:
        engine.abort(request_id)
    return list(records.values()), now


# -- metrics ---------------------------------------------------------------------
def summarize(records: list[Record], makespan_s: float) -> dict[str, Any]:
    """Throughput, SLO attainment and latency percentiles of one replay."""
    done = [r for r in records if r.finish_s is not None]
    ttft = [r.first_token_s - r.request.arrival_s for r in records if r.first_token_s is not None]
    tpot = [o.tpot_s for o in (r.outcome() for r in done) if o.tpot_s is not None]
    verdicts = {id(r): r.verdict() for r in records}
    span = max(makespan_s, 1e-9)

    def slo_attainment(mine: list[Record]) -> float:
        got = attainment(verdicts[id(r)] for r in mine)
        return 1.0 if got is None else got  # no request had a target: none missed one

    per_model: dict[str, dict[str, Any]] = {}
    for model in sorted({r.request.model for r in records}):
        mine = [r for r in records if r.request.model == model]
        per_model[model] = {
            "requests": len(mine),
            "finished": sum(r.finish_s is not None for r in mine),
            "slo_attainment": slo_attainment(mine),
        }
    return {
        "requests": len(records),
        "finished": len(done),
        "makespan_s": makespan_s,
        "throughput_req_s": len(done) / span,
        "throughput_tok_s": sum(r.output_tokens for r in records) / span,
        "slo_attainment": slo_attainment(records),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "tpot_p50_s": percentile(tpot, 50),
        "tpot_p99_s": percentile(tpot, 99),
        "per_model": per_model,
    }
