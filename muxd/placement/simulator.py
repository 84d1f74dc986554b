"""A discrete-event simulator of LLM units, driving the scheduler that serves.

A simulated unit is the serving ``EngineCore`` with the real policy, pool
and KV manager (``sched.engine_core.build_scheduler``) on a
``SimulatedExecutor``: each job ends after the cost model's latency for its
kind, model, compute share, batch and length, on a ``ManualClock``. The
workload is replayed by ``muxd.replay`` (the code that measures ``muxd
bench mux``), so a simulated run and a measured one give the same figures.
Units share nothing, so each is simulated on its own clock and the records
are pooled.

Job costs: a prefill job of ``b`` chunks of ``t`` tokens in all costs
``prefill_s(share, b, t / b)``; a decode job of ``b`` sequences costs
``decode_s(share, b, mean context)``. A job that starts while a job of the
other kind runs costs its model's colocation slowdown more (``SimModel.slowdown``,
from a profile's ``colocated`` measurements: on a CPU, prefill and decode
share the memory bandwidth), whether or not the other ends first, and
the engine loop's own time per job (``SimModel.overhead``, a profile's
``engine_overhead``: scheduling, the hand-off to a worker thread, each
sequence's token reported), which its slot waits for before the next job.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from muxd.clock import ManualClock
from muxd.core.job import Job, JobKind
from muxd.placement.cost_model import CostModel, Profile
from muxd.replay import Record, prompt_ids, replay, summarize
from muxd.sched.base import SchedulerConfig
from muxd.sched.engine_core import EngineCore, build_scheduler
from muxd.sched.sim_executor import SimulatedExecutor, SimulatedRunner
from muxd.workload import RequestSpec, observed_rates

VOCAB = 32_000  # prompt token ids are drawn below this; only their count matters to a simulated job


@dataclass(frozen=True)
class SimModel:
    """A model as the simulator needs it: its cost model entry and its KV footprint."""

    name: str
    pages_per_block: int  # pages one block of ``page_tokens`` tokens takes (layers × KV heads)
    cost_name: str | None = None  # its name in the cost model (default: ``name``)
    tp: int = 1  # tensor-parallel degree: which of the cost model's grids
    max_position: int = 1 << 20
    slowdown: tuple[float, float] = (1.0, 1.0)  # (prefill, decode) latency beside the other kind / alone
    overhead: tuple[float, float] = (0.0, 0.0)  # the engine loop's seconds per job and per sequence of a job


@dataclass(frozen=True)
class SimUnit:
    name: str
    models: tuple[SimModel, ...]
    num_pages: int
    policy: str = "adbs"
    page_tokens: int = 16
    compute_slots: int = 10  # share granularity: CPU cores, or a GPU's compute in tenths
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    rates: dict[str, float] = field(default_factory=dict)


def job_cost(cost: CostModel, models: dict[str, SimModel],
             running: Callable[[], list[Job]] = list) -> Callable[[Job], float]:  # fmt: skip
    """Seconds a job takes by the cost model, beside the ``running`` jobs."""

    def duration(job: Job) -> float:
        m = models[job.model]
        name, batch = m.cost_name or m.name, len(job.chunks)
        beside = any(other.kind is not job.kind for other in running())
        loop = m.overhead[0] + m.overhead[1] * batch
        if job.kind is JobKind.PREFILL:
            alone = cost.prefill_s(name, m.tp, job.share, batch, max(1, round(job.num_tokens / batch)))
            return alone * (m.slowdown[0] if beside else 1.0) + loop
        context = sum(c.end for c in job.chunks) / batch
        return cost.decode_s(name, m.tp, job.share, batch, context) * (m.slowdown[1] if beside else 1.0) + loop

    return duration


def build_unit(unit: SimUnit, cost: CostModel, clock: ManualClock, seed: int = 0) -> EngineCore:
    """The serving engine core of ``unit`` on a simulated executor."""
    models = {m.name: m for m in unit.models}
    config = SchedulerConfig(unit.scheduler.max_batch_seqs, unit.scheduler.max_prefill_tokens,
                             compute_slots=unit.compute_slots, rates=dict(unit.rates))  # fmt: skip
    # Random prompts share no prefix, so prefix caching would only cost time here.
    scheduler = build_scheduler(unit.policy, unit.num_pages, unit.page_tokens,
                                {m.name: m.pages_per_block for m in unit.models}, config, prefix_caching=False)  # fmt: skip
    executor = SimulatedExecutor(clock)
    executor.duration = job_cost(cost, models, executor.running)
    runners = {name: SimulatedRunner() for name in models}
    return EngineCore(scheduler, executor, runners, clock)


def simulate_unit(unit: SimUnit, cost: CostModel, requests: Iterable[RequestSpec], seed: int = 0,
                  deadline_s: float | None = None) -> tuple[list[Record], float]:  # fmt: skip
    """Replay ``requests`` (of this unit's models) on a simulated ``unit``; records and makespan."""
    clock = ManualClock()
    core = build_unit(unit, cost, clock, seed)
    mine = [r for r in requests if any(m.name == r.model for m in unit.models)]
    prompts = {r.id: prompt_ids(r, VOCAB, seed) for r in mine}
    return replay(core, mine, prompts, deadline_s=deadline_s, clock=clock,
                  sleep=lambda s: clock.advance_to(clock() + s))  # fmt: skip


def simulate(units: Iterable[SimUnit], cost: CostModel, requests: list[RequestSpec], seed: int = 0,
             deadline_s: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Every unit on its own clock (units share nothing); the pooled figures of ``muxd.replay.summarize``."""
    records: list[Record] = []
    makespan = 0.0
    for unit in units:
        unit_records, unit_makespan = simulate_unit(unit, cost, requests, seed, deadline_s)
        records += unit_records
        makespan = max(makespan, unit_makespan)
    return summarize(records, makespan)


def colocation_slowdown(profile: Profile) -> tuple[float, float]:
    """The median (prefill, decode) slowdown of the profile's colocated runs, never below 1."""
    runs = [c.slowdown for c in profile.colocated]
    if not runs:
        return (1.0, 1.0)
    return tuple(max(1.0, statistics.median(r[i] for r in runs)) for i in (0, 1))  # type: ignore[return-value]


def unit_from_profiles(profiles: dict[str, Profile], policy: str, kv_cache_bytes: int, compute_slots: int,
                       page_tokens: int = 16, rates: dict[str, float] | None = None) -> SimUnit:  # fmt: skip
    """One unit of the profiled models (name -> profile): pages of the pool by the largest page's bytes."""
    page_bytes = max(p.memory.bytes_per_kv_page for p in profiles.values())
    models = tuple(
        SimModel(name, pages_per_block=max(1, round(p.memory.pages_per_token * page_tokens)), tp=p.tensor_parallel,
                 slowdown=colocation_slowdown(p),
                 overhead=(p.engine_overhead.per_job_s, p.engine_overhead.per_sequence_s))
        for name, p in profiles.items()
    )
    return SimUnit("sim0", models, kv_cache_bytes // page_bytes, policy, page_tokens, compute_slots,
                   rates=dict(rates or {}))  # fmt: skip


def simulate_policies(profiles: dict[str, Profile], requests: list[RequestSpec], policies: Iterable[str],
                      kv_cache_bytes: int, compute_slots: int, deadline_s: float | None = None) -> dict[str, Any]:  # fmt: skip
    """``muxd bench mux``'s report, simulated: the same workload on one unit of the profiled models under each policy."""
    cost = CostModel.union(CostModel.from_profile(p, name) for name, p in profiles.items())
    span = max((r.arrival_s for r in requests), default=0.0)
    rates = observed_rates(requests, list(profiles))  # as bench mux gives them: the same quotas
    results = {
        policy: simulate([unit_from_profiles(profiles, policy, kv_cache_bytes, compute_slots, rates=rates)], cost,
                         requests, deadline_s=deadline_s)
        for policy in policies
    }  # fmt: skip
    report: dict[str, Any] = {
        "simulated": True,
        "models": {name: {"device_kind": p.device_kind, "signature": p.model_signature, "rate_req_s": rates[name]}
                   for name, p in profiles.items()},
        "workload": {
            "requests": len(requests), "rate_req_s": sum(rates.values()), "duration_s": span,
            "alpha": None, "mean_prompt_tokens": sum(r.prompt_tokens for r in requests) / max(len(requests), 1),
            "mean_output_tokens": sum(r.output_tokens for r in requests) / max(len(requests), 1),
        },
        "compute_slots": compute_slots, "kv_cache_bytes": kv_cache_bytes, "policies": results,
    }  # fmt: skip
    adbs = results.get("adbs", {})
    for base in ("spatial", "temporal"):
        other = results.get(base, {})
        if adbs.get("throughput_req_s") and other.get("throughput_req_s"):
            report[f"ratio_throughput_vs_{base}"] = adbs["throughput_req_s"] / other["throughput_req_s"]
    return report
