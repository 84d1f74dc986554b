"""Temporal multiplexing: one job of one model owns the whole unit at a time.

The time-sharing baseline of the MuxServe paper (AlpaServe-style), and the
engine's plain continuous-batching driver. FCFS: prefill the oldest waiting
request (with later ones of the same model while the token budget and the
pool allow), otherwise one decode step for one model's running sequences,
models taken round-robin. When the pool runs out, the youngest sequence
holding pages is preempted and recomputed later.
"""

from __future__ import annotations

from muxd.core.job import Job, JobKind
from muxd.sched.base import Scheduler


class TemporalScheduler(Scheduler):
    """Invariant: at most one job in flight, holding every compute slot."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._rr_next = 0

    def schedule(self, now: float) -> list[Job]:
        if self.in_flight:
            return []
        job = self.pick_fcfs(self.models, self.config.compute_slots)
        return [job] if job else []

    def pick_fcfs(self, models: list[str], slots: int, enforce_quota: bool = False) -> Job | None:
        """The next FCFS job among ``models``: the oldest prefill, else a round-robin decode."""
        head = self.oldest_waiting(models)
        if head is not None:
            chunks = self.build_prefill(head.model, enforce_quota)
            if chunks:
                return self.launch(JobKind.PREFILL, head.model, chunks, slots)
        ready = sorted(m for m in models if self.running[m])
        for i in range(len(ready)):
            model = ready[(self._rr_next + i) % len(ready)]
            chunks = self.build_decode(model)
            if chunks:
                self._rr_next += i + 1
                return self.launch(JobKind.DECODE, model, chunks, slots)
        return None
