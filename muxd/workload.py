"""Seeded multi-model workloads, as MuxServe evaluates with, saved as JSONL.

A workload is a list of requests, each for one of N models, arriving as one
Poisson process whose model is drawn by popularity: the k-th most popular
model (k = 1, 2, ...) gets a rate ∝ k^-alpha, normalised so that the rates add
up to ``rate``. That is the same as N independent Poisson processes, one per
model. Prompt and output lengths follow a ShareGPT-like distribution
(lognormal, means of about 161 prompt and 338 output tokens, as in the
ShareGPT traces MuxServe uses), shrunk by ``length_scale`` for CPU runs and
clipped to ``[1, max * length_scale]``.

Each request's SLO is ``slo_scale`` times its latency when its model is served
alone (the paper's definition); ``SoloLatency`` is that linear model, filled
in by whoever measured it (``muxd bench mux``).

Pure Python (``random.Random``): no torch, no numpy, the same workload from the
same spec on every machine.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

# ShareGPT, as MuxServe and vLLM's benchmarks sample it: mean lengths in
# tokens, and a spread (sigma of the lognormal) close to the traces' long tail.
SHAREGPT_PROMPT_MEAN = 161.0
SHAREGPT_OUTPUT_MEAN = 338.0
SHAREGPT_PROMPT_SIGMA = 1.0
SHAREGPT_OUTPUT_SIGMA = 0.9
SHAREGPT_MAX_PROMPT = 1024  # vLLM's sampler drops longer prompts
SHAREGPT_MAX_OUTPUT = 1024


@dataclass(frozen=True)
class WorkloadSpec:
    """What to generate. ``models`` are in popularity order, most popular first.

    Give ``duration_s`` (arrivals in ``[0, duration_s)``) or ``num_requests``
    (exactly that many); with both, whichever ends first.
    """

    models: tuple[str, ...]
    rate: float  # requests per second, all models together
    duration_s: float | None = 60.0
    num_requests: int | None = None
    alpha: float = 1.3
    length_scale: float = 1.0
    prompt_mean: float = SHAREGPT_PROMPT_MEAN
    output_mean: float = SHAREGPT_OUTPUT_MEAN
    prompt_sigma: float = SHAREGPT_PROMPT_SIGMA
    output_sigma: float = SHAREGPT_OUTPUT_SIGMA
    max_prompt_tokens: int = SHAREGPT_MAX_PROMPT
    max_output_tokens: int = SHAREGPT_MAX_OUTPUT
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("a workload needs at least one model")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"model names repeat: {', '.join(self.models)}")
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0 requests/s, got {self.rate}")
        if self.duration_s is None and self.num_requests is None:
            raise ValueError("give a duration_s or a num_requests")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if self.num_requests is not None and self.num_requests < 0:
            raise ValueError(f"num_requests must be >= 0, got {self.num_requests}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.length_scale <= 0:
            raise ValueError(f"length_scale must be > 0, got {self.length_scale}")


@dataclass(frozen=True)
class RequestSpec:
    """One request of a workload: which model, when (seconds from the start), how long."""

    id: str
    model: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    slo_s: float | None = None  # end-to-end latency target; None until measured


@dataclass(frozen=True)
class SoloLatency:
    """A model's latency when served alone: ``ttft(p) = a + b·p``, then ``tpot`` per further token."""

    ttft_base_s: float
    ttft_per_token_s: float
    tpot_s: float

    def ttft(self, prompt_tokens: int) -> float:
        return self.ttft_base_s + self.ttft_per_token_s * prompt_tokens

    def latency(self, prompt_tokens: int, output_tokens: int) -> float:
        """End to end: the first token comes with the prefill, each further one costs a decode step."""
        return self.ttft(prompt_tokens) + self.tpot_s * max(output_tokens - 1, 0)


def popularity_rates(models: Sequence[str], rate: float, alpha: float) -> dict[str, float]:
    """Power-law rates: the k-th model (1-based) gets ``rate · k^-alpha / Σ_j j^-alpha``."""
    weights = [k**-alpha for k in range(1, len(models) + 1)]
    total = sum(weights)
    return {m: rate * w / total for m, w in zip(models, weights, strict=True)}


def observed_rates(requests: Sequence[RequestSpec], models: Sequence[str]) -> dict[str, float]:
    """Per-model request rates of a given workload (at least one request's worth each)."""
    span = max((r.arrival_s for r in requests), default=0.0) or 1.0
    return {m: max(sum(r.model == m for r in requests), 1) / span for m in models}


def generate(spec: WorkloadSpec) -> list[RequestSpec]:
    """The workload of ``spec``, in arrival order; equal specs give equal lists."""
    rng = random.Random(spec.seed)
    rates = popularity_rates(spec.models, spec.rate, spec.alpha)
    weights = list(rates.values())
    prompt = _LengthSampler(spec.prompt_mean, spec.prompt_sigma, spec.max_prompt_tokens, spec.length_scale)
    output = _LengthSampler(spec.output_mean, spec.output_sigma, spec.max_output_tokens, spec.length_scale)
    requests: list[RequestSpec] = []
    t = 0.0
    while spec.num_requests is None or len(requests) < spec.num_requests:
        t += rng.expovariate(spec.rate)
        if spec.duration_s is not None and t >= spec.duration_s:
            break
        model = rng.choices(spec.models, weights)[0]
        requests.append(
            RequestSpec(f"r{len(requests):06d}", model, round(t, 6), prompt.sample(rng), output.sample(rng))
        )
    return requests


class _LengthSampler:
    """Lognormal with the given mean (before clipping), scaled, clipped to ``[1, max · scale]``."""

    def __init__(self, mean: float, sigma: float, maximum: int, scale: float) -> None:
        self.mu = math.log(mean * scale) - sigma**2 / 2  # E[lognormal] = exp(mu + sigma²/2)
        self.sigma = sigma
        self.maximum = max(1, round(maximum * scale))

    def sample(self, rng: random.Random) -> int:
        return min(max(1, round(rng.lognormvariate(self.mu, self.sigma))), self.maximum)


def with_slos(
    requests: Iterable[RequestSpec], solo: dict[str, SoloLatency], slo_scale: float
) -> list[RequestSpec]:
    """Requests with ``slo_s = slo_scale × solo latency``, where they have no SLO yet."""
    if slo_scale <= 0:
        raise ValueError(f"slo_scale must be > 0, got {slo_scale}")
    out = []
    for r in requests:
        if r.slo_s is None:
            if r.model not in solo:
                raise KeyError(f"no solo latency for model {r.model!r}; measured: {', '.join(solo)}")
            r = replace(r, slo_s=slo_scale * solo[r.model].latency(r.prompt_tokens, r.output_tokens))
        out.append(r)
    return out


def save(path: str | Path, requests: Iterable[RequestSpec]) -> None:
    """One JSON object per line; ``slo_s`` only where it is set."""
    lines = []
    for r in requests:
        row = asdict(r)
        if row["slo_s"] is None:
            del row["slo_s"]
        lines.append(json.dumps(row))
    Path(path).write_text("".join(line + "\n" for line in lines))


def load(path: str | Path) -> list[RequestSpec]:
    """Read a JSONL workload, sorted by arrival; says which line is wrong if one is."""
    requests = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            r = RequestSpec(
                id=str(row["id"]),
                model=str(row["model"]),
                arrival_s=float(row["arrival_s"]),
                prompt_tokens=int(row["prompt_tokens"]),
                output_tokens=int(row["output_tokens"]),
                slo_s=None if row.get("slo_s") is None else float(row["slo_s"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a workload request ({e!r}); expected id, model, "
                             "arrival_s, prompt_tokens, output_tokens and optionally slo_s") from None
        if r.prompt_tokens < 1 or r.output_tokens < 1 or r.arrival_s < 0:
            raise ValueError(f"{path}:{n}: token counts must be >= 1 and arrival_s >= 0")
        requests.append(r)
    return sorted(requests, key=lambda r: r.arrival_s)
