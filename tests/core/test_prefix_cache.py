"""Automatic prefix caching in KVManager: matching, sharing, LRU eviction, quotas."""

import pytest

from muxd.core import kv_manager
from muxd.core.kv_manager import KVManager
from muxd.core.pages import PagePool
from muxd.core.sequence import Sequence

P = 4  # tokens per block
PPB = 2  # pages per block of model "a"
SYSTEM = list(range(100, 110))  # a 10-token system prompt: two full blocks and a partial one


def make(pages: int = 40, quota: int | None = None, **kw) -> KVManager:
    kv = KVManager(PagePool(pages), P, **kw)
    kv.add_model("a", PPB, quota)
    kv.add_model("b", 1)
    return kv


def computed(kv: KVManager, seq_id: str, tokens: list[int], model: str = "a") -> Sequence:
    """A sequence whose prompt has been prefilled: matched, allocated, computed, committed."""
    seq = Sequence(seq_id, model, list(tokens))
    kv.match_prefix(seq)
    assert kv.allocate_slots(seq, seq.num_tokens)
    seq.num_computed = seq.num_tokens
    kv.commit(seq)
    kv.pool.check_integrity()
    return seq


def test_a_shared_system_prompt_is_matched_block_by_block():
    kv = make()
    a = computed(kv, "a", SYSTEM + [1, 2, 3])
    b = Sequence("b", "a", SYSTEM + [7, 8, 9])
    assert kv.match_prefix(b) == 8  # tokens 8-9 match too, but their block is not shared as a whole
    assert b.num_computed == 8 and b.pages == a.pages[: 2 * PPB]
    assert b.shared_blocks == {0, 1}
    assert kv.hit_tokens["a"] == 8 and kv.query_tokens["a"] == 2 * 13
    assert kv.allocate_slots(b, b.num_tokens)
    assert len(b.pages) == 4 * PPB and set(b.pages[2 * PPB :]).isdisjoint(a.pages)
    kv.pool.check_integrity()


def test_only_full_blocks_before_the_last_token_match():
    kv = make()
    computed(kv, "a", list(range(1, 11)))  # two full blocks, a partial third
    same = Sequence("same", "a", list(range(1, 11)))
    assert kv.match_prefix(same) == 8  # the partial block is never cached
    kv.free(same)
    exact = Sequence("exact", "a", list(range(1, 9)))  # the whole prompt is cached ...
    assert kv.match_prefix(exact) == 4  # ... but its last token must be computed for its logits
    kv.free(exact)
    longer = Sequence("longer", "a", list(range(1, 10)))
    assert kv.match_prefix(longer) == 8
    other_model = Sequence("other", "b", list(range(1, 10)))
    assert kv.match_prefix(other_model) == 0  # caches are per model
    kv.pool.check_integrity()


def test_a_block_matches_only_after_the_same_prefix():
    kv = make()
    computed(kv, "a", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    shifted = Sequence("s", "a", [0, 0, 0, 0, 5, 6, 7, 8, 9])  # same second block, other first block
    assert kv.match_prefix(shifted) == 0


def test_refcounts_keep_a_block_held_while_any_user_lives():
    kv = make()
    pool = kv.pool
    a = computed(kv, "a", SYSTEM)
    b = computed(kv, "b-seq", SYSTEM + [1])
    assert b.pages[: 2 * PPB] == a.pages[: 2 * PPB]
    assert pool.held("a") == 2 * PPB + 2 * PPB  # two shared blocks once, a's and b's partial blocks
    kv.free(a)
    assert pool.cached("a") == 0 and pool.held("a") == 3 * PPB  # b still uses the shared blocks
    kv.free(b)
    assert pool.held("a") == 0 and pool.cached("a") == 2 * PPB
    assert pool.num_free + pool.num_cached == pool.total
    again = Sequence("again", "a", SYSTEM)
    assert kv.match_prefix(again) == 8  # idle blocks are matched back into use
    assert pool.cached("a") == 0 and pool.held("a") == 2 * PPB
    pool.check_integrity()


def test_a_block_computed_twice_at_once_stays_private_to_the_second():
    kv = make()
    a, b = Sequence("a", "a", SYSTEM), Sequence("b", "a", SYSTEM)
    for seq in (a, b):  # both prefilled in one job: neither matched anything
        assert kv.match_prefix(seq) == 0 and kv.allocate_slots(seq, seq.num_tokens)
    for seq in (a, b):
        seq.num_computed = seq.num_tokens
        kv.commit(seq)
    assert a.shared_blocks == {0, 1} and b.shared_blocks == set()
    assert b.block_hashes == a.block_hashes  # the chain goes on: its later blocks could still be shared
    kv.free(b)
    assert kv.pool.cached("a") == 0 and kv.pool.held("a") == 3 * PPB
    kv.free(a)
    assert kv.pool.cached("a") == 2 * PPB
    kv.pool.check_integrity()


def test_output_tokens_are_cached_for_the_next_turn():
    kv = make()
    seq = computed(kv, "turn1", [1, 2, 3, 4, 5, 6])
    for token in (7, 8, 9):  # three decode steps
        seq.output_ids.append(token)
        assert kv.allocate_slots(seq, seq.num_tokens)
        seq.num_computed = seq.num_tokens - 1 if token != 9 else seq.num_tokens
        kv.commit(seq)
    kv.free(seq)
    turn2 = Sequence("turn2", "a", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert kv.match_prefix(turn2) == 8


def test_idle_blocks_are_evicted_least_recently_used_first():
    kv = make(pages=8)  # four blocks of model a
    pool = kv.pool
    old = computed(kv, "old", [1, 2, 3, 4, 5])
    new = computed(kv, "new", [9, 9, 9, 9, 5])
    kv.free(old)
    kv.free(new)
    assert pool.num_free == 4 and pool.cached("a") == 4
    fresh = Sequence("fresh", "a", list(range(20, 32)))  # three blocks: one must be evicted
    assert kv.match_prefix(fresh) == 0 and kv.allocate_slots(fresh, fresh.num_tokens)
    assert pool.num_free == 0 and pool.cached("a") == 2
    assert kv.match_prefix(Sequence("o", "a", [1, 2, 3, 4, 5])) == 0  # the older block went first
    assert kv.match_prefix(Sequence("n", "a", [9, 9, 9, 9, 5])) == 4
    pool.check_integrity()


def test_eviction_takes_any_models_idle_blocks():
    kv = make(pages=8)
    b = computed(kv, "b", [1, 2, 3, 4, 5, 6, 7, 8, 9], model="b")  # model b: one page per block
    kv.free(b)
    assert kv.pool.cached("b") == 2
    a = Sequence("a", "a", list(range(40, 56)))  # the whole pool: b's idle blocks too
    assert kv.allocate_slots(a, a.num_tokens)
    assert kv.pool.cached("b") == 0 and kv.num_cached_blocks("b") == 0
    kv.pool.check_integrity()


def test_a_refused_allocation_evicts_nothing():
    kv = make(pages=8)
    kv.free(computed(kv, "old", [1, 2, 3, 4, 5]))
    huge = Sequence("huge", "a", list(range(50, 70)))  # ten pages: more than free plus cached
    assert not kv.allocate_slots(huge, huge.num_tokens)
    assert huge.pages == [] and kv.pool.cached("a") == 2
    assert kv.match_prefix(Sequence("o", "a", [1, 2, 3, 4, 5])) == 4


def test_blocks_in_use_are_never_evicted():
    kv = make(pages=8)
    user = computed(kv, "user", [1, 2, 3, 4, 5])  # 4 pages held, 2 of them a shared block
    other = Sequence("other", "a", list(range(50, 60)))  # needs 6 pages, only 4 free
    assert not kv.allocate_slots(other, other.num_tokens)
    assert kv.num_cached_blocks("a") == 1 and user.pages


def test_cached_pages_do_not_count_against_the_quota():
    kv = make(pages=20, quota=4)
    kv.free(computed(kv, "old", list(range(1, 9))))  # four pages cached, none held
    assert kv.pool.held("a") == 0 and kv.pool.cached("a") == 4
    seq = Sequence("s", "a", list(range(30, 38)))
    assert kv.allocate_slots(seq, seq.num_tokens, enforce_quota=True)
    more = Sequence("m", "a", list(range(40, 44)))
    assert not kv.allocate_slots(more, more.num_tokens, enforce_quota=True)  # the quota counts held pages
    assert kv.pool.cached("a") == 4  # and a refusal by quota evicts nothing


def test_clear_cache_frees_every_idle_block():
    kv = make()
    live = computed(kv, "live", SYSTEM)
    kv.free(computed(kv, "done", [1, 2, 3, 4, 5]))
    assert kv.clear_cache() == PPB  # "done"'s block only: "live"'s are in use
    kv.free(live)
    assert kv.clear_cache() == 2 * PPB
    assert kv.pool.num_free == kv.pool.total and kv.num_cached_blocks("a") == 0
    kv.pool.check_integrity()


def test_hash_collisions_read_as_misses(monkeypatch):
    monkeypatch.setattr(kv_manager, "block_hash", lambda parent, tokens: 42)
    kv = make()
    computed(kv, "a", [1, 2, 3, 4, 5])
    other = computed(kv, "b", [6, 7, 8, 9, 10])
    assert other.num_computed == 5 and other.shared_blocks == set()  # not matched, not registered
    assert kv.match_prefix(Sequence("c", "a", [1, 2, 3, 4, 9])) == 4


def test_turned_off_it_behaves_as_before():
    kv = make(prefix_caching=False)
    computed(kv, "a", SYSTEM)
    b = computed(kv, "b", SYSTEM)
    assert b.shared_blocks == set() and kv.num_cached_blocks("a") == 0
    kv.free(b)
    assert kv.pool.num_cached == 0 and kv.pool.held("a") == 3 * PPB


def test_pool_moves_pages_between_held_cached_and_free():
    pool = PagePool(6)
    pool.register("a")
    pages = pool.allocate("a", 4)
    pool.cache("a", 3)
    assert (pool.held("a"), pool.cached("a"), pool.num_cached) == (1, 3, 3)
    pool.reuse("a", 1)
    pool.evict("a", pages[:2])
    assert (pool.num_free, pool.held("a"), pool.cached("a")) == (4, 2, 0)
    pool.check_integrity()
    with pytest.raises(ValueError):
        pool.evict("a", pages[2:3])  # nothing cached
    with pytest.raises(ValueError):
        pool.cache("a", 3)  # holds only 2
    pool._models["a"].cached += 1  # a page counted twice
    with pytest.raises(AssertionError):
        pool.check_integrity()
