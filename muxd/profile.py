"""``muxd profile``: measure a model's prefill and decode costs on this device, through the serving engine.

The cost model (``placement/cost_model.py``) is only as good as what feeds
it, so a profile is measured by the code that serves: the model is loaded as
a unit loads it (``load_model``, same dtype, quantization and kernel plan),
put in an ``LLMEngine`` of its own with the unit's thread count, and every
job runs through that engine's ``Executor`` (a CPU job of ``k`` slots on the
thread of its first slot, a decode's small ops on one thread and its
matmuls on ``k``) and ``ModelRunner`` (block tables, the pool's pages,
sampling). Only the scheduler is left out: the jobs are built here, at the
batch, length and share of each grid point, with the share rule of
``Scheduler.launch`` (slots / the executor's slots).

What is measured, per compute share the executor offers (CPU: every number
of cores up to 4, then powers of two and the whole; CUDA: the share levels
1, 2, 4, 8 and 10 of 10):

- one prefill job of ``batch`` prompts of ``length`` tokens each;
- one decode step of ``batch`` sequences of ``context`` tokens each (the
  pages are allocated, not prefilled: the kernels read every page whatever
  it holds, so the time is the same);
- ``colocated``: a prefill of the model on one part of the slots beside a
  decode of it on the rest, each resubmitted as soon as it ends, so that
  every counted job ran wholly beside the other kind, and the same two jobs
  alone, back to back;
- memory: the weights' bytes as loaded, a KV page's bytes (K and V planes)
  and pages per token of context.

Each grid point is warmed up, then run ``repeats`` times (more, up to
``max_repeats``, while it has taken under ``min_point_s``: a tiny model's
sub-millisecond jobs; fewer, not under ``min_repeats``, once it has taken
``point_budget_s``) and its median latency kept: the runner's own timing of the job
(``JobResult.duration_s``), the figure the engine's stats record when it
serves. Lengths past the model's context are left out (``Grid.fit``).
Timing noise is one-sided and the cost model lowers spikes, but another
process on the machine is not noise: a two-thread job whose second core is
taken runs many times slower (measured: SmolLM2's 16-token prefill, 65 ms
on two quiet cores, 3.9 s beside a one-core busy process). So each point's
measurement is repeated, after a pause, while other processes kept more
than ``OTHER_CORES_LIMIT`` cores busy (``OtherCpu``), and the provenance
says how many points stayed contended.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch

from muxd.config import ModelConfig
from muxd.core.job import Chunk, Job, JobKind
from muxd.core.sequence import SamplingParams, Sequence
from muxd.engine.kv_cache import KVLayout
from muxd.engine.llm_engine import LLMEngine
from muxd.models.loader import LoadedModel, load_model
from muxd.placement.cost_model import (
    ColocatedLatency,
    EngineOverhead,
    LatencyTable,
    MemoryFigures,
    Profile,
    profile_path,
    save_profile,
)
from muxd.provenance import OtherCpu, provenance

T = TypeVar("T")
Progress = Callable[[str, int, int], None]  # (what is being measured, cells done, cells in all)
PAGE_TOKENS = 16  # UnitConfig's default: the page a unit's pool is made of
OVERHEAD_BATCHES = (1, 8)  # decode batches of the engine-overhead loops
OTHER_CORES_LIMIT = 0.3  # cores other processes may keep busy while a point is measured
QUIET_PAUSE_S = 1.0
NAME = "profiled"  # the model's name inside the profiler's engine; never part of a signature
_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True)
class Grid:
    """The points a profile measures, and how often each."""

    name: str
    prefill_batches: tuple[int, ...]
    prefill_lengths: tuple[int, ...]
    decode_batches: tuple[int, ...]
    decode_contexts: tuple[int, ...]
    colocated: tuple[tuple[int, int, int, int], ...]  # (prefill batch, length, decode batch, context)
    warmup: int = 1
    repeats: int = 5  # runs of a point; more, up to max_repeats, while it has taken under min_point_s
    min_repeats: int = 3  # fewer than repeats, not fewer than this, once it has taken point_budget_s
    max_repeats: int = 50
    min_point_s: float = 0.25
    point_budget_s: float = 3.0
    quiet_tries: int = 3  # measurements of a point while other processes hold the cores (see Profiler._quietly)
    overhead_tokens: int = 64  # decode steps of each engine-overhead loop (Profiler.engine_overhead)

    def enough(self, runs: int, spent_s: float) -> bool:
        """Whether a point measured ``runs`` times in ``spent_s`` seconds is done (see the fields)."""
        return runs >= self.max_repeats or (
            runs >= self.repeats and spent_s >= self.min_point_s) or (
            runs >= self.min_repeats and spent_s >= self.point_budget_s)  # fmt: skip

    def fit(self, max_position: int) -> Grid:
        """The grid within a model's context: lengths past ``max_position`` left out (the
        context itself measured instead when none is left), colocated lengths cut to it."""

        def cut(lengths: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(n for n in lengths if n <= max_position) or (max_position,)

        colocated = tuple((pb, min(pn, max_position), db, min(dn, max_position)) for pb, pn, db, dn in self.colocated)
        return replace(self, prefill_lengths=cut(self.prefill_lengths), decode_contexts=cut(self.decode_contexts),
                       colocated=colocated)  # fmt: skip


# Tests and CI: seconds on a tiny model.
QUICK = Grid("quick", (1, 2), (8, 32), (1, 4), (8, 32), ((1, 32, 2, 32),), warmup=1, repeats=3, min_repeats=2,
             max_repeats=3, min_point_s=0.0, point_budget_s=0.5, quiet_tries=1, overhead_tokens=8)  # fmt: skip
# A few minutes per small model on a 2-core CPU: prompts up to a serving
# chunk (512 tokens), decode batches and contexts as the demo's workload
# reaches them, and a short and a long prefill beside a small and a large decode.
DEFAULT = Grid(
    "default",
    prefill_batches=(1, 2, 4),
    prefill_lengths=(16, 64, 128, 256, 512),
    decode_batches=(1, 4, 16, 32),
    decode_contexts=(16, 128, 512, 1024),
    colocated=((1, 128, 1, 256), (1, 128, 16, 256), (1, 512, 1, 256), (1, 512, 16, 256)),
)


# -- naming: what a profile is of, never where it came from ---------------------
def model_shape(loaded: LoadedModel) -> dict[str, str | int | float | bool]:
    """The shape and precision a profile is of, from the model's config and kernel plan (never a path)."""
    spec, plan = loaded.spec, loaded.plan
    windows = sorted({w for w in spec.sliding_windows if w is not None})
    return {
        "model_type": spec.model_type, "layers": spec.num_layers, "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size, "heads": spec.num_heads, "kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim, "vocab_size": spec.vocab_size, "tied_embeddings": spec.tie_word_embeddings,
        "sliding_window": windows[-1] if windows else 0, "weights": plan.weights, "activations": plan.dtype,
        "plan": plan.label,
    }  # fmt: skip


def model_signature(loaded: LoadedModel) -> str:
    """``llama-l30-h576-i1536-a9-kv3-d64-v49152-tied-q8-fp32``: two checkpoints of one shape and
    precision share it, whatever their directories are called."""
    s = model_shape(loaded)
    parts = [str(s["model_type"]), f"l{s['layers']}", f"h{s['hidden_size']}", f"i{s['intermediate_size']}",
             f"a{s['heads']}", f"kv{s['kv_heads']}", f"d{s['head_dim']}", f"v{s['vocab_size']}"]  # fmt: skip
    if s["tied_embeddings"]:
        parts.append("tied")
    if s["sliding_window"]:
        parts.append(f"sw{s['sliding_window']}")
    weights, activations = str(s["weights"]), str(s["activations"])
    parts.append(_SHORT.get(weights, weights))
    if weights != activations:
        parts.append(_SHORT.get(activations, activations))
    return "-".join(parts)


def device_kind(loaded: LoadedModel, slots: int) -> str:
    """``cpu-avx512-vnni-2c`` (the kernels' build and the cores the unit computes on: a share is a
    fraction of them) or ``nvidia-h100-80gb-hbm3`` (the GPU's name)."""
    if loaded.device.type == "cpu":
        return f"cpu-{loaded.plan.kernels}-{slots}c"
    name = torch.cuda.get_device_name(loaded.device)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug if slug.startswith("nvidia") else f"{loaded.device.type}-{slug}"


def share_slots(slots: int, device_type: str) -> list[int]:
    """The shares a profile measures, in the executor's slots: CPU every core count up to 4, then
    powers of two and all of them; CUDA levels 1, 2, 4, 8 and 10 (the cost model interpolates in 1/share)."""
    small = range(1, min(slots, 4) + 1) if device_type == "cpu" else ()
    powers = (1 << i for i in range(slots.bit_length()))
    return sorted({*small, *powers, slots})


def memory_figures(loaded: LoadedModel, page_tokens: int = PAGE_TOKENS) -> MemoryFigures:
    layout = KVLayout.for_models(page_tokens, [(loaded.spec.head_dim, loaded.dtype)])
    return MemoryFigures(
        weight_bytes=loaded.weight_bytes,
        bytes_per_kv_page=2 * layout.page_bytes,  # the K and the V plane of one page
        pages_per_token=loaded.spec.pages_per_block / page_tokens,
    )


# -- measuring -------------------------------------------------------------------
class Profiler:
    """One model in an ``LLMEngine`` of its own, its jobs run through the engine's executor and runner.

    The KV pool is sized for the grid's largest point (a colocated pair
    included), so every point gets its pages; the pages of a point are
    freed after it.
    """

    def __init__(self, loaded: LoadedModel, grid: Grid, *, slots: int | None = None,
                 page_tokens: int = PAGE_TOKENS) -> None:  # fmt: skip
        self.loaded, self.grid, self.page_tokens = loaded, grid, page_tokens
        layout = KVLayout.for_models(page_tokens, [(loaded.spec.head_dim, loaded.dtype)])
        pages = self._pool_pages() + 2  # + the null page, + one spare
        self.engine = LLMEngine({NAME: loaded}, kv_cache_bytes=pages * 2 * layout.page_bytes, page_tokens=page_tokens,
                                cores=slots, prefix_caching=False)  # fmt: skip
        self.executor, self.runner = self.engine.executor, self.engine.runners[NAME]
        self.slots = self.executor.slots
        self._ids = iter(range(1, 1 << 62))
        self.contended = 0  # grid points measured while other processes kept the device busy

    def close(self) -> None:
        self.engine.close()

    def prefill_s(self, slots: int, batch: int, length: int) -> float:
        with self._sequences(batch, length) as seqs:
            job = self._job(JobKind.PREFILL, slots, seqs)
            return self._quietly(lambda: self._median(job))

    def decode_s(self, slots: int, batch: int, context: int) -> float:
        with self._sequences(batch, context) as seqs:
            job = self._job(JobKind.DECODE, slots, seqs)
            return self._quietly(lambda: self._median(job))

    def colocated(self, prefill_slots: int, decode_slots: int, point: tuple[int, int, int, int]) -> ColocatedLatency:
        """A prefill of ``prefill_slots`` beside a decode of ``decode_slots``, then each alone."""
        p_batch, p_length, d_batch, d_context = point
        with self._sequences(p_batch, p_length) as p_seqs, self._sequences(d_batch, d_context) as d_seqs:
            prefill = self._job(JobKind.PREFILL, prefill_slots, p_seqs)
            decode = self._job(JobKind.DECODE, decode_slots, d_seqs)
            prefill_s, decode_s, prefill_alone, decode_alone = self._quietly(
                lambda: (*self._side_by_side(prefill, decode), self._median(prefill), self._median(decode))
            )
        return ColocatedLatency(
            prefill_share=prefill.share, prefill_batch=p_batch, prefill_length=p_length,
            decode_share=decode.share, decode_batch=d_batch, decode_context=d_context,
            prefill_s=prefill_s, decode_s=decode_s, prefill_alone_s=prefill_alone, decode_alone_s=decode_alone,
        )  # fmt: skip

    def engine_overhead(self) -> EngineOverhead:
        """The engine loop's time per job beyond the runner's (``EngineOverhead``): greedy decode loops
        of ``OVERHEAD_BATCHES`` sequences through ``LLMEngine.generate``, their wall time less their jobs'
        own, per job; a line through the two batch sizes."""
        per_job = {}
        for batch in OVERHEAD_BATCHES:
            per_job[batch] = self._quietly(lambda batch=batch: self._loop_overhead(batch))
        small, large = OVERHEAD_BATCHES
        slope = max(0.0, (per_job[large] - per_job[small]) / (large - small))
        return EngineOverhead(per_job_s=max(0.0, per_job[small] - slope * small), per_sequence_s=slope)

    def _loop_overhead(self, batch: int) -> float:
        vocab = self.loaded.spec.vocab_size
        prompts = [[(97 * i + j + 1) % vocab for j in range(8)] for i in range(batch)]
        params = SamplingParams(max_tokens=self.grid.overhead_tokens, ignore_eos=True)
        self.engine.generate(NAME, prompts, params)  # warm-up
        stats = self.engine.stats
        busy, steps, start = stats.busy_s, stats.steps, time.perf_counter()
        self.engine.generate(NAME, prompts, params)
        wall = time.perf_counter() - start
        return (wall - (stats.busy_s - busy)) / max(1, stats.steps - steps)

    # -- parts -------------------------------------------------------------------
    def _quietly(self, measure: Callable[[], T]) -> T:
        """``measure()``, again (up to ``Grid.quiet_tries`` times, a pause between) while other processes
        kept more than ``OTHER_CORES_LIMIT`` cores busy: a two-thread job whose second core another
        process holds runs many times slower (OpenMP's threads wait for each other). The least
        disturbed try is kept; one still over the limit counts in ``contended``."""
        tries: list[tuple[float, T]] = []
        while len(tries) < self.grid.quiet_tries:
            meter = OtherCpu()
            result = measure()
            other = meter.cores()
            tries.append((other, result))
            if other <= OTHER_CORES_LIMIT or len(tries) == self.grid.quiet_tries:
                break
            time.sleep(QUIET_PAUSE_S)
        other, result = min(tries, key=lambda t: t[0])
        self.contended += other > OTHER_CORES_LIMIT
        return result

    def _job(self, kind: JobKind, slots: int, seqs: list[Sequence]) -> Job:
        """A job as ``Scheduler.launch`` makes it: a whole prompt per prefill chunk, the last token per decode chunk."""
        start = (lambda s: 0) if kind is JobKind.PREFILL else (lambda s: s.num_tokens - 1)
        chunks = [Chunk(s, start(s), s.num_tokens) for s in seqs]
        return Job(kind, NAME, chunks, slots / self.slots, next(self._ids), slots)

    def _run(self, job: Job) -> float:
        self.executor.submit(job, self.runner.run)
        (result,) = self.executor.wait()
        return result.duration_s

    def _median(self, job: Job) -> float:
        """Warm-up, then the median of the runs ``Grid.enough`` asks for."""
        for _ in range(self.grid.warmup):
            self._run(job)
        times: list[float] = []
        start = time.perf_counter()
        while not self.grid.enough(len(times), time.perf_counter() - start):
            times.append(self._run(job))
        return statistics.median(times)

    def _side_by_side(self, prefill: Job, decode: Job) -> tuple[float, float]:
        """Both jobs at once, each resubmitted as it ends; the medians of the runs that ended while
        the other kind still ran (each kind's first ``warmup`` runs left out)."""
        grid, jobs = self.grid, {JobKind.PREFILL: prefill, JobKind.DECODE: decode}
        runs = {kind: 0 for kind in jobs}
        times: dict[JobKind, list[float]] = {kind: [] for kind in jobs}
        for job in jobs.values():
            self.executor.submit(job, self.runner.run)
        start, stopping, in_flight = time.perf_counter(), False, len(jobs)
        while in_flight:
            for result in self.executor.wait():
                in_flight -= 1
                kind = result.job.kind
                runs[kind] += 1
                if not stopping and runs[kind] > grid.warmup:
                    times[kind].append(result.duration_s)
                runs_each = min(len(t) for t in times.values())
                stopping = stopping or grid.enough(runs_each, (time.perf_counter() - start) / 2)
                if not stopping:
                    self.executor.submit(result.job, self.runner.run)
                    in_flight += 1
        return statistics.median(times[JobKind.PREFILL]), statistics.median(times[JobKind.DECODE])

    def _pages(self, batch: int, tokens: int) -> int:
        return batch * -(-tokens // self.page_tokens) * self.loaded.spec.pages_per_block

    def _pool_pages(self) -> int:
        """Pages of the grid's largest point: a prefill, a decode, or a colocated pair of both."""
        g = self.grid
        return max(
            *(self._pages(b, n) for b in g.prefill_batches for n in g.prefill_lengths),
            *(self._pages(b, n) for b in g.decode_batches for n in g.decode_contexts),
            *(self._pages(pb, pn) + self._pages(db, dn) for pb, pn, db, dn in g.colocated),
        )

    @contextlib.contextmanager
    def _sequences(self, batch: int, tokens: int) -> Iterator[list[Sequence]]:
        """``batch`` sequences of ``tokens`` prompt tokens each, holding their pages while in use."""
        vocab = self.loaded.spec.vocab_size
        seqs = [Sequence(f"profile-{next(self._ids)}", NAME, [(7919 * i + 31 * j + 1) % vocab for j in range(tokens)])
                for i in range(batch)]  # fmt: skip
        try:
            for seq in seqs:
                if not self.engine.kv.allocate_slots(seq, tokens):
                    raise RuntimeError(f"the profiler's pool has no room for {batch} x {tokens} tokens")
            yield seqs
        finally:
            for seq in seqs:
                self.engine.kv.free(seq)


# -- a whole profile ---------------------------------------------------------------
def grid_cells(grid: Grid, shares: int, colocates: bool) -> int:
    """Grid points a profile measures (for a progress bar)."""
    cells = len(grid.prefill_batches) * len(grid.prefill_lengths) + len(grid.decode_batches) * len(grid.decode_contexts)
    return shares * cells + (len(grid.colocated) if colocates else 0) + 1  # + the engine overhead


def profile_model(loaded: LoadedModel, grid: Grid = DEFAULT, *, slots: int | None = None,
                  progress: Progress | None = None) -> Profile:  # fmt: skip
    """Measure ``loaded`` on its device over ``grid`` (see the module's docstring)."""
    started, meter = time.perf_counter(), OtherCpu()
    grid = grid.fit(loaded.spec.max_position)
    profiler = Profiler(loaded, grid, slots=slots)
    try:
        levels = share_slots(profiler.slots, loaded.device.type)
        split = (profiler.slots - profiler.slots // 2, profiler.slots // 2) if profiler.slots > 1 else None
        tick = _Ticker(progress, grid_cells(grid, len(levels), split is not None))
        prefill = _table(profiler, levels, JobKind.PREFILL, tick)
        decode = _table(profiler, levels, JobKind.DECODE, tick)
        colocated = []
        for point in grid.colocated if split else ():
            tick(f"prefill {point[0]} x {point[1]} beside decode {point[2]} x {point[3]}")
            colocated.append(profiler.colocated(*split, point))
        tick("the engine loop's own time")
        overhead = profiler.engine_overhead()
        tick("done")
    finally:
        profiler.close()
    extra = {"slots": profiler.slots, "page_tokens": PAGE_TOKENS, "grid": grid.name, "warmup": grid.warmup,
             "repeats": grid.repeats, "min_repeats": grid.min_repeats, "max_repeats": grid.max_repeats,
             "min_point_s": grid.min_point_s, "point_budget_s": grid.point_budget_s, "kernel_plan": loaded.plan.describe(),
             "other_cores": round(meter.cores(), 2), "contended_points": profiler.contended,
             "measured_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    return Profile(
        device_kind=device_kind(loaded, profiler.slots),
        model_signature=model_signature(loaded),
        model_shape=model_shape(loaded),
        provenance=provenance(loaded.device, **extra),
        memory=memory_figures(loaded),
        prefill=prefill,
        decode=decode,
        colocated=colocated,
        engine_overhead=overhead,
    )


class _Ticker:
    """Counts measured cells for a progress callback: ``tick(what)`` announces the next one."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, -1

    def __call__(self, what: str) -> None:
        self.done += 1
        if self.progress:
            self.progress(what, self.done, self.total)


def _table(profiler: Profiler, levels: list[int], kind: JobKind, tick: _Ticker) -> LatencyTable:
    """One kind's latencies over ``levels`` (slots) x the grid's batches x lengths."""
    g = profiler.grid
    if kind is JobKind.PREFILL:
        batches, lengths, measure = g.prefill_batches, g.prefill_lengths, profiler.prefill_s
    else:
        batches, lengths, measure = g.decode_batches, g.decode_contexts, profiler.decode_s
    seconds = []
    for k in levels:
        plane = []
        for b in batches:
            row = []
            for n in lengths:
                tick(f"{kind.value} {k}/{profiler.slots} slots, batch {b} x {n}")
                row.append(measure(k, b, n))
            plane.append(row)
        seconds.append(plane)
    shares = [k / profiler.slots for k in levels]
    return LatencyTable(shares=shares, batches=list(batches), lengths=list(lengths), seconds=seconds)


@dataclass(frozen=True)
class Written:
    name: str
    path: Path
    profile: Profile
    seconds: float  # loading and measuring


def profile_models(models: list[ModelConfig], out: Path, *, device: str = "cpu", grid: Grid = DEFAULT,
                   threads: int | None = None, progress: Callable[[str], Progress] | None = None) -> list[Written]:  # fmt: skip
    """Load each model as a unit would (its dtype and quantization, ``threads`` compute threads),
    profile it and write ``out/<device-kind>/<signature>.json``; one model at a time.
    ``progress(name)`` gives each model's progress callback."""
    if threads:
        torch.set_num_threads(threads)  # as a unit process does (unit.build_engine)
    written = []
    for m in models:
        say = progress(m.name) if progress else None
        started = time.perf_counter()
        if say:
            say("loading", 0, 1)
        loaded = load_model(m.path, m.dtype, device, quantization=m.quantization)
        profile = profile_model(loaded, grid, slots=threads, progress=say)
        path = save_profile(profile, profile_path(out, profile.device_kind, profile.model_signature))
        written.append(Written(m.name, path, profile, time.perf_counter() - started))
    return written
