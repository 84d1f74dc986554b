"""``muxd bench mux``: one multi-model workload replayed under each scheduling policy.

The paper's experiment on one unit: the same models, the same seeded
workload (power-law popularity, Poisson arrivals, ShareGPT-like lengths),
replayed open-loop against an in-process ``LLMEngine`` once per policy
(``adbs`` and the ``spatial`` and ``temporal`` baselines), in one run so that
the machine's noise hits every policy alike. Per policy it reports
throughput (finished requests and generated tokens per second of the run),
SLO attainment (the fraction of requests whose end-to-end latency is within
``slo_scale`` × their latency when served alone, judged by ``core.slo`` as the
daemon judges: an unfinished request is a miss), TTFT and TPOT p50/p99; with
``find_max_rate``, the highest total rate each policy holds at ≥ 99 % SLO
attainment.

Solo latency is measured once per model before any policy runs (a few
prefills of different lengths and a short decode, the model alone in an
engine) and fitted as ``ttft(p) = a + b·p``, ``tpot = c``.

Open-loop replay: a request counts from its scheduled arrival, whether or
not the loop was busy in a step then; its first token and its finish are
stamped when the step that produced them returns.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from muxd import workload
from muxd.engine import cpu_isa
from muxd.replay import prompt_ids, replay, summarize
from muxd.workload import RequestSpec, SoloLatency, WorkloadSpec

DEFAULT_POLICIES = ("adbs", "spatial", "temporal")
BASELINES = ("spatial", "temporal")
SOLO_POLICY = "temporal"  # one job owns the whole unit: a model alone is served as fast as it can be
DEFAULT_ALPHA = 1.3
DEFAULT_RATE = 6.0  # total req/s: measured, 1.5x what the best baseline (spatial) finishes, default models, 2 cores
DEFAULT_DURATION_S = 40.0
DEFAULT_LENGTH_SCALE = 0.15  # ShareGPT means 161/338 -> about 24 prompt and 51 output tokens
DEFAULT_SLO_SCALE = 5.0
DEFAULT_DTYPE = "bfloat16"
DEFAULT_KV_CACHE_BYTES = 512 << 20
TARGET_ATTAINMENT = 0.99
SEARCH_DURATION_S = 10.0
SOLO_PROMPT_SIZES = (16, 64, 256)
SOLO_DECODE_TOKENS = 24

# Random-weight models of 10-60 M parameters (head_dim 64, like SmolLM2's, so
# all four share one page pool), cached under ``cache_dir()/bench-models``.
BENCH_MODELS: dict[str, tuple[str, dict[str, int]]] = {
    "llama-48m": ("llama", dict(hidden_size=640, intermediate_size=1792, num_hidden_layers=10,
                                num_attention_heads=10, num_key_value_heads=5)),
    "qwen2-25m": ("qwen2", dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                                num_attention_heads=8, num_key_value_heads=2)),
    "llama3-13m": ("llama3", dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8,
                                  num_attention_heads=6, num_key_value_heads=2)),
}  # fmt: skip
BENCH_MAX_POSITION = 2048
SMOLLM2_NAME = "smollm2-135m"

Progress = Callable[[str], None]


# -- models --------------------------------------------------------------------
def default_model_paths(progress: Progress | None = None) -> dict[str, Path]:
    """SmolLM2-135M (the most popular) and the random bench models, built on first use."""
    from muxd.models.smollm2 import ensure_smollm2

    say = progress or (lambda _msg: None)
    paths = {SMOLLM2_NAME: ensure_smollm2(progress=say)}
    for name, (family, shape) in BENCH_MODELS.items():
        paths[name] = ensure_bench_model(name, family, shape, say)
    return paths


def ensure_bench_model(name: str, family: str, shape: dict[str, int], say: Progress) -> Path:
    """The cached checkpoint of one bench model, built once (see ``models.cache.build_once``)."""
    from muxd.models.cache import build_once, is_built
    from muxd.paths import cache_dir

    target = cache_dir() / "bench-models" / name
    if is_built(target):
        return target
    say(f"building the random bench model {name}")

    def build(staging: Path) -> None:
        from muxd.models.factory import build_tiny_checkpoint

        build_tiny_checkpoint(family, staging, seed=1, max_position_embeddings=BENCH_MAX_POSITION, **shape)

    return build_once(target, build)


def make_engine(
    models: dict[str, Any],
    policy: str,
    rates: dict[str, float],
    kv_cache_bytes: int,
    prefix_caching: bool = True,
    green_contexts: bool = True,
):
    """An in-process unit serving ``models`` under ``policy``, told each model's expected rate."""
    from muxd.engine.llm_engine import LLMEngine

    return LLMEngine(
        models,
        kv_cache_bytes=kv_cache_bytes,
        policy=policy,
        rates=rates,
        prefix_caching=prefix_caching,
        green_contexts=green_contexts,
    )


# -- solo latency ----------------------------------------------------------------
def measure_solo(
    loaded: Any,
    *,
    prompt_sizes: tuple[int, ...] = SOLO_PROMPT_SIZES,
    decode_tokens: int = SOLO_DECODE_TOKENS,
    repeats: int = 2,
    kv_cache_bytes: int = 64 << 20,
) -> SoloLatency:
    """Fit ``ttft(p) = a + b·p`` and ``tpot = c`` from ``loaded`` alone in an engine (best of ``repeats``)."""
    from muxd.core.sequence import SamplingParams

    # No prefix cache: each repeat sends the same prompt, and a request's SLO
    # must come from computing its whole prompt.
    engine = make_engine({"solo": loaded}, SOLO_POLICY, {"solo": 1.0}, kv_cache_bytes, prefix_caching=False)
    vocab = loaded.spec.vocab_size
    sizes = [min(p, loaded.spec.max_position - decode_tokens - 2) for p in prompt_sizes]

    def timed(prompt: int, max_tokens: int) -> tuple[float, float]:
        """(seconds to the first token, seconds per later token) of one request."""
        rng = random.Random(prompt)
        ids = [rng.randrange(vocab) for _ in range(prompt)]
        engine.add_request("solo", ids, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        t0 = time.perf_counter()
        first = None
        while engine.has_unfinished:
            outs = engine.step()
            if first is None and any(o.output_ids for o in outs):
                first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        return first or total, (total - (first or total)) / max(max_tokens - 1, 1)

    with engine:
        timed(sizes[0], 2)  # warm-up
        ttfts = [min(timed(p, 1)[0] for _ in range(repeats)) for p in sizes]
        tpot = min(timed(sizes[0], decode_tokens + 1)[1] for _ in range(repeats))
    a, b = _fit_line(sizes, ttfts)
    return SoloLatency(ttft_base_s=a, ttft_per_token_s=b, tpot_s=tpot)


def _fit_line(xs: list[int], ys: list[float]) -> tuple[float, float]:
    """Least squares ``y = a + b·x``, with ``a, b >= 0`` (latency never shrinks with length)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    b = max(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var, 0.0) if var else 0.0
    return max(my - b * mx, 0.0), b


# -- replay ----------------------------------------------------------------------
def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


# -- the bench -------------------------------------------------------------------
@dataclass
class MuxBench:
    """Loaded models, their solo latencies, and how to replay a workload under a policy."""

    models: dict[str, Any]  # name -> LoadedModel
    solo: dict[str, SoloLatency]
    slo_scale: float
    kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES
    prompt_seed: int = 0
    green_contexts: bool = True  # CUDA: compute shares as green contexts, else plain streams

    def run(self, policy: str, requests: list[RequestSpec], rates: dict[str, float], **replay_kw) -> dict[str, Any]:
        """Replay ``requests`` under ``policy`` in a fresh engine and summarize it."""
        requests = workload.with_slos(requests, self.solo, self.slo_scale)
        prompts = {r.id: prompt_ids(r, self.models[r.model].spec.vocab_size, self.prompt_seed) for r in requests}
        engine = make_engine(self.models, policy, rates, self.kv_cache_bytes, green_contexts=self.green_contexts)
        with engine:
            records, makespan = replay(engine, requests, prompts, **replay_kw)
        compute = engine.executor.compute.model_dump()  # how its shares ran: threads, green contexts or streams
        del engine  # its KV cache goes before the next policy allocates one
        return summarize(records, makespan) | {"compute": compute}

    def holds(self, policy: str, spec: WorkloadSpec) -> bool:
        """Whether ``policy`` meets ≥ 99 % SLO attainment on ``spec``'s workload (stops early on failure)."""
        requests = fit_to_models(workload.generate(spec), self.models)
        if not requests:
            return True
        allowed = math.floor((1 - TARGET_ATTAINMENT) * len(requests) + 1e-9)
        rates = workload.popularity_rates(spec.models, spec.rate, spec.alpha)
        deadline = 2 * max(spec.duration_s or 0.0, requests[-1].arrival_s)
        result = self.run(policy, requests, rates, deadline_s=deadline, max_misses=allowed)
        return result["slo_attainment"] >= TARGET_ATTAINMENT


def fit_to_models(requests: list[RequestSpec], models: dict[str, Any]) -> list[RequestSpec]:
    """Check every request names a served model, and cut lengths to fit each model's context."""
    out = []
    for r in requests:
        if r.model not in models:
            raise ValueError(f"request {r.id} is for model {r.model!r}; benched models: {', '.join(models)}")
        room = models[r.model].spec.max_position - 1
        if r.prompt_tokens + r.output_tokens > room:
            prompt = min(r.prompt_tokens, room // 2)
            r = replace(r, prompt_tokens=prompt, output_tokens=min(r.output_tokens, room - prompt))
        out.append(r)
    return out


def search_max_rate(
    holds: Callable[[float], bool], start: float, *, probes: int = 5, bisections: int = 2
) -> float:
    """The highest rate for which ``holds(rate)``: doubling (or halving) from ``start``, then bisection.

    Returns 0.0 if no probed rate holds, and the largest probed rate if
    every one did (a lower bound then).
    """
    lo, hi = 0.0, math.inf
    rate = start
    for _ in range(probes):
        if holds(rate):
            lo = rate
        else:
            hi = rate
        if hi == math.inf:
            rate *= 2
        elif lo == 0.0:
            rate /= 2
        else:
            break
    if lo == 0.0 or hi == math.inf:
        return lo
    for _ in range(bisections):
        mid = (lo + hi) / 2
        if holds(mid):
            lo = mid
        else:
            hi = mid
    return lo


def run_mux_bench(
    model_paths: dict[str, Path],
    *,
    policies: tuple[str, ...] = DEFAULT_POLICIES,
    rate: float = DEFAULT_RATE,
    duration_s: float = DEFAULT_DURATION_S,
    alpha: float = DEFAULT_ALPHA,
    length_scale: float = DEFAULT_LENGTH_SCALE,
    slo_scale: float = DEFAULT_SLO_SCALE,
    seed: int = 0,
    dtype: str = DEFAULT_DTYPE,
    quantization: str = "none",
    requests: list[RequestSpec] | None = None,
    save_workload: Path | None = None,
    find_max_rate: bool = False,
    search_duration_s: float = SEARCH_DURATION_S,
    kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES,
    drain_s: float | None = None,
    progress: Progress | None = None,
    device: str = "cpu",
    green_contexts: bool = True,
) -> dict[str, Any]:
    """Run the bench; one JSON-ready dict (see the module docstring for the figures).

    ``requests`` replays a given workload instead of generating one (its
    models must be among ``model_paths``). ``drain_s`` bounds the time after
    the last arrival (default: ``duration_s``); unfinished requests then
    count as SLO misses. ``device`` is the unit's (``cuda``: its compute
    shares are green contexts, ``engine/executor.py``); a model path
    ``random:NAME`` is a random-weight model made there (``models.synthetic``).
    """
    from muxd.models.loader import load_model
    from muxd.sched import POLICIES

    say = progress or (lambda _msg: None)
    unknown = [p for p in policies if p not in POLICIES]
    if not policies or unknown:
        raise ValueError(f"unknown policy {', '.join(unknown) or '(none given)'}; choose from {', '.join(POLICIES)}")
    strangers = sorted({r.model for r in requests or ()} - set(model_paths))
    if strangers:
        raise ValueError(f"the workload names models not benched: {', '.join(strangers)}; "
                         f"benched: {', '.join(model_paths)} (give them with --models NAME=PATH)")
    spec = WorkloadSpec(tuple(model_paths), rate, duration_s, alpha=alpha, length_scale=length_scale, seed=seed)
    models = {}
    for name, path in model_paths.items():
        say(f"loading {name}")
        models[name] = load_model(path, dtype, device, quantization=quantization)
    solo = {}
    for name, loaded in models.items():
        say(f"measuring {name} served alone")
        solo[name] = measure_solo(loaded)
    bench = MuxBench(models, solo, slo_scale, kv_cache_bytes, prompt_seed=seed, green_contexts=green_contexts)

    if requests is None:
        requests = workload.generate(spec)
        rates = workload.popularity_rates(spec.models, rate, alpha)
    else:
        rates = workload.observed_rates(requests, tuple(model_paths))
    requests = workload.with_slos(fit_to_models(requests, models), solo, slo_scale)
    if save_workload is not None:
        workload.save(save_workload, requests)
    last_arrival = max((r.arrival_s for r in requests), default=0.0)
    deadline = last_arrival + (duration_s if drain_s is None else drain_s)

    results: dict[str, dict[str, Any]] = {}
    for policy in policies:
        say(f"replaying {len(requests)} requests under {policy}")
        results[policy] = bench.run(policy, requests, rates, deadline_s=deadline)
    if find_max_rate:
        for policy in policies:

            def probe(r: float, policy: str = policy) -> bool:
                say(f"{policy}: does {r:.2f} req/s hold {TARGET_ATTAINMENT:.0%} SLO attainment?")
                return bench.holds(policy, replace(spec, rate=r, duration_s=search_duration_s))

            results[policy]["max_rate_req_s"] = search_max_rate(probe, rate / 2)

    return {**_report(bench, results, model_paths, rates, requests, spec, dtype, find_max_rate), "device": device}


def _report(bench, results, model_paths, rates, requests, spec, dtype, find_max_rate) -> dict[str, Any]:
    adbs, solo = results.get("adbs", {}), bench.solo
    report: dict[str, Any] = {
        "dtype": dtype,
        "cpu": cpu_isa.describe(),
        "slo_scale": bench.slo_scale,
        "target_attainment": TARGET_ATTAINMENT,
        "models": {
            name: {
                "path": str(model_paths[name]),
                "weight_bytes": loaded.weight_bytes,
                "plan": loaded.plan.label,
                "plan_notes": list(loaded.plan.reasons),
                "rate_req_s": rates[name],
                "solo_ttft_base_s": solo[name].ttft_base_s,
                "solo_ttft_per_token_s": solo[name].ttft_per_token_s,
                "solo_tpot_s": solo[name].tpot_s,
            }
            for name, loaded in bench.models.items()
        },
        "workload": {
            "requests": len(requests),
            "rate_req_s": sum(rates.values()),
            "duration_s": max((r.arrival_s for r in requests), default=0.0),
            "alpha": spec.alpha,
            "length_scale": spec.length_scale,
            "seed": spec.seed,
            "mean_prompt_tokens": sum(r.prompt_tokens for r in requests) / max(len(requests), 1),
            "mean_output_tokens": sum(r.output_tokens for r in requests) / max(len(requests), 1),
        },
        "policies": results,
    }
    for base in BASELINES:
        other = results.get(base, {})
        report[f"ratio_throughput_vs_{base}"] = ratio(adbs.get("throughput_req_s"), other.get("throughput_req_s"))
        report[f"ratio_tok_s_vs_{base}"] = ratio(adbs.get("throughput_tok_s"), other.get("throughput_tok_s"))
    if find_max_rate:
        best_base = max((results[b]["max_rate_req_s"] for b in BASELINES if b in results), default=None)
        report["ratio_max_rate_vs_best_baseline"] = ratio(adbs.get("max_rate_req_s"), best_base)
    return report
