"""The memory budget's choice of models to unload (core/budget.py)."""

from muxd.core.budget import Holder, describe, make_room

MIB = 2**20


def idle(name, mib, last_used, priority=0):
    return Holder(name, mib * MIB, "loaded", True, priority, last_used, "idle")


def test_a_model_that_fits_unloads_nothing():
    assert make_room(10 * MIB, 100 * MIB, 20 * MIB, [idle("a", 30, 1.0)]) == []


def test_the_least_recently_used_idle_model_goes_first():
    holders = [idle("new", 30, 5.0), idle("old", 30, 1.0), idle("mid", 30, 3.0)]
    assert make_room(30 * MIB, 110 * MIB, 10 * MIB, holders) == ["old"]


def test_lower_priority_goes_before_older_use():
    holders = [idle("old", 30, 1.0, priority=5), idle("new", 30, 9.0, priority=0)]
    assert make_room(30 * MIB, 80 * MIB, 10 * MIB, holders) == ["new"]


def test_as_many_as_needed_are_unloaded_oldest_first():
    holders = [idle("a", 20, 1.0), idle("b", 20, 2.0), idle("c", 20, 3.0)]
    assert make_room(50 * MIB, 80 * MIB, 10 * MIB, holders) == ["a", "b"]
    assert make_room(70 * MIB, 80 * MIB, 10 * MIB, holders) == ["a", "b", "c"]


def test_pinned_busy_and_loading_models_are_never_chosen():
    holders = [
        Holder("pinned", 30 * MIB, "loaded", False, why="pinned"),
        Holder("busy", 30 * MIB, "loaded", False, why="busy: 2 requests"),
        Holder("loading", 30 * MIB, "loading", False),
    ]
    assert make_room(20 * MIB, 100 * MIB, 10 * MIB, holders) is None
    assert make_room(20 * MIB, 100 * MIB, 10 * MIB, [*holders[:2], idle("x", 30, 0.0)]) == ["x"]


def test_the_account_names_every_holder_largest_first():
    text = describe(100 * MIB, 10 * MIB, [idle("small", 5, 0.0), Holder("big", 60 * MIB, "loaded", False, why="pinned")])
    assert text == ("75.0 MiB of the 100.0 MiB budget is held by: KV pool 10.0 MiB, big 60.0 MiB (pinned), "
                    "small 5.0 MiB (idle)")  # fmt: skip
