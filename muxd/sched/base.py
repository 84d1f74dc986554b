"""What every policy shares: queues, page allocation, preemption, bookkeeping.

A policy decides *which* chunks go into the next jobs and with what share
of the unit's compute (``schedule``); this base keeps the per-model queues,
tracks which sequences are inside a running job, and applies a job's results
(``complete``). ADBS and the spatial and temporal baselines differ only in
their ``schedule``. Time comes in as an argument, never from a clock read,
so the cluster simulator can drive the same objects.
"""

from __future__ import annotations

import bisect

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field

from muxd.core.job import Chunk, Job, JobKind, JobResult
from muxd.core.kv_manager import KVManager
from muxd.core.sequence import FinishReason, Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_seqs: int = 64  # sequences in one decode job
    max_prefill_tokens: int = 512  # tokens in one prefill job; longer prompts are chunked
    compute_slots: int = 1  # the unit's compute in indivisible slots (CPU: cores)
    rates: dict[str, float] = field(default_factory=dict)  # expected req/s per model (quotas, partitions)


@dataclass(frozen=True)
class SchedEvent:
    """Something the scheduler did that a person watching the unit wants to see."""

    kind: str  # "preemption" or "quota_move"
    model: str
    message: str


class Scheduler(ABC):
    """Queues per model: ``waiting`` (not yet fully prefilled) and ``running``.

    Invariants: a sequence is in at most one queue and at most one in-flight
    job; only waiting or running sequences hold pages; finished ones hold
    none once no job that reads their pages is still running. A waiting
    queue is in age order, oldest first (``_enqueue``), so the policies take
    its oldest idle sequences without sorting it every tick.
    """

    def __init__(self, kv: KVManager, config: SchedulerConfig | None = None) -> None:
        self.kv = kv
        self.config = config or SchedulerConfig()
        self.waiting: dict[str, deque[Sequence]] = {}
        self.running: dict[str, list[Sequence]] = {}
        self.in_flight: dict[int, Job] = {}  # job id -> job launched and not yet completed
        self._busy: set[int] = set()  # id() of sequences inside an in-flight job
        self._by_id: dict[str, Sequence] = {}
        self._order: dict[str, int] = {}  # admission order breaks arrival-time ties
        self._next_order = 0
        self._next_job_id = 0
        self.num_preemptions = 0  # total so far, for stats and tests
        self.events: deque[SchedEvent] = deque(maxlen=256)  # the latest, since the engine last took them

    # -- requests ----------------------------------------------------------
    def add_model(self, model: str) -> None:
        """Serve ``model`` too (its pages registered in ``kv`` first); a policy re-plans its shares."""
        self.waiting.setdefault(model, deque())
        self.running.setdefault(model, [])
        self.models_changed()

    def remove_model(self, model: str) -> None:
        """Stop serving ``model``: it must have no request left nor a job in flight (drained)."""
        if self.waiting[model] or self.running[model] or any(j.model == model for j in self.in_flight.values()):
            raise ValueError(f"model {model!r} still has requests or a job in flight; drain it first")
        del self.waiting[model], self.running[model]
        self.models_changed()

    def has_requests(self, model: str) -> bool:
        """Whether ``model`` has a request queued or running, or a job in flight."""
        busy = any(j.model == model for j in self.in_flight.values())
        return busy or bool(self.waiting[model]) or bool(self.running[model])

    def models_changed(self) -> None:
        """Hook: the set of models changed (quotas, partitions are recomputed)."""

    @property
    def models(self) -> list[str]:
        return list(self.waiting)

    def add(self, seq: Sequence) -> None:
        if seq.model not in self.waiting:
            raise KeyError(f"model {seq.model!r} is not served by this scheduler")
        if seq.seq_id in self._by_id:
            raise ValueError(f"duplicate request id {seq.seq_id!r}")
        self._by_id[seq.seq_id] = seq
        self._order[seq.seq_id] = self._next_order
        self._next_order += 1
        self._enqueue(seq)

    def _enqueue(self, seq: Sequence) -> None:
        """Into its model's waiting queue at its age's place (a new one: almost always last)."""
        queue = self.waiting[seq.model]
        if not queue or self.age(queue[-1]) <= self.age(seq):
            queue.append(seq)
        else:
            queue.insert(bisect.bisect_right(queue, self.age(seq), key=self.age), seq)

    def get(self, seq_id: str) -> Sequence | None:
        return self._by_id.get(seq_id)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """End ``seq`` now (abort, stop string). Its pages return to the pool
        at once, or when the job now reading them completes."""
        if seq.seq_id not in self._by_id:
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
        return bool(self._by_id) or bool(self.in_flight)

    def num_waiting(self, model: str) -> int:
        return len(self.waiting[model])

    def num_running(self, model: str) -> int:
        return len(self.running[model])

    def is_busy(self, seq: Sequence) -> bool:
        return id(seq) in self._busy

    def free_slots(self) -> int:
        return self.config.compute_slots - sum(job.slots for job in self.in_flight.values())

    # -- the policy --------------------------------------------------------
    @abstractmethod
    def schedule(self, now: float) -> list[Job]:
        """Return the jobs to launch now (possibly none); they count as in flight."""

    # -- shared mechanics --------------------------------------------------
    def launch(self, kind: JobKind, model: str, chunks: list[Chunk], slots: int) -> Job:
        """Make a job and mark its sequences busy until ``complete``."""
        self._next_job_id += 1
        share = slots / self.config.compute_slots
        job = Job(kind, model, chunks, share, self._next_job_id, slots)
        self.in_flight[job.job_id] = job
        self._busy.update(id(c.seq) for c in chunks)
        return job

    def complete(self, result: JobResult) -> list[Sequence]:
        """Apply a finished job: advance computed tokens, append samples.

        Returns the job's sequences that are still live or just finished, in
        job order (those aborted while it ran are skipped; their pages are
        freed now that nothing reads them).
        """
        job = result.job
        self.in_flight.pop(job.job_id, None)
        touched = []
        for chunk in job.chunks:
            seq = chunk.seq
            self._busy.discard(id(seq))
            if seq.seq_id not in self._by_id:
                self.kv.free(seq)  # finished while the job ran
                continue
            seq.num_computed = chunk.end
            self.kv.commit(seq)  # its newly computed full blocks become reusable prefixes
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
        if id(seq) not in self._busy:
            self.kv.free(seq)
        self._by_id.pop(seq.seq_id, None)
        self._order.pop(seq.seq_id, None)
        if seq in self.waiting[seq.model]:
            self.waiting[seq.model].remove(seq)
        if seq in self.running[seq.model]:
            self.running[seq.model].remove(seq)

    def preempt(self, seq: Sequence) -> None:
        """Drop ``seq``'s pages; it waits again, first in line, to be recomputed."""
        message = f"{seq.seq_id} preempted after {seq.num_computed} tokens, {len(seq.pages)} pages freed"
        self.kv.free(seq)
        self.events.append(SchedEvent("preemption", seq.model, message))
        seq.num_preemptions += 1
        self.num_preemptions += 1
        if seq.status is SequenceStatus.RUNNING:
            self.running[seq.model].remove(seq)
            seq.status = SequenceStatus.WAITING
            self._enqueue(seq)

    def take_events(self) -> list[SchedEvent]:
        events = list(self.events)
        self.events.clear()
        return events

    def oldest_arrival(self, model: str) -> float | None:
        """When the longest-waiting queued request of ``model`` arrived (None: none waits)."""
        return min((s.arrival for s in self.waiting[model]), default=None)

    def age(self, seq: Sequence) -> tuple[float, int]:
        """Sort key: smaller is older (arrival time, then admission order)."""
        return (seq.arrival, self._order.get(seq.seq_id, -1))

    def youngest_holder(self, exclude: set[int]) -> Sequence | None:
        """The youngest idle sequence holding pages, not in ``exclude`` (ids): the preemption victim."""
        holders = [
            s
            for q in (*self.running.values(), *self.waiting.values())
            for s in q
            if s.pages and id(s) not in exclude and id(s) not in self._busy
        ]
        return max(holders, key=self.age, default=None)

    def reserve(
        self,
        seq: Sequence,
        upto: int,
        protect: set[int],
        may_preempt_self: bool,
        enforce_quota: bool = False,
    ) -> bool:
        """Get slots for ``seq``'s first ``upto`` tokens, preempting younger holders.

        Returns False when ``seq`` must wait: the pool cannot serve it without
        preempting an older, busy or protected sequence (then, with
        ``may_preempt_self``, ``seq`` itself is preempted), or its model is
        over quota (``enforce_quota``; quota never preempts). A request that
        cannot fit even alone in the pool is finished with ``length``.
        """
        if not self.fits_alone(seq, upto):
            self.finish(seq, FinishReason.LENGTH)
            return False
        if enforce_quota:
            need = self.kv.pages_needed(seq, upto)
            if self.kv.pool.held(seq.model) + need > self.kv.pool.quota(seq.model):
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

    def fits_alone(self, seq: Sequence, upto: int) -> bool:
        return self.kv.pages_for_tokens(seq.model, upto) <= self.kv.pool.total

    # -- building blocks for policies ----------------------------------------
    def build_prefill(self, model: str, enforce_quota: bool = False) -> list[Chunk]:
        """Chunks of ``model``'s waiting sequences, oldest first, within the token budget.

        The first sequence may preempt younger ones for pages; later ones
        only take free pages. A new sequence first takes the longest run of
        cached blocks of its tokens (``kv.match_prefix``), so its chunk starts
        after them; one that cannot be placed gives them back.
        """
        chunks: list[Chunk] = []
        budget = self.config.max_prefill_tokens
        seats = self.open_seats(model)  # running plus prefilling stay within one decode batch
        for seq in [s for s in self.waiting[model] if not self.is_busy(s)]:  # oldest first
            if budget <= 0 or len(chunks) >= self.config.max_batch_seqs:
                break
            reused: int | None = None  # tokens taken from the prefix cache, when looked up
            if seq.num_computed == 0:  # a new sequence takes a seat; a partly prefilled one has one
                if seats == 0:
                    continue
                seats -= 1
                if not seq.pages:
                    reused = self.kv.match_prefix(seq)
            chunk = self.prefill_chunk(seq, budget)
            if chunks:
                ok = not enforce_quota or self.kv.pool.held(model) + self.kv.pages_needed(seq, chunk.end) <= (
                    self.kv.pool.quota(model)
                )
                ok = ok and self.kv.allocate_slots(seq, chunk.end)
            else:
                ok = self.reserve(seq, chunk.end, set(), may_preempt_self=False, enforce_quota=enforce_quota)
            if not ok:
                if reused is not None:  # it waits as it came; the blocks it matched stay cached
                    self.kv.unmatch(seq, reused)
                break
            chunks.append(chunk)
            budget -= chunk.num_tokens
        return chunks

    def open_seats(self, model: str) -> int:
        """How many more sequences ``model`` may start: running and partly
        prefilled ones together never exceed one decode batch (vLLM's
        ``max_num_seqs``), so admitting prefills cannot starve decode."""
        started = len(self.running[model]) + sum(1 for s in self.waiting[model] if s.num_computed > 0)
        return max(0, self.config.max_batch_seqs - started)

    def build_decode(self, model: str) -> list[Chunk]:
        """One-token chunks of ``model``'s idle running sequences, oldest first."""
        chunks: list[Chunk] = []
        taken: set[int] = set()  # id() of the sequences already in this batch: never preempted for a later one
        batch = sorted((s for s in self.running[model] if not self.is_busy(s)), key=self.age)
        for seq in batch[: self.config.max_batch_seqs]:
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted to make room for an older one
            if self.reserve(seq, seq.num_tokens, taken, may_preempt_self=True):
                chunks.append(self.decode_chunk(seq))
                taken.add(id(seq))
        return chunks

    def oldest_waiting(self, models: list[str] | None = None) -> Sequence | None:
        heads = [next((s for s in self.waiting[m] if not self.is_busy(s)), None) for m in (models or self.models)]
        return min((s for s in heads if s is not None), key=self.age, default=None)
