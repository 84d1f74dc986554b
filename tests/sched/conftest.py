"""A fake runner and helpers: the scheduler is tested without torch or a clock."""

from __future__ import annotations

from collections import Counter

import pytest

from muxd.core.job import Job, JobResult
from muxd.core.kv_manager import KVManager
from muxd.core.pages import PagePool
from muxd.core.sequence import SamplingParams, Sequence
from muxd.sched import POLICIES, SchedulerConfig
from tests.pool_checks import assert_pool_whole

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
        self,
        pages: int,
        page_tokens: int = 4,
        models: dict[str, int] | None = None,
        policy: str = "temporal",
        prefix_caching: bool = True,
        **cfg,
    ):
        self.pool = PagePool(pages)
        self.kv = KVManager(self.pool, page_tokens, prefix_caching=prefix_caching)
        self.sched = POLICIES[policy](self.kv, SchedulerConfig(**cfg))
        for name, pages_per_block in (models or {"a": 2, "b": 3}).items():
            self.kv.add_model(name, pages_per_block)
            self.sched.add_model(name)
        self.now = 0.0
        self.jobs: list[Job] = []
        self.seqs: list[Sequence] = []

    def add(
        self, seq_id: str, model: str, prompt_len: int, max_tokens: int = 4, prompt: list[int] | None = None, **params
    ) -> Sequence:
        """Queue a request; prompts are ``1..prompt_len`` unless given, so they share prefixes."""
        self.now += 1.0
        seq = Sequence(
            seq_id, model, prompt or list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens, **params),
            arrival=self.now, eos_token_ids=(EOS,),
        )
        self.sched.add(seq)
        self.seqs.append(seq)
        return seq

    def launch(self) -> list[Job]:
        """Jobs the policy starts now; they stay in flight until ``finish``."""
        jobs = self.sched.schedule(self.now)
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

    def assert_pool_whole(self) -> None:
        assert_pool_whole(self.kv)


@pytest.fixture
def harness():
    return Harness
