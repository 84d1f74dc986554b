"""What one unit is expected to achieve with a set of models and decode shares: the planner's objective.

A unit of ``tp`` devices serves models m with decode shares s_m (Σ s_m ≤ 1).
From the cost model and the workload's lengths (a fixed sample of
ShareGPT-like prompt and output lengths, ``Lengths``), per model:

- **Memory.** KV pool = tp × device memory − weights − reserves (runtime and
  peak activations of a prefill per model per device). The pool is pages of
  ``page_tokens`` tokens of one KV head of one layer (``core/pages.py``),
  sized for the widest head among the unit's models; a model's token takes
  ``layers × kv_heads / page_tokens`` pages. Each model is first given room
  for one longest request; the rest is split ∝ rate × pages per request
  (MuxServe's rule). A unit that cannot hold every model's longest request
  does not fit (``evaluate`` returns None).
- **Prefill.** Prefills run one at a time at ``prefill_share`` and stall the
  unit's decodes (ADBS gives them priority): the fraction of time spent in
  prefill is u = Σ X_m E[S_m] over the served rates X_m and prefill times
  S_m, and a prefill waits W = Σ X_m E[S_m²] / (2 (1 − u)) in the queue
  (M/G/1, Pollaczek–Khinchine).
- **Decode.** A batch of B sequences steps in d_m(s_m, B, c_m) seconds, c_m
  the mean context over a request's decode steps (E[p·o + o²/2] / E[o]),
  so it finishes X = B (1 − u) / (E[o] d_m) requests/s. B is the smallest
  batch that carries the rate, at most what the KV quota holds (mean
  request length) and ``max_batch``; if even that falls short, X < rate.
- **SLO.** A request of p prompt and o output tokens takes W + S_m(p) +
  (o − 1) d_m / (1 − u); it is within SLO when that is at most
  ``slo_scale`` × its latency alone (at its smallest tensor-parallel
  degree, whole device, batch 1). Attainment is the fraction of the sample
  within SLO, times X / rate (a request not served is not within SLO).

The planner maximises goodput = Σ rate_m × attainment_m (requests/s within
SLO), then throughput Σ X_m.

**Time slices** (``time_slices`` > 1, the local planner's CPU plans): a
device whose smallest share is a large fraction (one of a CPU's two cores
is half of it) cannot give each of three models a share of its own, but
the executor runs more models than it has slots by letting them take
turns. A share of 1/k of the smallest measured one is then offered too,
k = 2..time_slices: the model's jobs hold the smallest share 1/k of the
time, so a step takes k times that share's (no extrapolation of the grid,
which assumes the share's compute is its own all the time). Estimates are memoised: placement asks for the
same unit many times across groupings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from muxd.placement.cluster import GiB, Device
from muxd.placement.cost_model import CostModel
from muxd.placement.model_spec import ModelSpec
from muxd.workload import WorkloadSpec, generate

MAX_PREFILL_UTILISATION = 0.95  # beyond it the prefill queue grows without bound: serve less


@dataclass(frozen=True)
class Lengths:
    """A fixed sample of (prompt, output) token counts: the workload's real lengths, not just their means."""

    prompts: np.ndarray
    outputs: np.ndarray

    @classmethod
    def sharegpt(cls, n: int = 512, seed: int = 0, length_scale: float = 1.0) -> Lengths:
        """``n`` requests of ``muxd.workload``'s ShareGPT-like distribution (means ~161 in, ~338 out)."""
        reqs = generate(WorkloadSpec(models=("m",), rate=1.0, duration_s=None, num_requests=n, seed=seed,
                                     length_scale=length_scale))
        return cls(np.array([r.prompt_tokens for r in reqs], float), np.array([r.output_tokens for r in reqs], float))

    @property
    def mean_prompt(self) -> float:
        return float(self.prompts.mean())

    @property
    def mean_output(self) -> float:
        return float(self.outputs.mean())

    @property
    def decode_context(self) -> float:
        """Mean context over all decode steps: a request of p, o spends o steps at p + o/2 on average."""
        return float((self.prompts * self.outputs + self.outputs**2 / 2).sum() / self.outputs.sum())

    @property
    def longest(self) -> int:
        return int((self.prompts + self.outputs).max())


@dataclass(frozen=True)
class ModelEstimate:
    """One model's expected figures on a unit (see the module's docstring)."""

    spec: ModelSpec
    share: float
    quota_pages: int
    quota_bytes: int
    batch: int
    served_rps: float
    attainment: float
    mean_latency_s: float

    @property
    def goodput(self) -> float:
        return self.spec.rate * self.attainment

    @property
    def meets_rate(self) -> bool:
        return self.served_rps >= self.spec.rate * 0.999

    @property
    def meets_slo(self) -> bool:
        return self.attainment >= self.spec.slo_goal


@dataclass(frozen=True)
class UnitEstimate:
    tp: int
    weight_bytes: int
    reserve_bytes: int
    kv_bytes: int
    page_bytes: int
    models: tuple[ModelEstimate, ...]
    goodput: float = field(init=False)
    served: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "goodput", sum(m.goodput for m in self.models))
        object.__setattr__(self, "served", sum(m.served_rps for m in self.models))


@dataclass
class _Prefill:
    each: np.ndarray  # seconds of each sample request's prefill
    mean: float
    mean_sq: float


class Estimator:
    """Memoised unit estimates for one cost model, device, workload lengths and pool layout."""

    def __init__(self, costs: CostModel, device: Device, lengths: Lengths | None = None, *, page_tokens: int = 16,
                 prefill_share: float = 1.0, max_batch: int = 256, max_prefill_tokens: int = 2048,
                 runtime_bytes: int = 2 * GiB, time_slices: int = 1) -> None:
        self.costs, self.device = costs, device
        self.lengths = lengths or Lengths.sharegpt()
        self.page_tokens, self.prefill_share, self.max_batch = page_tokens, prefill_share, max_batch
        self.max_prefill_tokens, self.runtime_bytes = max_prefill_tokens, runtime_bytes
        self.time_slices = time_slices
        self._context = self.lengths.decode_context
        self._units: dict[tuple, UnitEstimate | None] = {}
        self._prefill: dict[tuple[str, int], _Prefill] = {}
        self._solo: dict[str, np.ndarray] = {}
        self._steps: dict[tuple[str, int, float, int], float] = {}

    # -- per-model figures ---------------------------------------------------
    def reserve_bytes(self, spec: ModelSpec, tp: int) -> int:
        """Runtime (CUDA context, allocator slack) and a prefill's peak activations, per device."""
        tokens = self.max_prefill_tokens
        activations = tokens * (2 * spec.intermediate + 4 * spec.hidden) * spec.dtype_bytes // tp
        logits = self.max_batch * spec.vocab * 4
        return self.runtime_bytes + activations + logits

    def tp_degrees(self, spec: ModelSpec, sizes: Sequence[int]) -> list[int]:
        """Tensor-parallel degrees among ``sizes`` the cost model knows and whose unit holds the model alone."""
        known = set(self.costs.tp_degrees(spec.costs))
        return [tp for tp in sizes if tp in known and self.evaluate(tp, ((spec, 1.0),)) is not None]

    def shares(self, spec: ModelSpec, tp: int) -> list[float]:
        """The decode shares the cost model measured for ``spec`` at ``tp`` (and their time slices), ascending."""
        measured = list(self.costs.grids(spec.costs, tp)[1].shares)
        return [measured[0] / k for k in range(self.time_slices, 1, -1)] + measured

    def prefill(self, spec: ModelSpec, tp: int) -> _Prefill:
        key = (spec.costs, tp)
        if key not in self._prefill:
            each = np.array([self.costs.prefill_s(spec.costs, tp, self.prefill_share, 1, p)
                             for p in self.lengths.prompts])
            self._prefill[key] = _Prefill(each, float(each.mean()), float((each**2).mean()))
        return self._prefill[key]

    def solo_latency(self, spec: ModelSpec) -> np.ndarray:
        """Each sample request's latency served alone: smallest tp that holds it, whole device, batch 1."""
        if spec.costs not in self._solo:
            tps = [tp for tp in self.costs.tp_degrees(spec.costs) if self._fits_alone(spec, tp)]
            if not tps:
                raise ValueError(f"model {spec.name!r} fits no tensor-parallel degree the cost model has "
                                 f"({self.costs.tp_degrees(spec.costs)}) on {self.device.kind}")
            tp, lp = tps[0], self.lengths
            steps = np.array([self.costs.decode_s(spec.costs, tp, 1.0, 1, p + o / 2)
                              for p, o in zip(lp.prompts, lp.outputs, strict=True)])
            prefill = np.array([self.costs.prefill_s(spec.costs, tp, 1.0, 1, p) for p in lp.prompts])
            self._solo[spec.costs] = prefill + (lp.outputs - 1) * steps
        return self._solo[spec.costs]

    def step_s(self, spec: ModelSpec, tp: int, share: float, batch: int) -> float:
        key = (spec.costs, tp, share, batch)
        if key not in self._steps:
            smallest = self.costs.grids(spec.costs, tp)[1].shares[0]
            if share < smallest and self.time_slices > 1:  # a time slice of the smallest share
                step = self.costs.decode_s(spec.costs, tp, smallest, batch, self._context) * smallest / share
            else:
                step = self.costs.decode_s(spec.costs, tp, share, batch, self._context)
            self._steps[key] = step
        return self._steps[key]

    def pages_per_token(self, spec: ModelSpec) -> float:
        return spec.layers * spec.kv_heads / self.page_tokens

    def _fits_alone(self, spec: ModelSpec, tp: int) -> bool:
        free = tp * (self.device.memory_bytes - self.reserve_bytes(spec, tp)) - spec.weight_bytes
        return free >= spec.kv_bytes_per_token * self.lengths.longest

    # -- a unit ---------------------------------------------------------------
    def evaluate(self, tp: int, members: tuple[tuple[ModelSpec, float], ...]) -> UnitEstimate | None:
        """The unit of ``tp`` devices serving ``members`` (model, decode share); None if it does not fit."""
        key = (tp, tuple((m.name, m.rate, s) for m, s in members))
        if key not in self._units:
            self._units[key] = self._evaluate(tp, members)
        return self._units[key]

    def _evaluate(self, tp: int, members: tuple[tuple[ModelSpec, float], ...]) -> UnitEstimate | None:
        specs = [m for m, _ in members]
        weights = sum(m.weight_bytes for m in specs)
        reserve = tp * sum(self.reserve_bytes(m, tp) for m in specs)
        kv = tp * self.device.memory_bytes - weights - reserve
        page_bytes = 2 * self.page_tokens * max(m.head_dim * m.dtype_bytes for m in specs)
        quotas = self._quotas(specs, kv // page_bytes if kv > 0 else 0)
        if quotas is None:
            return None
        lp = self.lengths
        prefills = [self.prefill(m, tp) for m in specs]
        offered = [m.rate for m in specs]
        u = sum(x * p.mean for x, p in zip(offered, prefills, strict=True))
        if u > MAX_PREFILL_UTILISATION:  # prefill alone saturates the unit: serve each model less
            offered = [x * MAX_PREFILL_UTILISATION / u for x in offered]
        served, batches = list(offered), [0] * len(specs)
        for _ in range(2):  # once at the offered rates, once at what decode can serve
            u = sum(x * p.mean for x, p in zip(served, prefills, strict=True))
            for i, ((m, share), q) in enumerate(zip(members, quotas, strict=True)):
                per_request = math.ceil((lp.mean_prompt + lp.mean_output) / self.page_tokens) * m.layers * m.kv_heads
                most = max(1, min(self.max_batch, q // per_request))
                batches[i], served[i] = self._batch(m, tp, share, most, offered[i], 1 - u)
        wait = sum(x * p.mean_sq for x, p in zip(served, prefills, strict=True)) / (2 * (1 - u))
        models = []
        for (m, share), q, b, x, p in zip(members, quotas, batches, served, prefills, strict=True):
            step = self.step_s(m, tp, share, b) / (1 - u)
            latency = wait + p.each + (lp.outputs - 1) * step
            within = float(np.mean(latency <= m.slo_scale * self.solo_latency(m))) if b else 0.0
            attainment = within * (x / m.rate if m.rate > 0 else 1.0)
            models.append(ModelEstimate(m, share, q, q * page_bytes, b, x, min(1.0, attainment),
                                        float(latency.mean())))
        return UnitEstimate(tp, weights, reserve, kv, page_bytes, tuple(models))

    def _quotas(self, specs: Sequence[ModelSpec], pages: int) -> list[int] | None:
        """Pages per model: one longest request each, the rest ∝ rate × pages per mean request."""
        need = [math.ceil(self.lengths.longest / self.page_tokens) * m.layers * m.kv_heads for m in specs]
        left = pages - sum(need)
        if left < 0:
            return None
        weights = [max(m.rate, 1e-9) * self.pages_per_token(m) for m in specs]
        total = sum(weights)
        return [n + int(left * w / total) for n, w in zip(need, weights, strict=True)]

    def _batch(self, m: ModelSpec, tp: int, share: float, most: int, rate: float, free: float) -> tuple[int, float]:
        """The smallest batch (≤ most) whose decode serves ``rate``, and what it serves."""
        out = self.lengths.mean_output

        def serves(b: int) -> float:
            return b * free / (out * self.step_s(m, tp, share, b))

        if rate <= 0:
            return 0, 0.0
        if serves(most) < rate:
            return most, serves(most)
        lo, hi = 1, most
        while lo < hi:  # decode throughput grows with the batch (a step grows less than linearly)
            mid = (lo + hi) // 2
            if serves(mid) >= rate:
                hi = mid
            else:
                lo = mid + 1
        return lo, rate
