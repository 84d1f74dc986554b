"""The daemon's ring of recent events: unit starts, restarts and crashes,
model loads, preemptions and quota moves, with increasing ids.

Subscribers (the stats streams) get each event as it is added; a stream
that reconnects with ``Last-Event-ID`` is replayed what it missed, as far
back as the ring reaches.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from muxd.protocol import Event, EventKind

RING_SIZE = 1024


class EventSink(Protocol):
    def event(self, event: Event) -> None: ...


class EventLog:
    def __init__(self, size: int = RING_SIZE, clock: Callable[[], float] = time.time) -> None:
        self.ring: deque[Event] = deque(maxlen=size)
        self.last_id = 0
        self.clock = clock
        self.sinks: set[EventSink] = set()

    def add(self, kind: EventKind, message: str, unit: str | None = None, model: str | None = None) -> Event:
        self.last_id += 1
        event = Event(id=self.last_id, time=self.clock(), kind=kind, unit=unit, model=model, message=message)
        self.ring.append(event)
        for sink in list(self.sinks):
            sink.event(event)
        return event

    def since(self, last_id: int) -> list[Event]:
        """The events after ``last_id`` still in the ring, oldest first."""
        return [e for e in self.ring if e.id > last_id]
