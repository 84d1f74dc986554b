"""First-come-first-served continuous batching over several models.

The engine's first policy (the unit issue adds ADBS beside it): one job at a
time; prefill the oldest waiting request (with later ones of the same model
while the token budget and the pool allow), otherwise one decode step for
one model's running sequences, models taken round-robin. When the pool runs
out, the youngest sequence holding pages is preempted and recomputed later.
"""

from __future__ import annotations

from muxd.core.job import Chunk, Job, JobKind
from muxd.core.sequence import Sequence, SequenceStatus
from muxd.sched.base import Scheduler


class FCFSScheduler(Scheduler):
    """Invariant: a request never fails for lack of pages if it fits in the pool alone."""

    _rr_next = 0

    def schedule(self, now: float) -> list[Job]:
        job = self._schedule_prefill() or self._schedule_decode()
        return [job] if job else []

    def _oldest_waiting(self) -> Sequence | None:
        heads = [q[0] for q in self.waiting.values() if q]
        return min(heads, key=self.age, default=None)

    def _schedule_prefill(self) -> Job | None:
        head = self._oldest_waiting()
        if head is None:
            return None
        budget = self.config.max_prefill_tokens
        chunk = self.prefill_chunk(head, budget)
        if not self.reserve(head, chunk.end, protect=set(), may_preempt_self=False):
            return None
        chunks = [chunk]
        budget -= chunk.num_tokens
        for seq in list(self.waiting[head.model])[1:]:
            if budget <= 0 or len(chunks) >= self.config.max_batch_seqs:
                break
            chunk = self.prefill_chunk(seq, budget)
            if not self.kv.allocate_slots(seq, chunk.end):
                break
            chunks.append(chunk)
            budget -= chunk.num_tokens
        return self.make_job(JobKind.PREFILL, head.model, chunks)

    def _schedule_decode(self) -> Job | None:
        models = sorted(m for m in self.running if self.running[m])
        if not models:
            return None
        model = models[self._rr_next % len(models)]
        self._rr_next += 1
        chunks: list[Chunk] = []
        batch = sorted(self.running[model], key=self.age)[: self.config.max_batch_seqs]
        for seq in batch:
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted to make room for an older one
            if self.reserve(seq, seq.num_tokens, {id(c.seq) for c in chunks}, may_preempt_self=True):
                chunks.append(self.decode_chunk(seq))
        return self.make_job(JobKind.DECODE, model, chunks) if chunks else None
