"""The dashboard's fixtures: a fake daemon playing recorded documents, a frozen clock, a fixed time zone.

The real-daemon fixtures (``tiny_models``) come from the end-to-end suite.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot

from tests.e2e.conftest import tiny_daemon, tiny_models  # noqa: F401  (fixtures test_live uses)
from tests.tui import docs, record
from tests.tui.fake import FakeClient, FrozenClock
from tui.app import MuxdTop
from tui.follow import Backoff

FAST = Backoff(first_s=0.01, max_s=0.05)  # reconnect tries in tests
RECORDING = Path(__file__).parent / "data" / "cpu.jsonl"


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Event times are shown in local time: UTC here, so snapshots match anywhere."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def cpu_client() -> FakeClient:
    return FakeClient(docs.run(), docs.EVENTS, docs.status(), docs.SOCKET)


@pytest.fixture
def recorded_client() -> FakeClient:
    """A real CPU daemon's stream under load (``tests/tui/record.py``): two tiny models, one missing its SLO."""
    status, stats, events = record.load(RECORDING)
    return FakeClient(stats, events, status, docs.SOCKET)


@pytest.fixture
def gpu_client() -> FakeClient:
    return FakeClient(docs.run(gpu=True), docs.events(gpu=True), docs.status(gpu=True), docs.SOCKET)


def make_app(client: FakeClient, clock: FrozenClock) -> MuxdTop:
    return MuxdTop(client, clock=clock, backoff=FAST)


async def until(pilot: Pilot, condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Let the app run until ``condition()`` holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.01)


async def all_played(pilot: Pilot) -> None:
    """Wait until the app has read every recorded document of its fake daemon."""
    app = pilot.app
    await until(pilot, lambda: not app.client.stats and app.received > 0 and app.stats is app.latest, "the recorded stream")
    await asyncio.sleep(0)
