"""``follow``: the stream across a daemon's stops and restarts, events neither missed nor repeated."""

from __future__ import annotations

import httpx
import pytest

from muxd.protocol import Event, Stats
from tests.tui import docs
from tests.tui.fake import FakeClient
from tui.follow import Backoff, Connected, Down, follow

pytestmark = pytest.mark.asyncio


class Sleeps:
    """``follow``'s sleep, recorded instead of slept."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def client(n_stats: int = 2) -> FakeClient:
    return FakeClient(docs.run(n_stats), docs.EVENTS, docs.status(), docs.SOCKET)


async def test_connected_then_the_whole_event_ring_then_stats():
    fake = client()
    items = follow(fake, 500, sleep=Sleeps())
    first = [await anext(items) for _ in range(1 + len(docs.EVENTS) + 2)]
    assert isinstance(first[0], Connected) and first[0].status.pid == 4242
    assert [e.id for e in first[1:-2]] == [e.id for e in docs.EVENTS]
    assert all(isinstance(s, Stats) for s in first[-2:])
    assert fake.opened == [0]
    await items.aclose()


async def test_no_daemon_says_so_and_backs_off_to_two_seconds():
    fake, sleeps = client(), Sleeps()
    fake.up = False
    items = follow(fake, 500, Backoff(first_s=0.1, max_s=2.0), sleep=sleeps)
    downs = [await anext(items) for _ in range(8)]
    assert all(d == Down(f"no muxd daemon on {docs.SOCKET}; retrying") for d in downs)
    assert sleeps.delays == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    await items.aclose()


async def test_reconnecting_to_the_same_daemon_replays_only_the_missed_events():
    fake, sleeps = client(n_stats=0), Sleeps()
    items = follow(fake, 500, sleep=sleeps)
    for _ in range(1 + len(docs.EVENTS)):
        await anext(items)
    fake.stop()
    assert isinstance(await anext(items), Down)
    missed = Event(id=8, time=docs.T0, kind="unit_restarting", unit="cpu0", message="restarting")
    fake.events.append(missed)
    fake.up = True
    assert isinstance(await anext(items), Connected)
    assert await anext(items) == missed
    assert fake.opened == [0, 7] and sleeps.delays == [0.1]
    await items.aclose()


async def test_a_new_daemon_replays_its_whole_ring():
    fake = client(n_stats=0)
    items = follow(fake, 500, sleep=Sleeps())
    for _ in range(1 + len(docs.EVENTS)):
        await anext(items)
    fake.stop()
    await anext(items)
    fake.status_doc = fake.status_doc.model_copy(update={"pid": 5151})
    fake.up = True
    assert isinstance(await anext(items), Connected)
    assert (await anext(items)).id == 1
    assert fake.opened == [0, 0]
    await items.aclose()


async def test_a_stream_the_daemon_ends_is_reopened():
    fake = client(n_stats=0)
    items = follow(fake, 500, sleep=Sleeps())
    for _ in range(1 + len(docs.EVENTS)):
        await anext(items)
    for stream in fake.streams:
        stream.queue.put_nowait(None)  # the fake ends its stream on None, as a daemon shutting down does
    down = await anext(items)
    assert down == Down(f"the muxd daemon on {docs.SOCKET} closed the stream; reconnecting")
    assert isinstance(await anext(items), Connected)
    await items.aclose()


async def test_a_stopping_daemon_gets_no_stream_that_would_hold_its_drain():
    fake = client()
    fake.health_status = "stopping"
    items = follow(fake, 500, sleep=Sleeps())
    assert await anext(items) == Down(f"the muxd daemon on {docs.SOCKET} is stopping; retrying")
    assert fake.opened == []
    fake.health_status = "ok"
    assert isinstance(await anext(items), Connected)
    await items.aclose()


async def test_a_daemon_that_hangs_is_called_so():
    fake = client()

    async def hangs() -> None:
        raise httpx.ReadTimeout("")

    fake.status = hangs
    items = follow(fake, 500, sleep=Sleeps())
    assert await anext(items) == Down(f"the muxd daemon on {docs.SOCKET} does not answer; retrying")
    await items.aclose()


async def test_a_document_it_cannot_read_is_a_lost_stream_not_a_crash():
    fake = client()

    async def garbled(interval_ms: int = 500, last_event_id: int | None = None):
        Stats.model_validate_json('{"time": "soon"}')

    fake.stats_stream = garbled
    items = follow(fake, 500, sleep=Sleeps())
    down = await anext(items)
    assert isinstance(down, Down) and down.message.startswith(f"lost the muxd daemon on {docs.SOCKET} (")
    await items.aclose()
