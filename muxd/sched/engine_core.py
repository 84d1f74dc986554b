"""The engine loop, without torch: schedule → submit → wait → complete → report.

``EngineCore`` owns what every driver of a unit needs around a scheduler:
the requests and their detokenizers, the per-model accounting and the stats
snapshot. What runs the jobs is injected: ``LLMEngine``
(``engine/llm_engine.py``) composes the core with the thread executor and
the model runners; the scheduler tests and the cluster simulator compose it
with ``SimulatedExecutor`` (``sched/sim_executor.py``) on a ``ManualClock``.
So there is one loop, and a simulation drives the very code that serves.
``build_scheduler`` makes the pool, KV manager and policy for either.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from muxd import ipc
from muxd.clock import Clock
from muxd.core.detokenize import IncrementalDetokenizer
from muxd.core.job import Job, JobResult
from muxd.core.kv_manager import KVManager
from muxd.core.pages import PagePool
from muxd.core.sequence import FinishReason, SamplingParams, Sequence
from muxd.sched import POLICIES, Scheduler, SchedulerConfig

Decode = Callable[[list[int]], str]
RunFn = Callable[[Job], JobResult]


class JobRunner(Protocol):
    """One model's forward: a job in, one sampled token per sampling chunk out."""

    def run(self, job: Job) -> JobResult: ...


class GrammarSource(Protocol):
    """A model's grammar compiler (``engine.grammar.Grammars``): ``prepare`` gives a
    future that is done when the grammar is compiled (or failed to)."""

    def prepare(self, grammar: str) -> Future[object]: ...


class JobExecutor(Protocol):
    """Runs jobs side by side on the unit's compute: ``engine.executor.Executor``
    (threads, measured time) or ``sched.sim_executor.SimulatedExecutor``."""

    @property
    def busy(self) -> bool:
        """True while a submitted job has not been collected by ``wait``."""
        ...

    def submit(self, job: Job, run: RunFn) -> None: ...

    def wait(self, timeout: float | None = None) -> list[JobResult]:
        """Finished jobs' results; blocks until one finishes (or ``timeout``), [] when none runs."""
        ...

    def occupied_s(self) -> float:
        """∫ Σ in-flight jobs' shares dt up to now, measured apart from the jobs' own timings."""
        ...


@dataclass(frozen=True)
class ModelLimits:
    """What a request of a model is held to: its end-of-sequence ids and context length."""

    eos_token_ids: tuple[int, ...] = ()
    max_position: int | None = None  # None: no limit but the pool's


@dataclass
class RequestOutput:
    request_id: str
    model: str
    prompt_ids: list[int]
    output_ids: list[int]
    logprobs: list[float]
    text: str = ""
    finished: bool = False
    finish_reason: str | None = None
    new_text: str = ""  # text added by the last step
    error: str | None = None  # why the engine ended the request without serving it (its grammar failed)


@dataclass
class EngineStats:
    steps: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    busy_s: float = 0.0  # Σ job seconds (concurrent jobs add up: can exceed wall time)
    share_s: Counter[tuple[str, str]] = field(default_factory=Counter)  # (model, kind) -> Σ job share × seconds
    peak_jobs: int = 0  # most jobs in flight at once
    step_times: dict[str, list[float]] = field(default_factory=lambda: {"prefill": [], "decode": []})
    finished: Counter[str] = field(default_factory=Counter)  # per model
    prompt_tokens: Counter[str] = field(default_factory=Counter)
    generated_tokens: Counter[str] = field(default_factory=Counter)


@dataclass
class _Request:
    seq: Sequence
    detok: IncrementalDetokenizer | None
    emitted: int = 0  # output tokens already reported
    error: str | None = None


def build_scheduler(
    policy: str,
    num_pages: int,
    page_tokens: int,
    pages_per_block: Mapping[str, int],
    config: SchedulerConfig | None = None,
    *,
    prefix_caching: bool = True,
) -> Scheduler:
    """A ``policy`` over a fresh pool of ``num_pages`` pages serving each model of
    ``pages_per_block`` (its pages per block of ``page_tokens`` tokens: layers ×
    KV heads). The KV manager and pool are ``scheduler.kv`` and ``scheduler.kv.pool``."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    kv = KVManager(PagePool(num_pages), page_tokens, prefix_caching=prefix_caching)
    scheduler = POLICIES[policy](kv, config or SchedulerConfig())
    for name, per_block in pages_per_block.items():
        kv.add_model(name, per_block)
        scheduler.add_model(name)
    return scheduler


class EngineCore:
    """Drive ``scheduler`` with ``executor`` running ``runners`` (model -> runner).

    Every time read comes from ``clock``. A request is known from
    ``add_request`` until the step that reports it finished (aborts and
    requests the scheduler ended included), and counted in ``stats`` then.
    ``decoders`` (model -> ids to text) turn on incremental text and stop strings.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        executor: JobExecutor,
        runners: Mapping[str, JobRunner],
        clock: Clock = time.monotonic,
        *,
        limits: Mapping[str, ModelLimits] | None = None,
        decoders: Mapping[str, Decode] | None = None,
        grammars: Mapping[str, GrammarSource] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.kv = scheduler.kv
        self.pool = scheduler.kv.pool
        self.executor = executor
        self.runners = dict(runners)
        self.clock = clock
        self.limits = dict(limits or {})
        self.decoders = dict(decoders or {})
        self.grammars = dict(grammars or {})
        self.stats = EngineStats()
        self._requests: dict[str, _Request] = {}
        # Constrained sequences whose grammar is still compiling: scheduled once it is.
        self._compiling: dict[str, tuple[Sequence, Future[object]]] = {}
        self._ids = itertools.count()

    # -- the model set -----------------------------------------------------
    def add_model(
        self, name: str, runner: JobRunner, pages_per_block: int, limits: ModelLimits, decoder: Decode | None = None,
        grammar: GrammarSource | None = None,
    ) -> None:
        """Serve ``name`` from the next step on (call between steps: a step boundary)."""
        if name in self.runners:
            raise ValueError(f"model {name!r} is already served")
        self.kv.add_model(name, pages_per_block)
        self.scheduler.add_model(name)
        self.runners[name] = runner
        self.limits[name] = limits
        if decoder is not None:
            self.decoders[name] = decoder
        if grammar is not None:
            self.grammars[name] = grammar

    def has_requests(self, name: str) -> bool:
        """Whether ``name`` has a request not yet reported finished, or a job in flight."""
        return self.scheduler.has_requests(name) or any(r.seq.model == name for r in self._requests.values())

    def remove_model(self, name: str) -> None:
        """Stop serving ``name``, drained (``has_requests`` false): its cached prefix blocks are evicted."""
        if self.has_requests(name):
            raise ValueError(f"model {name!r} still has requests; drain it first")
        self.scheduler.remove_model(name)
        self.kv.remove_model(name)
        for table in (self.runners, self.limits, self.decoders, self.grammars):
            table.pop(name, None)

    # -- requests ----------------------------------------------------------
    def add_request(
        self,
        model: str,
        prompt_ids: list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        slo_s: float | None = None,
    ) -> str:
        """Queue a request; ``slo_s`` (seconds to finish) lets ADBS favour it when at risk."""
        if model not in self.runners:
            raise KeyError(f"model {model!r} not found; served models: {', '.join(self.runners)}")
        limits = self.limits.get(model, ModelLimits())
        seq = Sequence(
            request_id or f"req-{next(self._ids)}",
            model,
            list(prompt_ids),
            params or SamplingParams(),
            arrival=self.clock(),
            eos_token_ids=limits.eos_token_ids,
            max_model_len=limits.max_position,
        )
        if slo_s is not None:
            seq.deadline = seq.arrival + slo_s
        if limits.max_position is not None and seq.num_tokens >= limits.max_position:
            raise ValueError(f"prompt of {seq.num_tokens} tokens does not fit the context of {limits.max_position}")
        if self.kv.pages_for_tokens(model, seq.num_tokens + 1) > self.pool.total:
            raise ValueError(f"prompt of {seq.num_tokens} tokens does not fit the KV pool of {self.pool.total} pages")
        if seq.params.grammar and model not in self.grammars:
            raise ValueError(f"model {model!r} takes no grammar (constrained decoding is off for it)")
        self.add_sequence(seq)
        return seq.seq_id

    def add_sequence(self, seq: Sequence) -> None:
        """Queue a sequence the caller built (tests, a simulator's workload), unchecked against the limits."""
        decode = self.decoders.get(seq.model)
        detok = IncrementalDetokenizer(decode, seq.params.stop, seq.prompt_ids[-4:]) if decode else None
        self._requests[seq.seq_id] = _Request(seq, detok)
        if seq.params.grammar and seq.model in self.grammars:
            self._compiling[seq.seq_id] = (seq, self.grammars[seq.model].prepare(seq.params.grammar))
            self._admit_compiled()
        else:
            self.scheduler.add(seq)

    def abort(self, request_id: str) -> None:
        compiling = self._compiling.pop(request_id, None)
        if compiling is not None:
            compiling[0].finish(FinishReason.ABORT)
        else:
            self.scheduler.abort(request_id)

    def _admit_compiled(self) -> None:
        """Hand the scheduler the sequences whose grammar is ready; end those whose grammar failed."""
        for request_id, (seq, future) in list(self._compiling.items()):
            if not future.done():
                continue
            del self._compiling[request_id]
            error = future.exception()
            if error is None:
                self.scheduler.add(seq)
            else:
                self._requests[request_id].error = f"its grammar does not compile: {error}"
                seq.finish(FinishReason.ABORT)

    @property
    def has_unfinished(self) -> bool:
        """True while some request has not yet been reported finished (aborts included)."""
        return bool(self._requests)

    # -- the loop ----------------------------------------------------------
    def step(self, timeout: float | None = None) -> list[RequestOutput]:
        """Launch the jobs the policy picks now, wait for at least one job to
        finish (when any runs; ``timeout``: at most that long), and report the
        requests that advanced."""
        self.launch()
        return self.collect(timeout)

    def launch(self) -> list[Job]:
        """Hand the jobs the policy picks now to the executor."""
        if self._compiling:
            self._admit_compiled()
        jobs = self.scheduler.schedule(self.clock())
        for job in jobs:
            self.executor.submit(job, self.runners[job.model].run)
        self.stats.peak_jobs = max(self.stats.peak_jobs, len(self.scheduler.in_flight))
        return jobs

    def collect(self, timeout: float | None = None) -> list[RequestOutput]:
        """Complete the jobs the executor has finished (waiting up to ``timeout``
        for one), then report and forget the requests that ended."""
        outputs = [out for result in self.executor.wait(timeout) for out in self.complete(result)]
        return outputs + self._retire({o.request_id for o in outputs})

    def complete(self, result: JobResult) -> list[RequestOutput]:
        """Apply one finished job: account for it, advance its sequences, report them."""
        self._account(result.job, result.duration_s)
        return [self._report(seq) for seq in self.scheduler.complete(result)]

    def run_until_done(self) -> list[RequestOutput]:
        """Step until no request is left; the final output of each, in finishing order."""
        final = []
        while self.has_unfinished:
            final += [out for out in self.step() if out.finished]
        return final

    def generate(
        self, model: str, prompts: Iterable[list[int]], params: SamplingParams | None = None
    ) -> list[RequestOutput]:
        """Blocking helper: run ``prompts`` to completion, results in prompt order."""
        ids = [self.add_request(model, p, params) for p in prompts]
        final = {out.request_id: out for out in self.run_until_done()}
        return [final[i] for i in ids]

    def snapshot(self, unit: str) -> ipc.StatsSnapshot:
        """Counters and pool usage per model, for the front end's /stats, and
        the scheduler's events since the last snapshot."""
        sched, pool, stats, now = self.scheduler, self.pool, self.stats, self.clock()
        models = {
            name: ipc.ModelStats(
                running=sched.num_running(name),
                waiting=sched.num_waiting(name),
                finished=stats.finished[name],
                pages_held=pool.held(name),
                pages_quota=pool.quota(name),
                prompt_tokens=stats.prompt_tokens[name],
                generated_tokens=stats.generated_tokens[name],
                pages_cached=pool.cached(name),
                prefix_hit_tokens=self.kv.hit_tokens[name],
                prefix_query_tokens=self.kv.query_tokens[name],
                prefill_share_s=stats.share_s[name, "prefill"],
                decode_share_s=stats.share_s[name, "decode"],
                oldest_waiting_s=None if (t := sched.oldest_arrival(name)) is None else max(0.0, now - t),
            )
            for name in self.runners
        }
        events = [ipc.UnitEvent(e.kind, e.model, e.message) for e in sched.take_events()]
        # Cached pages count as free: they are evicted as soon as new work needs them.
        return ipc.StatsSnapshot(
            unit,
            now,
            pool.total,
            pool.num_free + pool.num_cached,
            models,
            self.executor.occupied_s(),
            stats.steps,
            sched.num_preemptions,
            kv_pages_cached=pool.num_cached,
            events=events,
        )

    # -- bookkeeping -------------------------------------------------------
    def _retire(self, reported: set[str]) -> list[RequestOutput]:
        """Forget the finished requests and count them; report those no job
        reported (aborted, or ended by the scheduler: too long for the pool)."""
        outputs = []
        for request_id in [r for r, req in self._requests.items() if req.seq.is_finished]:
            req = self._requests.pop(request_id)
            if request_id not in reported:
                outputs.append(self._report(req.seq, req))
            self.stats.finished[req.seq.model] += 1
            self.stats.prompt_tokens[req.seq.model] += len(req.seq.prompt_ids)
            self.stats.generated_tokens[req.seq.model] += len(req.seq.output_ids)
        return outputs

    def _report(self, seq: Sequence, req: _Request | None = None) -> RequestOutput:
        req = req or self._requests[seq.seq_id]
        new_ids = seq.output_ids[req.emitted :]
        req.emitted = len(seq.output_ids)
        new_text = ""
        if req.detok is not None:
            new_text = req.detok.add(new_ids)
            if req.detok.stopped and not seq.is_finished:
                self.scheduler.finish(seq, FinishReason.STOP)
            if seq.is_finished:
                new_text += req.detok.flush()
        return RequestOutput(
            request_id=seq.seq_id,
            model=seq.model,
            prompt_ids=seq.prompt_ids,
            output_ids=list(seq.output_ids),
            logprobs=list(seq.output_logprobs),
            text=req.detok.text if req.detok else "",
            finished=seq.is_finished,
            finish_reason=seq.finish_reason.value if seq.finish_reason else None,
            new_text=new_text,
            error=req.error,
        )

    def _account(self, job: Job, seconds: float) -> None:
        kind = job.kind.value
        self.stats.steps += 1
        self.stats.busy_s += seconds
        self.stats.share_s[job.model, kind] += job.share * seconds
        self.stats.step_times[kind].append(seconds)
        if kind == "prefill":
            self.stats.prefill_tokens += job.num_tokens
        else:
            self.stats.decode_tokens += job.num_tokens
