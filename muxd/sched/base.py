"""What every policy shares: queues, page allocation, preemption, bookkeeping.

A policy decides *which* chunks go into the next jobs (``schedule``); this
base keeps the per-model queues and applies a job's results (``complete``),
so the FCFS driver, ADBS and the spatial/temporal baselines differ only in
their ``schedule``. Time comes in as an argument, never from a clock read,
so the cluster simulator can drive the same objects.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass

from muxd.core.job import Chunk, Job, JobKind, JobResult
from muxd.core.kv_manager import KVManager
from muxd.core.sequence import FinishReason, Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_seqs: int = 64  # sequences in one decode job
    max_prefill_tokens: int = 512  # tokens in one prefill job; longer prompts are chunked


class Scheduler(ABC):
    """Queues per model: ``waiting`` (not yet fully prefilled) and ``running``.

    Invariants: a sequence is in at most one queue; only waiting or running
    sequences hold pages; finished ones hold none.
    """

    def __init__(self, kv: KVManager, config: SchedulerConfig | None = None) -> None:
        self.kv = kv
        self.config = config or SchedulerConfig()
        self.waiting: dict[str, deque[Sequence]] = {}
        self.running: dict[str, list[Sequence]] = {}
        self._by_id: dict[str, Sequence] = {}
        self._next_job_id = 0
        self._order: dict[str, int] = {}  # admission order breaks arrival-time ties
        self._next_order = 0
        self.num_preemptions = 0  # total so far, for stats and tests

    # -- requests ----------------------------------------------------------
    def add_model(self, model: str) -> None:
        self.waiting.setdefault(model, deque())
        self.running.setdefault(model, [])

    def add(self, seq: Sequence) -> None:
        if seq.model not in self.waiting:
            raise KeyError(f"model {seq.model!r} is not served by this scheduler")
        if seq.seq_id in self._by_id:
            raise ValueError(f"duplicate request id {seq.seq_id!r}")
        self._by_id[seq.seq_id] = seq
        self._order[seq.seq_id] = self._next_order
        self._next_order += 1
        self.waiting[seq.model].append(seq)

    def get(self, seq_id: str) -> Sequence | None:
        return self._by_id.get(seq_id)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """End ``seq`` now (abort, stop string): its pages return to the pool."""
        if seq.is_finished and seq.seq_id not in self._by_id:
            return
        seq.finish(reason)
        self._retire(seq)

    def abort(self, seq_id: str) -> Sequence | None:
        seq = self._by_id.get(seq_id)
        if seq is not None:
            self.finish(seq, FinishReason.ABORT)
        return seq

    @property
    def has_work(self) -> bool:
        return bool(self._by_id)

    def num_waiting(self, model: str) -> int:
        return len(self.waiting[model])

    def num_running(self, model: str) -> int:
        return len(self.running[model])

    # -- the policy --------------------------------------------------------
    @abstractmethod
    def schedule(self, now: float) -> list[Job]:
        """Return the jobs to launch now (possibly none)."""

    # -- shared mechanics --------------------------------------------------
    def complete(self, result: JobResult) -> list[Sequence]:
        """Apply a finished job: advance computed tokens, append samples.

        Returns the sequences of the job that are still live or just
        finished, in job order (aborted ones are skipped).
        """
        touched = []
        for chunk in result.job.chunks:
            seq = chunk.seq
            if seq.is_finished or seq.seq_id not in self._by_id:
                continue  # aborted while the job ran
            seq.num_computed = chunk.end
            if chunk.samples:
                seq.append_token(result.tokens[seq.seq_id], result.logprobs.get(seq.seq_id, 0.0))
                if seq.status is SequenceStatus.WAITING:
                    self.waiting[seq.model].remove(seq)
                    seq.status = SequenceStatus.RUNNING
                    self.running[seq.model].append(seq)
            if seq.is_finished:
                self._retire(seq)
            touched.append(seq)
        return touched

    def _retire(self, seq: Sequence) -> None:
        self.kv.free(seq)
        self._by_id.pop(seq.seq_id, None)
        self._order.pop(seq.seq_id, None)
        if seq in self.waiting[seq.model]:
            self.waiting[seq.model].remove(seq)
        if seq in self.running[seq.model]:
            self.running[seq.model].remove(seq)

    def preempt(self, seq: Sequence) -> None:
        """Drop ``seq``'s pages; it waits again, first in line, to be recomputed."""
        self.kv.free(seq)
        seq.num_preemptions += 1
        self.num_preemptions += 1
        if seq.status is SequenceStatus.RUNNING:
            self.running[seq.model].remove(seq)
            seq.status = SequenceStatus.WAITING
            self.waiting[seq.model].appendleft(seq)

    def age(self, seq: Sequence) -> tuple[float, int]:
        """Sort key: smaller is older (arrival time, then admission order)."""
        return (seq.arrival, self._order.get(seq.seq_id, -1))

    def youngest_holder(self, exclude: set[int]) -> Sequence | None:
        """The youngest sequence holding pages, not in ``exclude`` (ids): the preemption victim."""
        holders = [
            s
            for q in (*self.running.values(), *self.waiting.values())
            for s in q
            if s.pages and id(s) not in exclude
        ]
        return max(holders, key=self.age, default=None)

    def reserve(self, seq: Sequence, upto: int, protect: set[int], may_preempt_self: bool) -> bool:
        """Get slots for ``seq``'s first ``upto`` tokens, preempting younger holders.

        Returns False when ``seq`` must wait: the pool cannot serve it without
        preempting an older or protected sequence (then, with
        ``may_preempt_self``, ``seq`` itself is preempted). A request that
        cannot fit even alone in the pool is finished with ``length``.
        """
        if not self.fits_alone(seq, upto):
            self.finish(seq, FinishReason.LENGTH)
            return False
        while not self.kv.allocate_slots(seq, upto):
            victim = self.youngest_holder(exclude=protect | {id(seq)})
            if victim is None or self.age(victim) < self.age(seq):
                if may_preempt_self:
                    self.preempt(seq)
                return False
            self.preempt(victim)
        return True

    def prefill_chunk(self, seq: Sequence, budget: int) -> Chunk:
        end = min(seq.num_tokens, seq.num_computed + budget)
        return Chunk(seq, seq.num_computed, end)

    def decode_chunk(self, seq: Sequence) -> Chunk:
        return Chunk(seq, seq.num_tokens - 1, seq.num_tokens)

    def make_job(self, kind: JobKind, model: str, chunks: list[Chunk], share: float = 1.0) -> Job:
        self._next_job_id += 1
        return Job(kind, model, chunks, share, self._next_job_id)

    def fits_alone(self, seq: Sequence, upto: int) -> bool:
        return self.kv.pages_for_tokens(seq.model, upto) <= self.kv.pool.total
