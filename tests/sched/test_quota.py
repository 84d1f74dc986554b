from muxd.core.pages import PagePool
from muxd.sched.quota import adapt_quotas, initial_quotas


def test_initial_quotas_follow_weights_and_sum_to_the_pool():
    q = initial_quotas(100, {"a": 3.0, "b": 1.0})
    assert q == {"a": 75, "b": 25}
    assert sum(initial_quotas(101, {"a": 1.0, "b": 1.0, "c": 1.0}).values()) == 101


def test_adaptation_lends_unused_quota_to_backlogged_models():
    pool = PagePool(100)
    pool.register("idle", 60)
    pool.register("busy", 40)
    pool.allocate("idle", 10)
    pool.allocate("busy", 40)
    moves = adapt_quotas(pool, backlogged={"busy"})
    assert moves == {"idle": -25, "busy": 25}
    assert pool.quota("idle") >= pool.held("idle")


def test_adaptation_never_takes_quota_below_held_pages():
    pool = PagePool(100)
    pool.register("a", 50)
    pool.register("b", 50)
    pool.allocate("a", 44)  # 88 % of quota: under 90 %, so a lends
    for _ in range(10):
        adapt_quotas(pool, backlogged={"b"})
        assert pool.quota("a") >= pool.held("a") == 44


def test_no_backlog_moves_nothing():
    pool = PagePool(10)
    pool.register("a", 5)
    pool.register("b", 5)
    assert adapt_quotas(pool, backlogged=set()) == {}
