"""The engine loop on a simulated executor: the scheduler is tested without torch or a clock."""

from __future__ import annotations

from collections import Counter

import pytest

from muxd.clock import ManualClock
from muxd.core.job import Job, JobResult
from muxd.core.sequence import SamplingParams, Sequence
from muxd.sched import SchedulerConfig
from muxd.sched.engine_core import EngineCore, build_scheduler
from muxd.sched.sim_executor import SimulatedExecutor, SimulatedRunner
from tests.pool_checks import assert_pool_whole

EOS = 0


def fake_token(seq: Sequence) -> int:
    """Deterministic in the sequence's content, as greedy decoding is."""
    return (sum(seq.token_ids) * 31 + seq.num_tokens) % 97 + 1


RUNNER = SimulatedRunner(fake_token)


def run_job(job: Job) -> JobResult:
    return RUNNER.run(job)


class Harness:
    """``EngineCore`` on a ``SimulatedExecutor`` whose jobs take no time, with
    the time (``now``) moved by the tests; ``launch`` and ``finish`` split a
    step so that a test may hold jobs in flight and end them in any order."""

    def __init__(
        self,
        pages: int,
        page_tokens: int = 4,
        models: dict[str, int] | None = None,
        policy: str = "temporal",
        prefix_caching: bool = True,
        **cfg,
    ):
        models = models or {"a": 2, "b": 3}
        self.sched = build_scheduler(
            policy, pages, page_tokens, models, SchedulerConfig(**cfg), prefix_caching=prefix_caching
        )
        self.kv, self.pool = self.sched.kv, self.sched.kv.pool
        self.clock = ManualClock()
        self.executor = SimulatedExecutor(self.clock)
        self.core = EngineCore(self.sched, self.executor, dict.fromkeys(models, RUNNER), self.clock)
        self.jobs: list[Job] = []
        self.seqs: list[Sequence] = []

    @property
    def now(self) -> float:
        return self.clock.now

    @now.setter
    def now(self, t: float) -> None:
        self.clock.now = t

    def add(
        self, seq_id: str, model: str, prompt_len: int, max_tokens: int = 4, prompt: list[int] | None = None, **params
    ) -> Sequence:
        """Queue a request; prompts are ``1..prompt_len`` unless given, so they share prefixes."""
        self.now += 1.0
        seq = Sequence(
            seq_id, model, prompt or list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens, **params),
            arrival=self.now, eos_token_ids=(EOS,),
        )
        self.core.add_sequence(seq)
        self.seqs.append(seq)
        return seq

    def launch(self) -> list[Job]:
        """Jobs the policy starts now; they stay in flight until ``finish``."""
        jobs = self.core.launch()
        P = self.kv.page_tokens
        for c in (c for job in jobs for c in job.chunks):
            # The runner writes (and first zeroes) blocks from ceil(start / P) on:
            # a shared block must lie entirely below every chunk of its users.
            assert all((i + 1) * P <= c.start for i in c.seq.shared_blocks), "a job would write a shared block"
        self.jobs.extend(jobs)
        return jobs

    def check_prefix_cache(self) -> None:
        """Each cached block counts exactly the sequences that share it, and the
        pool holds each model's private pages plus its in-use blocks once."""
        users = Counter((s.model, s.block_hashes[i]) for s in self.seqs for i in s.shared_blocks)
        for model, blocks in self.kv._blocks.items():
            for h, block in blocks.items():
                assert block.refs == users[(model, h)]
            ppb = self.kv.pages_per_block[model]
            private = sum(len(s.pages) - ppb * len(s.shared_blocks) for s in self.seqs if s.model == model)
            in_use = sum(len(b.pages) for b in blocks.values() if b.refs)
            idle = sum(len(b.pages) for b in blocks.values() if not b.refs)
            assert self.pool.held(model) == private + in_use
            assert self.pool.cached(model) == idle

    def finish(self, job: Job) -> None:
        self.core.complete(self.executor.take(job))
        self.pool.check_integrity()

    def step(self) -> list[Job]:
        """One engine step (the jobs it launched, all of them finished by its end)."""
        jobs = self.launch()
        self.core.collect()
        self.pool.check_integrity()
        return jobs

    def drain(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            if not self.sched.has_work:
                return
            self.now += 0.01
            self.step()
        raise AssertionError("the scheduler did not finish its work")

    def assert_pool_whole(self) -> None:
        assert_pool_whole(self.kv)


@pytest.fixture
def harness():
    return Harness
