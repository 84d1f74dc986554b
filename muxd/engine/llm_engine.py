"""An in-process engine: several models, one KV pool, continuous batching.

The engine's driver: a scheduling policy (``temporal`` by default, or
``adbs`` / ``spatial``) picks jobs, the executor runs them side by side on
their compute slots, and ``step`` applies the results. ``muxd generate``,
the benches and the unit process (``muxd/unit.py``) all drive this class.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import torch

from muxd import ipc
from muxd.core.detokenize import IncrementalDetokenizer
from muxd.core.job import Job
from muxd.core.kv_manager import KVManager
from muxd.core.pages import PagePool
from muxd.core.sequence import FinishReason, SamplingParams, Sequence
from muxd.engine.kv_cache import KVCache, KVLayout
from muxd.engine.runner import ModelRunner
from muxd.models.loader import LoadedModel
from muxd.engine.executor import Executor, on_own_thread
from muxd.sched import POLICIES, SchedulerConfig

Decode = Callable[[list[int]], str]

CUDA_SHARE_LEVELS = 10  # a GPU's compute in tenths, as MuxServe's MPS shares


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


@dataclass
class _Request:
    seq: Sequence
    detok: IncrementalDetokenizer | None
    emitted: int = 0  # output tokens already reported


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


class LLMEngine:
    """Serve ``runners`` (name -> model) from one pool of ``num_pages`` pages.

    ``prefix_caching`` (default on) lets a request start from cached blocks
    of an earlier request's identical prefix (``core/kv_manager.py``).
    ``green_contexts`` (CUDA only) runs compute shares in green contexts;
    off, every share is a plain stream over all SMs (torch's green contexts
    of a unit overlap: see docs/gpu-check.md).
    """

    def __init__(
        self,
        models: dict[str, LoadedModel],
        *,
        kv_cache_bytes: int = 256 << 20,
        page_tokens: int = 16,
        policy: str = "temporal",
        cores: int | None = None,
        rates: dict[str, float] | None = None,
        scheduler_config: SchedulerConfig | None = None,
        decoders: dict[str, Decode] | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
        prefix_caching: bool = True,
        green_contexts: bool = True,
    ) -> None:
        if not models:
            raise ValueError("an engine needs at least one model")
        devices = {m.device for m in models.values()}
        if len(devices) != 1:
            raise ValueError(f"all models of one engine share a device, got {sorted(map(str, devices))}")
        layout = KVLayout.for_models(page_tokens, [(m.spec.head_dim, m.dtype) for m in models.values()])
        device = devices.pop()
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        slots = cores or (torch.get_num_threads() if device.type == "cpu" else CUDA_SHARE_LEVELS)
        # The driving thread only schedules: parallel work belongs to the
        # executor's threads, so even zeroing the pool runs off it (see
        # ``on_own_thread``), as ``load_model`` does.
        self.kv_cache = on_own_thread(lambda: KVCache.from_budget(layout, kv_cache_bytes, device))
        self.pool = PagePool(self.kv_cache.usable_pages)
        # Prefix caching reuses computed blocks of shared prompt prefixes
        # (chat templates, earlier turns); off, every prompt is recomputed.
        self.kv = KVManager(self.pool, page_tokens, prefix_caching=prefix_caching)
        config = replace(scheduler_config or SchedulerConfig(), compute_slots=slots, rates=dict(rates or {}))
        self.scheduler = POLICIES[policy](self.kv, config)
        self.executor = Executor(slots, device, green_contexts=green_contexts, clock=clock)
        self.models = models
        self.runners: dict[str, ModelRunner] = {}
        for name, loaded in models.items():
            self.kv.add_model(name, loaded.spec.pages_per_block)
            self.scheduler.add_model(name)
            self.runners[name] = ModelRunner(name, loaded, self.kv_cache, seed=seed)
        self.decoders = decoders or {}
        self.clock = clock
        self.stats = EngineStats()
        self._requests: dict[str, _Request] = {}
        self._ids = itertools.count()

    def close(self) -> None:
        """Stop the executor's worker threads; the engine takes no more steps (idempotent).

        Call it (or use the engine as a context manager) before the process
        exits: on CUDA, worker threads left holding their streams at
        interpreter shutdown abort the process.
        """
        self.executor.shutdown()

    def __enter__(self) -> LLMEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        params = params or SamplingParams()
        spec = self.models[model].spec
        request_id = request_id or f"req-{next(self._ids)}"
        seq = Sequence(
            request_id,
            model,
            list(prompt_ids),
            params,
            arrival=self.clock(),
            eos_token_ids=spec.eos_token_ids,
            max_model_len=spec.max_position,
        )
        if slo_s is not None:
            seq.deadline = seq.arrival + slo_s
        if seq.num_tokens >= spec.max_position:
            raise ValueError(f"prompt of {seq.num_tokens} tokens does not fit the context of {spec.max_position}")
        if self.kv.pages_for_tokens(model, seq.num_tokens + 1) > self.pool.total:
            raise ValueError(f"prompt of {seq.num_tokens} tokens does not fit the KV pool of {self.pool.total} pages")
        decode = self.decoders.get(model)
        detok = IncrementalDetokenizer(decode, params.stop, prompt_ids[-4:]) if decode else None
        self.scheduler.add(seq)
        self._requests[request_id] = _Request(seq, detok)
        return request_id

    def abort(self, request_id: str) -> None:
        self.scheduler.abort(request_id)

    @property
    def has_unfinished(self) -> bool:
        """True while some request has not yet been reported finished (aborts included)."""
        return bool(self._requests)

    # -- the loop ----------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Launch the jobs the policy picks now, wait for at least one job to
        finish (when any runs), and report the requests that advanced."""
        for job in self.scheduler.schedule(self.clock()):
            self.executor.submit(job, self.runners[job.model].run)
        self.stats.peak_jobs = max(self.stats.peak_jobs, len(self.scheduler.in_flight))
        outputs = []
        for result in self.executor.wait():
            job = result.job
            self._account(job, result.duration_s)
            outputs.extend(self._report(seq) for seq in self.scheduler.complete(result))
        reported = {o.request_id for o in outputs}
        for request_id in [r for r, req in self._requests.items() if req.seq.is_finished]:
            req = self._requests.pop(request_id)
            if request_id not in reported:  # aborted, or ended by the scheduler (too long for the pool)
                outputs.append(self._report(req.seq, req))
            self.stats.finished[req.seq.model] += 1
            self.stats.prompt_tokens[req.seq.model] += len(req.seq.prompt_ids)
            self.stats.generated_tokens[req.seq.model] += len(req.seq.output_ids)
        return outputs

    def snapshot(self, unit: str) -> ipc.StatsSnapshot:
        """Counters and pool usage per model, for the front end's /stats, and
        the scheduler's events since the last snapshot."""
        sched, pool, now = self.scheduler, self.pool, self.clock()
        models = {
            name: ipc.ModelStats(
                running=sched.num_running(name),
                waiting=sched.num_waiting(name),
                finished=self.stats.finished[name],
                pages_held=pool.held(name),
                pages_quota=pool.quota(name),
                prompt_tokens=self.stats.prompt_tokens[name],
                generated_tokens=self.stats.generated_tokens[name],
                pages_cached=pool.cached(name),
                prefix_hit_tokens=self.kv.hit_tokens[name],
                prefix_query_tokens=self.kv.query_tokens[name],
                prefill_share_s=self.stats.share_s[name, "prefill"],
                decode_share_s=self.stats.share_s[name, "decode"],
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
            self.stats.steps,
            sched.num_preemptions,
            kv_pages_cached=pool.num_cached,
            events=events,
        )

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


def load_engine(
    paths: dict[str, str],
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    **engine_kwargs,
) -> LLMEngine:
    """Load every model of ``paths`` (name -> local dir) and their tokenizers' decoders."""
    from muxd.models.loader import load_model
    from muxd.models.tokenizer import load_tokenizer

    models = {name: load_model(path, dtype, device) for name, path in paths.items()}
    decoders = {name: load_tokenizer(m.path).decode for name, m in models.items()}
    return LLMEngine(models, decoders=decoders, **engine_kwargs)
