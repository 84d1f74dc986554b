"""A shared assertion on the page pool, for the scheduler's and the engine's tests."""

from __future__ import annotations

from muxd.core.kv_manager import KVManager


def assert_pool_whole(kv: KVManager) -> None:
    """Nothing is held once every request ended; every page is free or cached,
    and free once the prefix cache is dropped."""
    pool = kv.pool
    pool.check_integrity()
    assert all(pool.held(m) == 0 for m in pool.models)
    assert pool.num_free + pool.num_cached == pool.total
    kv.clear_cache()
    assert pool.num_free == pool.total
