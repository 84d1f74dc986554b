import pytest

from muxd.core.pages import PagePool


def test_allocate_and_free_return_pages_to_one_free_list():
    pool = PagePool(10)
    pool.register("a")
    pool.register("b")
    a = pool.allocate("a", 6)
    b = pool.allocate("b", 4)
    assert pool.num_free == 0 and len(set(a) | set(b)) == 10
    pool.free("a", a)
    assert pool.allocate("b", 6) is not None  # b uses what a freed
    pool.check_integrity()


def test_allocate_refuses_without_taking_anything():
    pool = PagePool(4)
    pool.register("a")
    assert pool.allocate("a", 5) is None
    assert pool.num_free == 4 and pool.held("a") == 0


def test_quota_is_enforced_only_when_asked():
    pool = PagePool(8)
    pool.register("a", quota=2)
    assert pool.allocate("a", 3, enforce_quota=True) is None
    assert pool.allocate("a", 3) is not None
    assert pool.held("a") == 3


def test_freeing_more_than_held_is_an_error():
    pool = PagePool(4)
    pool.register("a")
    pool.register("b")
    pages = pool.allocate("a", 2)
    with pytest.raises(ValueError):
        pool.free("b", pages)


def test_check_integrity_detects_a_lost_page():
    pool = PagePool(4)
    pool.register("a")
    pool.allocate("a", 2)
    pool._free.pop()
    with pytest.raises(AssertionError):
        pool.check_integrity()
