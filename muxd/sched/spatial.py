"""Spatial partitioning: each model a fixed, dedicated share of compute and pool.

The MuxServe paper's spatial baseline (one vLLM per model on its own
devices), as a policy of the same unit. The unit's compute slots are split
into fixed partitions; every model is pinned to one, the most popular
models first onto the least loaded partition; inside a partition the models
take turns FCFS. KV quotas are fixed at ``rate x pages per token`` and
never adapt: a busy model cannot use memory an idle one leaves free.
"""

from __future__ import annotations

from muxd.core.job import Job
from muxd.sched.quota import initial_quotas
from muxd.sched.temporal import TemporalScheduler


class SpatialScheduler(TemporalScheduler):
    """Invariant: at most one job in flight per partition, on that partition's slots."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.partitions: list[tuple[int, list[str]]] | None = None

    def models_changed(self) -> None:
        """Partitions and fixed quotas are made afresh for the models now served."""
        self.partitions = None

    def _partition(self) -> list[tuple[int, list[str]]]:
        rates = {m: self.config.rates.get(m, 1.0) for m in self.models}
        n = min(self.config.compute_slots, len(rates))
        slots = [self.config.compute_slots // n + (1 if i < self.config.compute_slots % n else 0) for i in range(n)]
        members: list[list[str]] = [[] for _ in range(n)]
        load = [0.0] * n
        for model in sorted(rates, key=lambda m: -rates[m]):
            i = min(range(n), key=lambda j: (load[j] / slots[j], j))
            members[i].append(model)
            load[i] += rates[model]
        weights = {m: rates[m] * self.kv.pages_per_block[m] for m in rates}
        for model, quota in initial_quotas(self.kv.pool.total, weights).items():
            self.kv.pool.set_quota(model, quota)
        return list(zip(slots, members))

    def fits_alone(self, seq, upto: int) -> bool:
        """A model's requests must fit its own fixed share of the pool."""
        need = self.kv.pages_for_tokens(seq.model, upto)
        return need <= self.kv.pool.total and (self.partitions is None or need <= self.kv.pool.quota(seq.model))

    def schedule(self, now: float) -> list[Job]:
        if self.partitions is None:
            self.partitions = self._partition()
        busy = {job.model for job in self.in_flight.values()}
        jobs = []
        for slots, models in self.partitions:
            if busy.intersection(models):
                continue
            job = self.pick_fcfs(models, slots, enforce_quota=True)
            if job is not None:
                jobs.append(job)
        return jobs
