"""A stand-in for ``muxd.client.AsyncClient``: a daemon that plays recorded documents and can stop and start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from muxd.client import ConnectionLostError, DaemonNotRunningError
from muxd.protocol import Event, Health, Stats, Status

LOST = object()


class FrozenClock:
    """The app's clock in tests: time moves only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeStream:
    """The stream a daemon would send: the events after ``last_event_id``, the recorded stats, then what is
    pushed (``None`` ends the stream, as a daemon shutting down does; ``LOST`` breaks it)."""

    def __init__(self, client: FakeClient, last_event_id: int | None) -> None:
        self.client = client
        self.last_event_id = last_event_id
        self.queue: asyncio.Queue = asyncio.Queue()

    async def __aiter__(self) -> AsyncIterator[Stats | Event]:
        for event in self.client.events:
            if event.id > (self.last_event_id or 0):
                self.last_event_id = event.id
                yield event
        while self.client.stats:  # recorded documents are sent once, as a daemon sends each tick once
            yield self.client.stats.pop(0)
        while True:
            item = await self.queue.get()
            if item is None:
                return
            if item is LOST:
                raise ConnectionLostError("the daemon closed the connection mid-response (fake)")
            if isinstance(item, Event):
                self.last_event_id = item.id
            yield item

    async def aclose(self) -> None:
        self.client.streams.discard(self)


class FakeClient:
    """``up`` says whether a daemon answers; ``stop()`` ends the open streams as a daemon's exit would."""

    def __init__(self, stats: Sequence[Stats], events: Sequence[Event], status: Status, socket: str) -> None:
        self.stats, self.events, self.status_doc = list(stats), list(events), status
        self.socket = Path(socket)
        self.up = True
        self.health_status = "ok"
        self.streams: set[FakeStream] = set()
        self.opened: list[int | None] = []  # the last_event_id of each stream opened
        self.closed = False

    async def health(self) -> Health:
        self._check()
        return Health(status=self.health_status)

    async def status(self) -> Status:
        self._check()
        return self.status_doc

    async def stats_stream(self, interval_ms: int = 500, last_event_id: int | None = None) -> FakeStream:
        self._check()
        self.opened.append(last_event_id)
        stream = FakeStream(self, last_event_id)
        self.streams.add(stream)
        return stream

    def push(self, item: Stats | Event) -> None:
        if isinstance(item, Event):
            self.events.append(item)
        for stream in self.streams:
            stream.queue.put_nowait(item)

    def stop(self) -> None:
        self.up = False
        for stream in self.streams:
            stream.queue.put_nowait(LOST)

    async def aclose(self) -> None:
        self.closed = True

    def _check(self) -> None:
        if not self.up:
            raise DaemonNotRunningError(f"no muxd daemon answers on {self.socket} (fake); start one with `muxd serve`")
