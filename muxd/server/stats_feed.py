"""The daemon's stats tick: one ``protocol.Stats`` document per tick, for every reader.

Each tick asks every unit for its snapshot once, reads the devices once,
moves the windows on (``telemetry.RateWindow``: tokens/s, compute shares,
busy shares; the latency windows) and builds the document. Every reader
gets the latest tick's document (``/muxd/v1/stats``, ``/metrics``, the
streams, serialised once per tick): no reader costs the units a round trip
or moves a window.

Compute share: a model's prefill (decode) share is Σ(job share × job
seconds) of its prefill (decode) jobs over the window, measured in the unit;
the unit's busy share is the time its executor held jobs, weighted by their
shares, measured apart. The models' shares add up to the unit's, less the
unit loop's overhead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from muxd import ipc
from muxd.protocol import ComputeShare, DeviceStats, Event, ModelStats, Stats, UnitStats
from muxd.server.devices import Devices, UnitView
from muxd.server.telemetry import LATENCY_WINDOW_S, RATE_WINDOW_S, RateWindow

if TYPE_CHECKING:
    from muxd.server.daemon import Daemon

STREAM_QUEUE = 256  # a subscriber further behind than this loses stats documents, never the stream


class Subscription:
    """One stats stream: a queue of ``(event name, JSON, id)`` items, None at the end."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.queue: asyncio.Queue[tuple[str, str, int | None] | None] = asyncio.Queue(STREAM_QUEUE)
        self.sent_at = float("-inf")

    def put(self, item: tuple[str, str, int | None] | None) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            pass  # a stalled reader; it can reconnect with Last-Event-ID

    def event(self, event: Event) -> None:  # events.EventSink
        self.put(("event", event.model_dump_json(), event.id))


class StatsFeed:
    def __init__(self, daemon: Daemon, clock: Callable[[], float] = time.monotonic) -> None:
        self.daemon = daemon
        self.clock = clock
        self.interval_s = daemon.config.stats_interval_ms / 1e3
        self.devices = Devices(clock=clock)
        self.tokens = RateWindow(clock=clock)
        self.units: dict[str, RateWindow] = {}
        self.subscriptions: set[Subscription] = set()
        self.latest: Stats | None = None
        self.closed = False  # the daemon is stopping: streams end, new ones end at once
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    # -- the ticker ------------------------------------------------------------------
    async def run(self) -> None:
        """Tick until cancelled, as often as the fastest subscriber asks (at most every 50 ms)."""
        while True:
            self._wake.clear()  # before the tick: a poke during it ticks again at once
            doc = await self.tick()
            self._publish(doc)
            try:
                await asyncio.wait_for(self._wake.wait(), self.period())
            except asyncio.TimeoutError:
                pass

    def period(self) -> float:
        return max(0.05, min([self.interval_s, *(s.interval_s for s in self.subscriptions)]))

    def poke(self) -> None:
        """Tick now (a unit changed state: the next document should say so at once)."""
        self._wake.set()

    async def current(self) -> Stats:
        """The latest tick's document (the first tick's, once it is done)."""
        return self.latest if self.latest is not None else await self.tick()

    def subscribe(self, interval_s: float) -> Subscription:
        sub = Subscription(interval_s)
        if self.closed:
            sub.put(None)
            return sub
        self.subscriptions.add(sub)
        self.daemon.events.sinks.add(sub)
        if self.latest is not None:
            sub.put(("stats", self.latest.model_dump_json(), None))
            sub.sent_at = self.clock()
        self._wake.set()  # a faster subscriber shortens the period now
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscriptions.discard(sub)
        self.daemon.events.sinks.discard(sub)

    def close(self) -> None:
        """End every stream (the daemon is stopping)."""
        self.closed = True
        for sub in list(self.subscriptions):
            sub.put(None)

    def _publish(self, doc: Stats) -> None:
        now = self.clock()
        due = [s for s in self.subscriptions if now - s.sent_at >= s.interval_s * 0.9]
        if not due:
            return
        text = doc.model_dump_json()
        for sub in due:
            sub.sent_at = now
            sub.put(("stats", text, None))

    # -- one tick ------------------------------------------------------------------------
    async def tick(self) -> Stats:
        async with self._lock:
            d = self.daemon
            names = list(d.units)
            snaps = dict(zip(names, await asyncio.gather(*(d.units[n].stats() for n in names))))
            for name, snap in snaps.items():
                for e in snap.events if snap else ():
                    d.events.add(e.kind, e.message, unit=name, model=e.model)  # type: ignore[arg-type]
            d.telemetry.expire()
            rates = self.tokens.read(d.telemetry.counters())
            units, shares = self._units(snaps)
            views = [UnitView(n, d.units[n].config.device, d.units[n].pid, units[n].busy) for n in names]
            devices, watts = self.devices.read(views)
            models = {name: self._model(name, snaps, rates, shares) for name in d.served}
            _tokens_per_joule(models, units, devices, watts)
            self.latest = Stats(
                time=time.time(), uptime_s=round(time.time() - d.started, 3), rate_window_s=RATE_WINDOW_S,
                latency_window_s=LATENCY_WINDOW_S, last_event_id=d.events.last_id, models=models, units=units,
                devices=devices,
            )  # fmt: skip
            return self.latest

    def _units(self, snaps: dict[str, ipc.StatsSnapshot | None]) -> tuple[dict[str, UnitStats], dict[str, dict[str, float]]]:
        units, shares = {}, {}
        for name, snap in snaps.items():
            u = self.daemon.units[name]
            doc = UnitStats(state=u.state.value, device=u.config.device, pid=u.pid, restarts=u.restarts,
                            models=[m.name for m in u.config.models])  # fmt: skip
            if snap is not None:
                counters = {"busy": snap.busy_s}
                for model, ms in snap.models.items():
                    counters[f"{model}/prefill"], counters[f"{model}/decode"] = ms.prefill_share_s, ms.decode_share_s
                window = self.units.setdefault(name, RateWindow(clock=self.clock))
                shares[name] = window.read(counters, epoch=u.restarts, start=u.ready_at)
                busy = shares[name].get("busy")
                doc = doc.model_copy(update={
                    "pages_total": snap.kv_pages_total, "pages_free": snap.kv_pages_free,
                    "pages_cached": snap.kv_pages_cached, "steps": snap.steps, "preemptions": snap.preemptions,
                    "busy_s": round(snap.busy_s, 6), "busy": None if busy is None else round(min(1.0, busy), 4),
                })  # fmt: skip
            units[name] = doc
        return units, shares

    def _model(self, name: str, snaps: dict, rates: dict[str, float], shares: dict[str, dict[str, float]]) -> ModelStats:
        d = self.daemon
        s = d.served[name]
        snap = snaps[s.unit]
        ms = snap.models.get(name) if snap else None
        t = d.telemetry.models[name]
        unit_shares = shares.get(s.unit, {})
        share = ComputeShare(prefill=round(unit_shares.get(f"{name}/prefill", 0.0), 4),
                             decode=round(unit_shares.get(f"{name}/decode", 0.0), 4))  # fmt: skip
        return ModelStats(
            unit=s.unit, state=d.units[s.unit].state.value, rate=s.config.rate,
            load_state=d.residency.models[name].state.value,
            running=ms.running if ms else 0,
            queued=(ms.waiting if ms else d.router.waiting[name]) + d.residency.models[name].waiters,  # + waiting for a load
            queue_age_s=None if ms is None or ms.oldest_waiting_s is None else round(ms.oldest_waiting_s, 3),
            in_flight=d.router.in_flight[name], done=t.done, errors=t.errors, rejected=t.rejected,
            prompt_tokens=t.prompt_tokens, generated_tokens=t.generated_tokens,
            tokens_in_per_s=round(rates.get(f"{name}/in", 0.0), 3),
            tokens_out_per_s=round(rates.get(f"{name}/out", 0.0), 3),
            share=share,
            pages_held=ms.pages_held if ms else None, pages_quota=ms.pages_quota if ms else None,
            pages_cached=ms.pages_cached if ms else None,
            prefix_hit_tokens=ms.prefix_hit_tokens if ms else None,
            prefix_query_tokens=ms.prefix_query_tokens if ms else None,
            latency=t.window.latency(), latency_total=t.total.latency(), slo=t.slo(),
        )  # fmt: skip


def _tokens_per_joule(models: dict[str, ModelStats], units: dict[str, UnitStats], devices: dict[str, DeviceStats],
                      watts: dict[int, float]) -> None:  # fmt: skip
    """Tokens per joule where NVML knows the GPU's energy: a device's from its
    models' tokens/s, a model's from its part of the unit's busy share."""
    for card in devices.values():
        power = watts.get(card.gpu.index) if card.gpu else None
        if not power:
            continue
        mine = [m for m in models.values() if m.unit == card.unit]
        card.tokens_per_joule = round(sum(m.tokens_out_per_s for m in mine) / power, 4)
        busy = units[card.unit].busy
        for m in mine:
            if busy and m.share.total:
                m.tokens_per_joule = round(m.tokens_out_per_s / (power * m.share.total / busy), 4)
