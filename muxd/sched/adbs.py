"""Adaptive batch scheduling (ADBS), after MuxServe (Duan et al., 2024, §3.3).

Every tick, with the compute slots left free by running jobs:
1. Prefill first. Models with waiting requests are taken round-robin, those
   whose oldest request is nearest its SLO deadline first; each prefill is
   admitted only within the model's KV quota. While a prefill waits for
   compute, no new decode is launched, so freed slots go to it.
2. Decode fills the remaining slots, one job per model, highest response
   ratio first: (time its decode has been ready + its step time) / its step
   time, from the model's recent decode steps. An SLO is a bound on the
   slowdown over the request served alone, and a model with short steps
   that waits one long step of another slows down the most: round-robin
   let a 6 ms-step model wait behind 35 ms steps every turn.
3. Every ``adapt_interval_s``, KV quota moves from models using under 90 %
   of theirs to models whose prefills are blocked by quota (never below the
   pages a model holds).
Unlike the reference, which splits a GPU into ten fixed 10 % slices, a job's
share follows the work: when fewer jobs are ready than slots are free, the
spare slots go to the prefill (compute-bound) or, when a model is the only
one with requests, to its decode (on a CPU its matmuls use them;
engine/model.py ``linear``). With other models active a decode keeps one
slot, so that their jobs never wait a whole decode step for compute.
"""

from __future__ import annotations

from muxd.core.job import Job, JobKind, JobResult
from muxd.core.sequence import Sequence
from muxd.sched.base import SchedEvent, Scheduler
from muxd.sched.quota import adapt_quotas, initial_quotas

ADAPT_INTERVAL_S = 0.5
DEFAULT_DECODE_S = 0.01  # a model's decode step time until one has been measured
DECODE_EWMA = 0.2  # weight of the newest decode step in the running estimate


class ADBSScheduler(Scheduler):
    """Invariants: at most one prefill and one decode job per model in flight;
    the jobs in flight never hold more slots than the unit has."""

    def __init__(self, *args, adapt_interval_s: float = ADAPT_INTERVAL_S, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.adapt_interval_s = adapt_interval_s
        self._rr = 0
        self._next_adapt: float | None = None
        self.quota_moves = 0  # adaptations that moved pages, for stats and tests
        self._decode_s: dict[str, float] = {}  # model -> recent decode step seconds (EWMA)
        self._decode_ready: dict[str, float] = {}  # model -> when its next decode became ready

    def models_changed(self) -> None:
        """Quotas are split afresh over the models now served, at the next tick."""
        self._next_adapt = None
        for table in (self._decode_s, self._decode_ready):
            for model in [m for m in table if m not in self.waiting]:
                del table[model]

    def schedule(self, now: float) -> list[Job]:
        self._adapt(now)
        running = {(job.model, job.kind) for job in self.in_flight.values()}
        prefills = [
            m for m in self._rotation()
            if (m, JobKind.PREFILL) not in running and self._admissible(m)
        ]
        prefills.sort(key=lambda m: self._slack(m, now))
        decodes = [
            m for m in self._rotation()
            if (m, JobKind.DECODE) not in running and any(not self.is_busy(s) for s in self.running[m])
        ]
        self._decode_ready = {m: self._decode_ready.get(m, now) for m in decodes}
        decodes.sort(key=lambda m: -self._response_ratio(m, now))  # stable: rotation breaks ties
        free = self.free_slots()
        spare = max(0, free - len(prefills) - len(decodes))
        jobs: list[Job] = []
        for model in prefills:
            if free == 0:
                return jobs  # a prefill waits for compute: hold back new decodes
            chunks = self.build_prefill(model, enforce_quota=True)
            if chunks:
                slots = 1 + spare
                spare = 0
                jobs.append(self.launch(JobKind.PREFILL, model, chunks, slots))
                free -= slots
        for model in decodes:
            if free == 0:
                break
            chunks = self.build_decode(model)
            if chunks:
                slots = 1 + spare if self._alone(model) else 1
                spare = 0
                jobs.append(self.launch(JobKind.DECODE, model, chunks, slots))
                self._decode_ready.pop(model, None)
                free -= slots
        if not jobs and not self.in_flight:
            # Quotas are soft: an idle unit never keeps a request waiting on one.
            head = self.oldest_waiting()
            chunks = self.build_prefill(head.model) if head else []
            if chunks:
                jobs.append(self.launch(JobKind.PREFILL, head.model, chunks, free))
        if jobs:
            self._rr += 1
        return jobs

    def _admissible(self, model: str) -> bool:
        """A prefill of ``model`` could start now: an idle waiting request, a
        free seat in its decode batch, and room in its KV quota. Only such a
        prefill holds back decodes."""
        idle = (s for s in self.waiting[model] if not self.is_busy(s))
        first = next(idle, None)
        if first is None or not (self.open_seats(model) or first.num_computed or any(s.num_computed for s in idle)):
            return False
        return not self._blocked_by_quota(model)

    def complete(self, result: JobResult) -> list[Sequence]:
        job = result.job
        if job.kind is JobKind.DECODE and result.duration_s > 0:
            old = self._decode_s.get(job.model, result.duration_s)
            self._decode_s[job.model] = (1 - DECODE_EWMA) * old + DECODE_EWMA * result.duration_s
        return super().complete(result)

    def _response_ratio(self, model: str, now: float) -> float:
        step = self._decode_s.get(model, DEFAULT_DECODE_S)
        return (now - self._decode_ready[model] + step) / step

    def _alone(self, model: str) -> bool:
        """No other model has a request waiting or running."""
        return not any(self.waiting[m] or self.running[m] for m in self.models if m != model)

    def _rotation(self) -> list[str]:
        models = self.models
        k = self._rr % len(models) if models else 0
        return models[k:] + models[:k]

    def _slack(self, model: str, now: float) -> float:
        """Time left before the oldest waiting request of ``model`` misses its SLO."""
        deadlines = [s.deadline for s in self.waiting[model] if s.deadline is not None]
        return min(deadlines) - now if deadlines else float("inf")

    def _adapt(self, now: float) -> None:
        pool = self.kv.pool
        if self._next_adapt is None:  # first tick: quotas in proportion to expected demand
            weights = {m: self.config.rates.get(m, 1.0) * self.kv.pages_per_block[m] for m in self.models}
            for model, quota in initial_quotas(pool.total, weights).items():
                pool.set_quota(model, quota)
            self._next_adapt = now + self.adapt_interval_s
            return
        if now < self._next_adapt:
            return
        self._next_adapt = now + self.adapt_interval_s
        moves = adapt_quotas(pool, {m for m in self.models if self._blocked_by_quota(m)})
        if moves:
            self.quota_moves += 1
        for model, pages in moves.items():
            verb = "lent" if pages < 0 else "borrowed"
            self.events.append(SchedEvent("quota_move", model, f"{verb} {abs(pages)} pages; quota now {pool.quota(model)}"))

    def _blocked_by_quota(self, model: str) -> bool:
        head: Sequence | None = self.oldest_waiting([model])
        if head is None:
            return False
        need = self.kv.pages_needed(head, min(head.num_tokens, head.num_computed + self.config.max_prefill_tokens))
        return self.kv.pool.held(model) + need > self.kv.pool.quota(model)
