"""Which models are in memory: load on demand, keep-alive, pins and each unit's memory budget.

Every model of the configuration and the library is known from the start
(``/v1/models`` lists it) in one of four states: ``unloaded``, ``loading``,
``loaded``, ``unloading``. A request for a model that is not loaded waits
in ``ensure`` (bounded: the model's queue limit counts it, and a wait for
memory ends after ``limits.load_wait_s`` with a 503) while its unit loads it
on a thread of its own and keeps serving the others. One load per model at
a time: later requests wait for the same one. A failed load fails the
requests waiting for it, with its error, and the next request tries again.

A loaded model whose last request ended ``keep_alive`` seconds ago is
unloaded (``-1``: never; ``0``: as soon as it is idle), unless pinned; a
request's ``keep_alive`` replaces the model's, as in Ollama. The memory
budget (``core/budget.py``) admits a model by its weight bytes (estimated
from its files' headers until a load measures them) plus the unit's KV pool,
unloading idle models first to make room.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from muxd import ipc
from muxd.config import DaemonConfig, ModelConfig, UnitConfig
from muxd.core.budget import Holder, describe, make_room, used_bytes
from muxd.errors import InvalidRequestError, MemoryBudgetError, ModelLoadError, QueueFullError, UnitUnavailableError
from muxd.library import estimate_weight_bytes, file_bytes, model_shape
from muxd.server.events import EventLog
from muxd.server.generation import ServedModel
from muxd.server.supervisor import UnitProcess, UnitState

if TYPE_CHECKING:
    from muxd.protocol import EventKind

log = logging.getLogger("muxd.server")

TICK_S = 0.1  # keep-alive resolution, and how often a request waiting for memory looks again
DEFAULT_BUDGET_SHARE = 0.8  # of the memory free at start, when no memory_budget is set


class ModelState(str, enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"


@dataclass
class Resident:
    """One model's place in memory, as the front end tracks it."""

    config: ModelConfig
    unit: str
    keep_alive: float  # seconds after its last request; -1 never; a request may change it
    size_bytes: int  # its files on disk
    state: ModelState = ModelState.UNLOADED
    weight_bytes: int | None = None  # measured by its last load
    estimate: int | None = None  # from its files' headers, before a load measures it
    last_used: float = 0.0  # when it last had a request (monotonic)
    attempt: int = 0  # loads started
    failed_attempt: int = -1  # the last load that failed
    error: str | None = None
    waiters: int = 0  # requests waiting for it to load (they count against its queue limit)

    @property
    def name(self) -> str:
        return self.config.name

    def expires_in(self, now: float, busy: bool) -> float | None:
        """Seconds until keep-alive unloads it; None: never (pinned, -1, busy or not loaded)."""
        if self.state is not ModelState.LOADED or self.config.pinned or self.keep_alive < 0 or busy:
            return None
        return max(0.0, self.last_used + self.keep_alive - now)


class Residency:
    def __init__(
        self,
        config: DaemonConfig,
        served: dict[str, ServedModel],
        events: EventLog,
        in_flight: Callable[[str], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.served = served
        self.events = events
        self.in_flight = in_flight  # requests of a model admitted and not finished
        self.clock = clock
        self.models = {
            m.name: Resident(m, u.name, m.keep_alive, _size(m), ModelState.LOADING if m.preload else ModelState.UNLOADED)
            for u in config.units
            for m in u.models
        }
        self.unit_configs = {u.name: u for u in config.units}
        self.budgets = {u.name: resolve_budget(u) for u in config.units}
        self.units: dict[str, UnitProcess] = {}
        self._changed = asyncio.Event()

    # -- asked by requests and the control endpoints --------------------------------
    async def ensure(self, name: str, keep_alive: float | None = None) -> None:
        """Return once ``name`` is loaded, loading it (and making room) if need be."""
        r = self.models[name]
        if keep_alive is not None:
            r.keep_alive = keep_alive
        if r.state is ModelState.LOADED and self.served[name].prepared:
            r.last_used = self.clock()
            return
        limit = self.config.limits.queue_per_model
        if self.in_flight(name) + r.waiters >= limit:
            raise QueueFullError(f"model {name!r} has {r.waiters} requests waiting for it to load and "
                                 f"{self.in_flight(name)} in flight, its limit is {limit}; retry shortly")  # fmt: skip
        r.waiters += 1
        try:
            await self._until_loaded(r)
        finally:
            r.waiters -= 1

    async def _until_loaded(self, r: Resident) -> None:
        name = r.name
        deadline = self.clock() + self.config.limits.load_wait_s
        attempt = None
        while True:
            unit = self.units[r.unit]
            if unit.state is not UnitState.READY:
                raise UnitUnavailableError(unit.unavailable_reason())
            if r.state is ModelState.LOADED and self.served[name].prepared:
                r.last_used = self.clock()
                return
            if r.state is ModelState.UNLOADED:
                if attempt is not None and r.failed_attempt == attempt:
                    raise ModelLoadError(f"model {name!r} could not be loaded: {r.error}; the next request tries again")
                if self._try_load(r):
                    attempt = r.attempt
                    continue
                if self.clock() >= deadline:
                    raise self._no_room(r)
            elif r.state is ModelState.LOADING:
                attempt = r.attempt
                deadline = self.clock() + self.config.limits.load_wait_s  # a load in progress ends for sure
            await self._wait_change(TICK_S)

    async def unload(self, name: str) -> None:
        """Unload ``name`` now (its requests drain first); raises for a pinned model."""
        r = self.models[name]
        if r.config.pinned:
            raise InvalidRequestError(f"model {name!r} is pinned and is never unloaded; unpin it in the config")
        while r.state is not ModelState.UNLOADED:
            if r.state is ModelState.LOADED:
                self._unload(r, "asked to")
            await self._wait_change(TICK_S)

    # -- the keep-alive timer ---------------------------------------------------------
    async def run(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(TICK_S)

    def tick(self) -> None:
        """Unload models idle past their keep-alive; a busy model's clock restarts."""
        now = self.clock()
        for r in self.models.values():
            if r.state is not ModelState.LOADED:
                continue
            busy = self.in_flight(r.name) > 0
            if busy:
                r.last_used = now
            expires = r.expires_in(now, busy)
            if expires == 0.0:
                self._unload(r, f"idle for its keep_alive of {r.keep_alive:g} s")

    # -- news from the units ------------------------------------------------------------
    def unit_ready(self, unit: str, ready: ipc.Ready) -> None:
        loaded = {m.name: m for m in ready.models}
        for r in self._of(unit):
            r.state = ModelState.LOADED if r.name in loaded else ModelState.UNLOADED
            if r.name in loaded:
                r.weight_bytes, r.last_used = loaded[r.name].weight_bytes, self.clock()
        self._notify()

    def unit_down(self, unit: str, reason: str) -> None:
        for r in self._of(unit):
            if r.state is ModelState.LOADING:
                r.failed_attempt, r.error = r.attempt, reason
            r.state = ModelState.UNLOADED
        self._notify()

    def unit_model(self, unit: str, msg: object) -> None:
        """A unit's ``ModelLoaded``, ``ModelLoadFailed`` or ``ModelUnloaded``."""
        if isinstance(msg, ipc.ModelLoaded):
            asyncio.get_running_loop().create_task(self._loaded(msg.info))
        elif isinstance(msg, ipc.ModelLoadFailed):
            r = self.models[msg.model]
            r.state, r.failed_attempt, r.error = ModelState.UNLOADED, r.attempt, msg.error
            log.error("model %s could not be loaded: %s", r.name, msg.error)
            self._event("model_load_failed", r, msg.error)
        elif isinstance(msg, ipc.ModelUnloaded):
            r = self.models[msg.model]
            r.state = ModelState.UNLOADED
            self._event("model_unloaded", r, f"unloaded; {self._mib(r)} freed")
        self._notify()

    async def _loaded(self, info: ipc.ModelInfo) -> None:
        r, served = self.models[info.name], self.served[info.name]
        try:
            if not served.prepared:  # its tokenizer: read once, off the event loop
                await asyncio.get_running_loop().run_in_executor(None, served.prepare, info.source_dir)
        except (OSError, ValueError, KeyError) as e:
            r.state, r.failed_attempt, r.error = ModelState.UNLOADING, r.attempt, f"cannot read its tokenizer: {e}"
            self.units[r.unit].try_send(ipc.UnloadModel(r.name))
            self._notify()
            return
        served.info, served.max_position = info, info.max_position
        r.state, r.weight_bytes, r.last_used, r.error = ModelState.LOADED, info.weight_bytes, self.clock(), None
        plan = f", plan {info.plan}" if info.plan else ""
        self._event("model_loaded", r, f"{self._mib(r)} of weights on {info.device} in {info.load_s:.2f} s{plan}")
        self._make_room(r.unit, 0, r.name)  # measured above its estimate: idle models give way
        self._notify()

    # -- the budget -----------------------------------------------------------------------
    def holders(self, unit: str) -> list[Holder]:
        out = []
        for r in self._of(unit):
            if r.state is ModelState.UNLOADED:
                continue
            n = self.in_flight(r.name)
            why = "pinned" if r.config.pinned else f"busy: {n} requests" if n else r.state.value
            evictable = r.state is ModelState.LOADED and not r.config.pinned and n == 0
            out.append(Holder(r.name, self.weight_bytes(r), r.state.value, evictable, r.config.priority,
                              r.last_used, why if r.state is ModelState.LOADED else r.state.value))  # fmt: skip
        return out

    def pool_bytes(self, unit: str) -> int:
        ready = self.units[unit].ready if unit in self.units else None
        return ready.kv_bytes if ready is not None else self.unit_configs[unit].kv_cache_bytes

    def used(self, unit: str) -> int:
        return used_bytes(self.pool_bytes(unit), self.holders(unit))

    def weight_bytes(self, r: Resident) -> int:
        """Measured by its last load, else estimated from its files' headers (cached)."""
        if r.weight_bytes is not None:
            return r.weight_bytes
        if r.estimate is None:
            try:
                r.estimate = estimate_weight_bytes(model_shape(r.config.path), r.config.dtype, r.config.quantization)
            except (OSError, ValueError):
                r.estimate = r.size_bytes  # the load will say what is wrong with it
        return r.estimate

    def _try_load(self, r: Resident) -> bool:
        """Start loading ``r`` if it fits now; else begin unloading idle models for it (False: wait)."""
        if not self._make_room(r.unit, self.weight_bytes(r), r.name):
            return False
        self.units[r.unit].send(ipc.LoadModel(r.name))  # raises 503 if the unit has just gone down
        r.state, r.attempt = ModelState.LOADING, r.attempt + 1
        self._event("model_loading", r, f"loading ({self._mib(r)} of weights)")
        self._notify()
        return True

    def _make_room(self, unit: str, need: int, for_model: str) -> bool:
        """True when ``need`` more bytes fit the unit's budget now; else unload idle models toward it."""
        budget = self.budgets[unit]
        if budget is None:
            return True
        holders = self.holders(unit)
        settled = [h for h in holders if h.state != ModelState.UNLOADING.value]
        victims = make_room(need, budget, self.pool_bytes(unit), settled)
        for name in victims or []:
            self._unload(self.models[name], f"to make room for {for_model}")
        return victims == [] and len(settled) == len(holders)

    def _no_room(self, r: Resident) -> MemoryBudgetError:
        unit, need = r.unit, self.weight_bytes(r)
        account = describe(self.budgets[unit] or 0, self.pool_bytes(unit), self.holders(unit))
        wait = self.config.limits.load_wait_s
        return MemoryBudgetError(
            f"model {r.name!r} ({need / 2**20:.1f} MiB) does not fit unit {unit}'s memory budget after "
            f"{wait:g} s: {account}; retry when a model is idle, or raise memory_budget"
        )

    # -- helpers ------------------------------------------------------------------------
    def _unload(self, r: Resident, why: str) -> None:
        r.state = ModelState.UNLOADING
        self._event("model_unloading", r, f"unloading ({why})")
        self.units[r.unit].try_send(ipc.UnloadModel(r.name))

    def _of(self, unit: str) -> list[Resident]:
        return [r for r in self.models.values() if r.unit == unit]

    def _mib(self, r: Resident) -> str:
        return f"{self.weight_bytes(r) / 2**20:.1f} MiB"

    def _event(self, kind: EventKind, r: Resident, message: str) -> None:
        log.info("model %s: %s", r.name, message)
        self.events.add(kind, message, unit=r.unit, model=r.name)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass


def _size(m: ModelConfig) -> int:
    try:
        return file_bytes(m.path)
    except OSError:
        return 0


def resolve_budget(unit: UnitConfig) -> int | None:
    """A unit's budget in bytes: as configured, a fraction of its device's memory, or by default
    ``DEFAULT_BUDGET_SHARE`` of what is free now; None where the device's memory cannot be read."""
    value = unit.memory_budget
    if isinstance(value, int):
        return value
    total, free = device_memory(unit.device)
    if value is not None:
        return None if total is None else int(total * value)
    return None if free is None else int(free * DEFAULT_BUDGET_SHARE)


def device_memory(device: str) -> tuple[int | None, int | None]:
    """(total, free) bytes of ``device``'s memory: a GPU's from NVML, the host's RAM from psutil."""
    if device.startswith("cuda"):
        from muxd.nvml import Nvml

        index = int(device.partition(":")[2] or 0)
        return Nvml().memory(index)
    import psutil

    vm = psutil.virtual_memory()
    return vm.total, vm.available
