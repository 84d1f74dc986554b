"""An executor whose jobs take simulated time, for tests and the cluster simulator.

``submit`` runs a job's ``run`` at once (a simulated runner only samples
tokens) and books its end at ``now + duration(job)``; ``wait`` moves the
injected ``ManualClock`` to the earliest end and returns every job ended by
then. It is an ``engine_core.JobExecutor``, so ``EngineCore`` drives it as
it drives the thread executor that serves.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from muxd.clock import ManualClock
from muxd.core.job import Job, JobResult
from muxd.core.sequence import Sequence
from muxd.sched.engine_core import RunFn


@dataclass
class _Booked:
    result: JobResult
    start: float
    end: float


class SimulatedExecutor:
    """Jobs run side by side and end at ``submit time + duration(job)`` (default: at once).

    Invariant: the clock moves only forward, and ``wait`` returns jobs in
    order of their end (ties in order of submission), each job once;
    ``result.duration_s`` is its simulated duration.
    """

    def __init__(self, clock: ManualClock, duration: Callable[[Job], float] = lambda job: 0.0) -> None:
        self.clock = clock
        self.duration = duration
        self._booked: dict[int, _Booked] = {}  # job id -> not yet collected
        self._ends: list[tuple[float, int, int]] = []  # heap of (end, submission order, job id)
        self._order = itertools.count()
        self._collected_s = 0.0  # Σ share × duration of the jobs collected

    @property
    def busy(self) -> bool:
        return bool(self._booked)

    def submit(self, job: Job, run: RunFn) -> None:
        result = run(job)
        result.duration_s = self.duration(job)
        start = self.clock()
        self._booked[job.job_id] = _Booked(result, start, start + result.duration_s)
        heapq.heappush(self._ends, (start + result.duration_s, next(self._order), job.job_id))

    def wait(self, timeout: float | None = None) -> list[JobResult]:
        """Move the clock to the earliest end (no further than ``timeout`` from
        now) and return every job ended by then; [] when none runs."""
        while self._ends and self._ends[0][2] not in self._booked:
            heapq.heappop(self._ends)  # taken out of order by ``take``
        if not self._ends:
            return []
        first = self._ends[0][0]
        if timeout is not None and first > self.clock() + timeout:
            self.clock.advance_to(self.clock() + timeout)
            return []
        self.clock.advance_to(first)
        results = []
        while self._ends and self._ends[0][0] <= self.clock():
            booked = self._booked.pop(heapq.heappop(self._ends)[2], None)
            if booked is not None:
                results.append(self._collect(booked))
        return results

    def running(self) -> list[Job]:
        """The jobs submitted and not yet collected (those that run beside a new one)."""
        return [b.result.job for b in self._booked.values()]

    def take(self, job: Job) -> JobResult:
        """Collect ``job`` now, ended or not, as if it had run its duration
        (tests that complete jobs in an order of their own)."""
        return self._collect(self._booked.pop(job.job_id))

    def occupied_s(self) -> float:
        """∫ Σ in-flight shares dt up to now: each job counts from its submission to its end."""
        now = self.clock()
        running = sum(b.result.job.share * (min(now, b.end) - b.start) for b in self._booked.values())
        return self._collected_s + running

    def _collect(self, booked: _Booked) -> JobResult:
        self._collected_s += booked.result.job.share * booked.result.duration_s
        return booked.result


class SimulatedRunner:
    """Samples ``sample(seq)`` for each sequence a job ends on (default: token 1,
    so that a simulated request without end-of-sequence ids runs to max_tokens)."""

    def __init__(self, sample: Callable[[Sequence], int] = lambda seq: 1) -> None:
        self.sample = sample

    def run(self, job: Job) -> JobResult:
        return JobResult(job, {c.seq.seq_id: self.sample(c.seq) for c in job.chunks if c.samples})
