"""A fake runner and helpers: the scheduler is tested without torch or a clock."""

from __future__ import annotations

import pytest

from muxd.core.job import Job, JobResult
from muxd.core.kv_manager import KVManager
from muxd.core.pages import PagePool
from muxd.core.sequence import SamplingParams, Sequence
from muxd.sched import POLICIES, SchedulerConfig

EOS = 0


def fake_token(seq: Sequence) -> int:
    """Deterministic in the sequence's content, as greedy decoding is."""
    return (sum(seq.token_ids) * 31 + seq.num_tokens) % 97 + 1


def run_job(job: Job) -> JobResult:
    result = JobResult(job)
    for c in job.chunks:
        if c.samples:
            result.tokens[c.seq.seq_id] = fake_token(c.seq)
    return result


class Harness:
    def __init__(
        self, pages: int, page_tokens: int = 4, models: dict[str, int] | None = None, policy: str = "temporal", **cfg
    ):
        self.pool = PagePool(pages)
        self.kv = KVManager(self.pool, page_tokens)
        self.sched = POLICIES[policy](self.kv, SchedulerConfig(**cfg))
        for name, pages_per_block in (models or {"a": 2, "b": 3}).items():
            self.kv.add_model(name, pages_per_block)
            self.sched.add_model(name)
        self.now = 0.0
        self.jobs: list[Job] = []

    def add(self, seq_id: str, model: str, prompt_len: int, max_tokens: int = 4, **params) -> Sequence:
        self.now += 1.0
        seq = Sequence(
            seq_id, model, list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens, **params),
            arrival=self.now, eos_token_ids=(EOS,),
        )
        self.sched.add(seq)
        return seq

    def launch(self) -> list[Job]:
        """Jobs the policy starts now; they stay in flight until ``finish``."""
        jobs = self.sched.schedule(self.now)
        self.jobs.extend(jobs)
        return jobs

    def finish(self, job: Job) -> None:
        self.sched.complete(run_job(job))
        self.pool.check_integrity()

    def step(self) -> list[Job]:
        jobs = self.launch()
        for job in jobs:
            self.finish(job)
        self.pool.check_integrity()
        return jobs

    def drain(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            if not self.sched.has_work:
                return
            self.now += 0.01
            self.step()
        raise AssertionError("the scheduler did not finish its work")


@pytest.fixture
def harness():
    return Harness
