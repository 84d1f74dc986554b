"""Requests in flight: which unit holds each model, bounded queues, and event delivery.

The router is the front end's only path to the units. ``submit`` checks the
model's queue bound (every admitted request of a model that has not
finished counts, like Ollama's ``OLLAMA_MAX_QUEUE`` and TGI's
``max_concurrent_requests``), registers where the unit's events for each
request go, and sends ``AddRequest``. Events of a request that is no longer
registered (it was aborted) are dropped. When a unit dies, every request it
held gets a ``UnitFailure`` at once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

from muxd import ipc
from muxd.errors import QueueFullError, UnitUnavailableError
from muxd.server.supervisor import UnitProcess


@dataclass
class UnitFailure:
    """Delivered in place of token events when the request's unit died."""

    request_id: str
    reason: str


Event = ipc.TokenEvent | UnitFailure


@dataclass
class InFlight:
    request_id: str
    model: str
    unit: UnitProcess
    sink: asyncio.Queue[Event]
    started: bool = False  # the first token has arrived


class Router:
    def __init__(self, unit_of: dict[str, UnitProcess], queue_per_model: int) -> None:
        self.unit_of = unit_of  # model name -> its unit
        self.queue_per_model = queue_per_model
        self._inflight: dict[str, InFlight] = {}
        self.in_flight: Counter[str] = Counter()  # per model: admitted and not finished
        self.waiting: Counter[str] = Counter()  # per model: admitted, no token yet

    def submit(self, model: str, requests: list[tuple[str, list[int], dict[str, Any]]], sink: asyncio.Queue[Event]) -> None:
        """Send ``(request_id, prompt_ids, params)`` requests of ``model``; their events go to ``sink``.

        All or none: raises ``QueueFullError`` (429) or ``UnitUnavailableError`` (503) before sending any.
        """
        unit = self.unit_of[model]
        if self.in_flight[model] + len(requests) > self.queue_per_model:
            raise QueueFullError(
                f"model {model!r} has {self.in_flight[model]} requests in flight, its limit is "
                f"{self.queue_per_model}; retry shortly"
            )
        sent = []
        try:
            for request_id, prompt_ids, params in requests:
                self._inflight[request_id] = InFlight(request_id, model, unit, sink)
                self.in_flight[model] += 1
                self.waiting[model] += 1
                sent.append(request_id)
                unit.send(ipc.AddRequest(request_id, model, prompt_ids, params))
        except UnitUnavailableError:
            for request_id in sent:
                self.abort(request_id)
            raise

    def abort(self, request_id: str) -> None:
        """Stop delivering ``request_id`` and tell its unit to free its pages (no-op if finished)."""
        inflight = self._forget(request_id)
        if inflight is not None:
            inflight.unit.try_send(ipc.AbortRequest(request_id))

    def deliver(self, events: list[ipc.TokenEvent]) -> None:
        """One engine step's events, from a unit, on the event loop."""
        for ev in events:
            inflight = self._inflight.get(ev.request_id)
            if inflight is None:
                continue  # aborted by the front end; the unit's final event is moot
            if not inflight.started:
                inflight.started = True
                self.waiting[inflight.model] -= 1
            if ev.finished:
                self._forget(ev.request_id)
            inflight.sink.put_nowait(ev)

    def fail_unit(self, unit: UnitProcess, reason: str) -> int:
        """Fail every request ``unit`` held; return how many."""
        dead = [r for r in self._inflight.values() if r.unit is unit]
        for inflight in dead:
            self._forget(inflight.request_id)
            inflight.sink.put_nowait(UnitFailure(inflight.request_id, reason))
        return len(dead)

    def _forget(self, request_id: str) -> InFlight | None:
        inflight = self._inflight.pop(request_id, None)
        if inflight is not None:
            self.in_flight[inflight.model] -= 1
            if not inflight.started:
                self.waiting[inflight.model] -= 1
        return inflight
