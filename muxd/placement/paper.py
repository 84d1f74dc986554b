"""The paper's synthetic experiment (MuxServe §5.2), simulated: muxd against spatial and temporal sharing.

19 LLaMA models (12×7B, 4×13B, 2×30B, 1×65B) on 32 A100-80GB (4 nodes × 8),
rates ∝ k^-α with the most popular at 40 req/s, ShareGPT-like lengths.

- **muxd**: the units of ``planner.plan`` (throughput first, as MuxServe's
  placement), each under ADBS;
- **spatial**: every model on dedicated GPUs (7B and 13B on 1, 30B on 4,
  65B on 8), alone in its unit;
- **temporal**: muxd's units, one job at a time (the temporal policy).

Each unit runs the serving scheduler on simulated time (``simulator.py``).
Throughput is given two ways: finished requests over the time until the
last one finished (or the deadline), and requests finished while requests
arrive over that span (under overload a drain's long tail, one late long
answer, dilutes the first).
Pages are counted in units of ``PAGE_SCALE`` real pages (16 tokens of one
KV head of one layer): every model's pages per block divide by it exactly,
so the pool holds the same number of blocks with 16× fewer page ids. A
request's SLO is ``scale × its latency served alone`` (its prefill and
decode steps at a full share, batch 1, by the cost model); attainment at
every scale comes from the same run, whose deadlines ADBS sees at
``RUN_SLO_SCALE``. A unit's compute is split in ``share_levels`` slots, so
that no job runs at a share the cost data never measured.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from muxd.placement.cluster import Cluster
from muxd.placement.cost_model import CostModel
from muxd.placement.model_spec import ModelSpec, paper_models
from muxd.placement.plan import Plan
from muxd.placement.planner import plan as make_plan
from muxd.placement.simulator import SimModel, SimUnit, simulate_unit
from muxd.replay import Record
from muxd.sched.base import SchedulerConfig
from muxd.workload import RequestSpec, WorkloadSpec, generate

ALPHAS = (0.7, 0.9, 1.3, 1.7, 2.1)
PAPER_OBJECTIVE = "throughput"  # MuxServe's placement estimates throughput; the experiment compares it
SLO_SCALES = tuple(range(1, 21))
RUN_SLO_SCALE = 5.0
PAGE_SCALE = 16  # divides layers × KV heads of 7B (1024), 13B (1600), 30B (3120), 65B (5120)
PAGE_TOKENS = 16
SPATIAL_GPUS = {"llama-7b": 1, "llama-13b": 1, "llama-30b": 4, "llama-65b": 8}
# vLLM's and MuxServe's batch limits on a GPU (muxd's defaults are a CPU's): 256 sequences, 2,048 prefill tokens
GPU_SCHEDULER = SchedulerConfig(max_batch_seqs=256, max_prefill_tokens=2048)


def share_levels(costs: CostModel) -> int:
    """How many compute slots a GPU unit has: as many as keep the smallest share a job
    can get (one slot) within what the cost data measured (MuxServe's file: 30 % of the
    SMs, so 3 slots). Below it the cost model only extrapolates: with tenths, a decode
    beside others got 10 % at a cost extrapolated in 1/share, and ADBS fell below temporal."""
    smallest = max(costs.grids(m, tp)[1].shares[0] for m in costs.models() for tp in costs.tp_degrees(m))
    return max(1, int(1 / smallest + 1e-9))


def solo_latency(costs: CostModel, spec: ModelSpec, tp: int, r: RequestSpec) -> float:
    """The request served alone: its prefill, then a decode step per further token."""
    name = spec.cost_name or spec.name
    steps = max(r.output_tokens - 1, 0)
    return costs.prefill_s(name, tp, 1.0, 1, r.prompt_tokens) + steps * costs.decode_s(
        name, tp, 1.0, 1, r.prompt_tokens + r.output_tokens / 2)


def sim_model(spec: ModelSpec, tp: int) -> SimModel:
    per_block = spec.layers * spec.kv_heads
    if per_block % PAGE_SCALE:
        raise ValueError(f"{spec.name}: {per_block} pages a block do not divide by {PAGE_SCALE}")
    return SimModel(spec.name, per_block // PAGE_SCALE, spec.cost_name, tp)


def muxd_units(plan: Plan, specs: dict[str, ModelSpec], policy: str, levels: int) -> list[SimUnit]:
    units = []
    for u in plan.units:
        tp = len(u.devices) if isinstance(u.devices, tuple) else 1
        models = tuple(sim_model(specs[m.name], tp) for m in u.models)
        pages = u.kv_bytes // u.page_bytes // PAGE_SCALE
        units.append(SimUnit(u.name, models, pages, policy, PAGE_TOKENS, levels, GPU_SCHEDULER,
                             rates={m.name: m.rate for m in u.models}))  # fmt: skip
    return units


def spatial_units(specs: list[ModelSpec], device_bytes: int, levels: int) -> list[SimUnit]:
    """Each model alone on its dedicated GPUs, its KV the memory its weights and a reserve leave."""
    units = []
    for s in specs:
        gpus = SPATIAL_GPUS[s.cost_name or s.name]
        kv_bytes = gpus * device_bytes - s.weight_bytes - gpus * (2 << 30)
        page_bytes = 2 * PAGE_TOKENS * s.head_dim * s.dtype_bytes
        units.append(SimUnit(f"spatial-{s.name}", (sim_model(s, gpus),), max(1, kv_bytes // page_bytes // PAGE_SCALE),
                             "temporal", PAGE_TOKENS, levels, GPU_SCHEDULER, rates={s.name: s.rate}))  # fmt: skip
    return units


def attainment_by_scale(records: list[Record], solo: dict[str, float], scales=SLO_SCALES) -> dict[int, float]:
    """The fraction of requests finished within ``scale × solo latency``, per scale (unfinished: misses)."""
    out = {}
    for scale in scales:
        met = sum(r.finish_s is not None and r.finish_s - r.request.arrival_s <= scale * solo[r.request.id]
                  for r in records)  # fmt: skip
        out[scale] = met / len(records) if records else 1.0
    return out


def run_alpha(costs: CostModel, alpha: float, duration_s: float, seed: int = 0, rate_scale: float = 1.0,
              cluster: Cluster | None = None) -> dict[str, Any]:  # fmt: skip
    cluster = cluster or Cluster.parse("32xA100-80GB", nodes=4)
    specs = paper_models(alpha, max_rate=40.0 * rate_scale)
    by_name = {s.name: s for s in specs}
    spec = WorkloadSpec(models=tuple(s.name for s in specs), rate=sum(s.rate for s in specs), alpha=alpha,
                        duration_s=duration_s, seed=seed)  # fmt: skip
    requests = generate(spec)
    plan = make_plan(specs, costs, cluster, objective=PAPER_OBJECTIVE)
    tp_of = {m.name: (len(u.devices) if isinstance(u.devices, tuple) else 1) for u in plan.units for m in u.models}
    levels = share_levels(costs)
    systems = {
        "muxd": muxd_units(plan, by_name, "adbs", levels),
        "temporal": muxd_units(plan, by_name, "temporal", levels),
        "spatial": spatial_units(specs, cluster.device.memory_bytes, levels),
    }
    out: dict[str, Any] = {"alpha": alpha, "requests": len(requests), "rate_req_s": spec.rate, "share_levels": levels,
                           "unplaced": list(plan.unplaced)}  # fmt: skip
    for system, units in systems.items():
        tp = tp_of if system != "spatial" else {s.name: SPATIAL_GPUS[s.cost_name or s.name] for s in specs}
        placed = [r for r in requests if r.model in tp]
        solo = {r.id: solo_latency(costs, by_name[r.model], tp[r.model], r) for r in placed}
        timed = [replace(r, slo_s=RUN_SLO_SCALE * solo[r.id]) for r in placed]
        records: list[Record] = []
        for unit in units:
            recs, _ = simulate_unit(unit, costs, timed, seed, deadline_s=2 * duration_s)
            records += recs
        # requests of models no unit holds count as unfinished
        records += [Record(r) for r in requests if r.model not in tp]
        solo.update({r.id: math.inf for r in requests if r.model not in tp})
        done = [r for r in records if r.finish_s is not None]
        makespan = max((r.finish_s for r in done), default=duration_s)
        out[system] = {
            "throughput_req_s": len(done) / makespan,
            # while requests arrive: a drain's long tail (one late long answer) does not dilute it
            "throughput_in_window_req_s": sum(r.finish_s <= duration_s for r in done) / duration_s,
            "finished": len(done),
            "slo_attainment": attainment_by_scale(records, solo),
        }
    for base in ("spatial", "temporal"):
        out[f"ratio_throughput_vs_{base}"] = out["muxd"]["throughput_req_s"] / out[base]["throughput_req_s"]
        out[f"ratio_in_window_vs_{base}"] = out["muxd"]["throughput_in_window_req_s"] / out[base]["throughput_in_window_req_s"]
    return out
