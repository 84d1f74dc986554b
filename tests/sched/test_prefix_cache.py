"""The scheduler with prefix caching: matched prefixes are skipped, survive preemption, cost no quota."""

from muxd.core.job import JobKind
from muxd.core.sequence import SequenceStatus

from .conftest import Harness

SYSTEM = list(range(100, 112))  # three blocks of 4 tokens


def prefill_chunks(h: Harness, seq_id: str) -> list[tuple[int, int]]:
    return [(c.start, c.end) for j in h.jobs if j.kind is JobKind.PREFILL for c in j.chunks if c.seq.seq_id == seq_id]


def test_a_second_request_prefills_only_after_the_shared_prefix():
    h = Harness(pages=100, models={"a": 2})
    h.add("first", "a", 0, max_tokens=2, prompt=SYSTEM + [1, 2])
    h.drain()
    second = h.add("second", "a", 0, max_tokens=2, prompt=SYSTEM + [3])
    h.drain()
    assert prefill_chunks(h, "second") == [(12, 13)]
    assert h.kv.hit_tokens["a"] == 12
    h.assert_pool_whole()


def test_outputs_equal_with_and_without_prefix_caching():
    outs = []
    for on in (True, False):
        h = Harness(pages=24, models={"a": 2, "b": 1}, prefix_caching=on, max_prefill_tokens=8)
        seqs = [h.add(f"r{i}", "ab"[i % 2], 0, max_tokens=6, prompt=SYSTEM + [i] * (i + 1)) for i in range(6)]
        h.drain()
        h.assert_pool_whole()
        outs.append([s.output_ids for s in seqs])
    assert outs[0] == outs[1]


def test_a_preempted_sequence_matches_its_blocks_again():
    h = Harness(pages=100, models={"a": 2})
    seq = h.add("r", "a", 0, max_tokens=6, prompt=SYSTEM + [1, 2])  # 14 tokens
    h.step()  # prefill: 15 tokens, 14 computed
    h.step()  # a decode: 16 tokens, 15 computed
    assert seq.status is SequenceStatus.RUNNING and seq.shared_blocks == {0, 1, 2}
    h.sched.preempt(seq)
    assert seq.pages == [] and h.pool.held("a") == 0 and h.pool.cached("a") == 3 * 2
    h.step()  # re-prefill: the three cached blocks are matched, the rest recomputed
    assert prefill_chunks(h, "r")[-1] == (12, 16)
    assert h.kv.hit_tokens["a"] == 12
    assert seq.shared_blocks == {0, 1, 2, 3}  # the matched blocks and the one it just filled
    h.drain()
    assert len(seq.output_ids) == 6
    h.assert_pool_whole()


def test_an_unplaceable_prefill_gives_its_matched_blocks_back():
    h = Harness(pages=8, models={"a": 2})  # four blocks
    h.add("first", "a", 0, max_tokens=1, prompt=SYSTEM + [1])
    h.drain()  # three blocks stay cached
    big = h.add("big", "a", 0, max_tokens=1, prompt=SYSTEM + list(range(1, 10)))  # needs six blocks
    h.drain()
    assert big.finish_reason is not None and big.pages == [] and big.num_computed == 0
    h.assert_pool_whole()


def test_a_prefill_that_must_wait_gives_its_matched_blocks_back_and_counts_no_hit():
    h = Harness(pages=10, models={"a": 2})  # five blocks
    h.add("first", "a", 0, max_tokens=1, prompt=SYSTEM + [1])
    h.drain()  # three blocks cached, two free
    h.add("busy", "a", 0, max_tokens=1, prompt=list(range(300, 308)))
    (busy,) = h.launch()  # in flight: its two blocks cannot be preempted
    assert h.pool.num_free == 0 and h.pool.cached("a") == 6
    later = h.add("later", "a", 0, max_tokens=1, prompt=SYSTEM + list(range(1, 9)))  # needs all five blocks
    assert h.sched.build_prefill("a") == []  # the busy job's pages cannot be taken
    assert later.pages == [] and later.num_computed == 0 and later.shared_blocks == set()
    assert h.pool.cached("a") == 6 and h.kv.hit_tokens["a"] == 0
    h.check_prefix_cache()
    h.finish(busy)
    h.drain()
    assert prefill_chunks(h, "later") == [(12, 20)]
    assert h.kv.hit_tokens["a"] == 12  # counted once, for the match that was used
    h.assert_pool_whole()


def test_quota_counts_held_pages_not_cached_ones():
    h = Harness(pages=40, models={"a": 2})
    h.add("old", "a", 0, max_tokens=1, prompt=list(range(200, 217)))  # 17 tokens: four full blocks cached
    h.drain()
    assert h.pool.held("a") == 0 and h.pool.cached("a") == 8
    h.pool.set_quota("a", 6)
    new = h.add("new", "a", 0, max_tokens=1, prompt=list(range(300, 310)))  # three blocks: six pages
    chunks = h.sched.build_prefill("a", enforce_quota=True)
    assert [c.seq for c in chunks] == [new] and h.pool.held("a") == 6
