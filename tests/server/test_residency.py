"""Residency (server/residency.py) against a fake unit: waiting for loads, failures, the budget, keep-alive."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from muxd import ipc
from muxd.config import DaemonConfig, Limits, ModelConfig, UnitConfig
from muxd.errors import MemoryBudgetError, ModelLoadError, QueueFullError
from muxd.server.events import EventLog
from muxd.server.generation import ServedModel
from muxd.server.residency import ModelState, Residency
from muxd.server.supervisor import UnitState

POOL = 1 << 20
pytestmark = pytest.mark.asyncio


class FakeUnit:
    """A ready unit that records what it is sent; the test answers for it."""

    def __init__(self) -> None:
        self.state = UnitState.READY
        self.ready = ipc.Ready("u0", [], 10, POOL)
        self.sent: list[object] = []

    def send(self, msg: object) -> None:
        self.sent.append(msg)

    try_send = send

    def unavailable_reason(self) -> str:
        return "down"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(tiny_model_dirs, budget_models: float | None = None, pinned: tuple[str, ...] = (), **limits):
    """A residency of three on-demand models (a, b, c) on a fake unit; its budget holds the pool and
    ``budget_models`` times the largest model."""
    names = {"a": "llama", "b": "qwen3", "c": "qwen2"}
    models = tuple(ModelConfig(n, str(tiny_model_dirs[f]), preload=False, keep_alive=5.0, pinned=n in pinned)
                   for n, f in names.items())  # fmt: skip
    in_flight: dict[str, int] = {}
    weights = 2_432_000  # the largest of the three, in fp32
    budget = None if budget_models is None else POOL + int(weights * budget_models)
    unit = UnitConfig("u0", models, kv_cache_bytes=POOL, memory_budget=budget)
    config = DaemonConfig((unit,), Path("/tmp/x.sock"), limits=Limits(**limits))
    served = {m.name: ServedModel.pending(m, "u0") for m in models}
    clock = Clock()
    residency = Residency(config, served, EventLog(), lambda n: in_flight.get(n, 0), clock)
    fake = FakeUnit()
    residency.units = {"u0": fake}
    return residency, fake, clock, in_flight


def loaded(residency: Residency, name: str) -> None:
    path = residency.models[name].config.path
    info = ipc.ModelInfo(name, 512, (), 2_000_000, "float32", "cpu", source_dir=path)
    residency.unit_model("u0", ipc.ModelLoaded(info))


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


async def test_requests_wait_for_one_load_and_all_go_on_when_it_ends(tiny_model_dirs):
    residency, unit, _, _ = make(tiny_model_dirs)
    waiters = [asyncio.create_task(residency.ensure("a")) for _ in range(3)]
    await settle()
    assert unit.sent == [ipc.LoadModel("a")] and residency.models["a"].state is ModelState.LOADING
    loaded(residency, "a")
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert residency.models["a"].state is ModelState.LOADED and residency.served["a"].prepared


async def test_a_failed_load_fails_its_waiters_and_the_next_request_tries_again(tiny_model_dirs):
    residency, unit, _, _ = make(tiny_model_dirs)
    waiter = asyncio.create_task(residency.ensure("a"))
    await settle()
    residency.unit_model("u0", ipc.ModelLoadFailed("a", "OSError: disk on fire"))
    with pytest.raises(ModelLoadError, match="disk on fire; the next request tries again"):
        await asyncio.wait_for(waiter, 5)
    retry = asyncio.create_task(residency.ensure("a"))
    await settle()
    assert unit.sent == [ipc.LoadModel("a"), ipc.LoadModel("a")]
    loaded(residency, "a")
    await asyncio.wait_for(retry, 5)


async def test_waiting_requests_count_against_the_queue_limit(tiny_model_dirs):
    residency, _, _, in_flight = make(tiny_model_dirs, queue_per_model=2)
    in_flight["a"] = 1
    first = asyncio.create_task(residency.ensure("a"))
    await settle()
    with pytest.raises(QueueFullError, match="1 requests waiting for it to load and 1 in flight"):
        await residency.ensure("a")
    first.cancel()


async def test_an_idle_model_gives_way_and_a_busy_one_does_not(tiny_model_dirs):
    residency, unit, clock, in_flight = make(tiny_model_dirs, budget_models=1.5, load_wait_s=0.3)
    first = asyncio.create_task(residency.ensure("a"))
    await settle()
    loaded(residency, "a")
    await asyncio.wait_for(first, 5)
    in_flight["a"] = 1  # busy: never evicted
    blocked = asyncio.create_task(residency.ensure("b"))
    await settle()
    assert not blocked.done() and residency.models["b"].state is ModelState.UNLOADED  # it waits for memory
    clock.now += 1  # past load_wait_s
    with pytest.raises(MemoryBudgetError, match=r"'b' .* does not fit unit u0's memory budget .* a [\d.]+ MiB \(busy: 1 requests\)"):
        await asyncio.wait_for(blocked, 5)
    in_flight["a"] = 0
    clock.now += 1
    second = asyncio.create_task(residency.ensure("b"))
    await settle()
    assert unit.sent[-1] == ipc.UnloadModel("a") and residency.models["a"].state is ModelState.UNLOADING
    residency.unit_model("u0", ipc.ModelUnloaded("a"))
    await settle()
    assert unit.sent[-1] == ipc.LoadModel("b")
    loaded(residency, "b")
    await asyncio.wait_for(second, 5)
    assert residency.used("u0") <= residency.budgets["u0"]


async def test_keep_alive_unloads_an_idle_model_and_a_busy_one_keeps_its_clock(tiny_model_dirs):
    residency, unit, clock, in_flight = make(tiny_model_dirs)
    first = asyncio.create_task(residency.ensure("a"))
    await settle()
    loaded(residency, "a")
    await asyncio.wait_for(first, 5)
    in_flight["a"] = 1
    clock.now += 60
    residency.tick()
    assert residency.models["a"].state is ModelState.LOADED  # busy for a minute: not idle
    in_flight["a"] = 0
    clock.now += 4.9
    residency.tick()
    assert residency.models["a"].state is ModelState.LOADED
    clock.now += 0.2
    residency.tick()
    assert unit.sent[-1] == ipc.UnloadModel("a")


async def test_a_pinned_model_is_never_unloaded(tiny_model_dirs):
    residency, _, clock, _ = make(tiny_model_dirs, pinned=("c",))
    first = asyncio.create_task(residency.ensure("c"))
    await settle()
    loaded(residency, "c")
    await asyncio.wait_for(first, 5)
    r = residency.models["c"]
    clock.now += 3600
    residency.tick()
    assert r.state is ModelState.LOADED
    with pytest.raises(Exception, match="pinned and is never unloaded"):
        await residency.unload("c")
