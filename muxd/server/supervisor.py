"""Unit processes: spawn each, read its pipe, notice its death at once, restart it.

One ``UnitProcess`` per LLM unit. Its process is started with the
``spawn`` context (a fork of a process with threads and an event loop is
not safe, and the unit must import torch afresh). A reader thread blocks on
the pipe *and* the process sentinel, so a unit killed by a signal is
noticed the instant the kernel reaps it, not at the next timeout; every
message it reads is handed to the event loop with ``call_soon_threadsafe``.
Everything else (state, callbacks, restarts) runs on the event loop thread.

The spawn target is named by a string and imported in the child
(``UnitEntry("muxd.unit:run_unit")``): the front end never imports the
unit's module, which imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib
import logging
import multiprocessing as mp
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any, Protocol

from muxd import ipc
from muxd.config import UnitConfig
from muxd.errors import UnitUnavailableError

log = logging.getLogger("muxd.supervisor")

STOP_TIMEOUT_S = 10.0
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # the daemon's to handle; its units ignore them
CRASH_WINDOW_S = 60.0  # crashes closer together than this back off: 1, 2, 4 ... 30 s
MAX_BACKOFF_S = 30.0


class UnitEntry:
    """A picklable spawn target named ``"module:function"``, imported only in the child.

    ``warm`` names a ``function(config)`` that a warm spare calls ahead of
    time to import whatever the unit will need (it loads no weights).
    """

    def __init__(self, target: str = "muxd.unit:run_unit", warm: str | None = "muxd.models.warm:warm_up") -> None:
        self.target = target
        self.warm = warm

    def __call__(self, *args: Any) -> None:
        ignore_stop_signals()
        _resolve(self.target)(*args)


def ignore_stop_signals() -> None:
    """In a unit's process: leave SIGINT and SIGTERM to the daemon.

    A terminal's Ctrl-C reaches the whole foreground process group, and
    systemd's stop sends SIGTERM to every process of the service. Had the
    units died of them, the daemon's drain would have had no units to finish
    its in-flight requests with. The daemon stops its units itself, through
    the pipe (``UnitProcess.stop``), killing one that does not stop in time;
    a unit whose daemon is gone sees its pipe close and stops too.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def stop_signals_ignored() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM in the daemon while it spawns a unit.

    The new process inherits the ignored dispositions through exec, and
    Python keeps an inherited ignored SIGINT. So a Ctrl-C in the instant
    before the unit runs ``ignore_stop_signals`` cannot kill it half-started
    (its traceback, then a restart of a unit the daemon is about to stop).
    A signal that comes during the few milliseconds of the spawn itself is
    lost to the daemon too: press Ctrl-C again. Only the main thread may set
    handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _resolve(name: str) -> Callable[..., Any]:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


class Standby:
    """Spawn target of a warm spare: import and warm up now (seconds), run the unit when told to.

    A unit that dies is replaced by its spare, so recovery costs loading the
    models' weights, not starting Python, importing torch and transformers.
    """

    def __init__(self, entry: UnitEntry) -> None:
        self.entry = entry

    def __call__(self, config: UnitConfig, conn: Connection) -> None:
        ignore_stop_signals()
        run = _resolve(self.entry.target)
        if self.entry.warm:
            try:
                _resolve(self.entry.warm)(config)
            except Exception:  # noqa: BLE001 - the real start reports it properly
                pass
        try:
            config = conn.recv()
        except (EOFError, OSError):  # the daemon stopped, or no longer needs this spare
            return
        run(config, conn)


class UnitState(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"  # could not load its models; retried with back-off
    STOPPING = "stopping"
    STOPPED = "stopped"


class UnitListener(Protocol):
    """What the front end does with a unit's news (called on the event loop thread)."""

    def unit_ready(self, unit: UnitProcess, ready: ipc.Ready) -> None: ...
    def unit_events(self, unit: UnitProcess, events: list[ipc.TokenEvent]) -> None: ...
    def unit_down(self, unit: UnitProcess, reason: str) -> None: ...
    def unit_start_failed(self, unit: UnitProcess, error: str) -> None: ...
    def unit_changed(self, unit: UnitProcess, kind: str, message: str) -> None: ...  # for the event log
    def unit_model(self, unit: UnitProcess, msg: object) -> None: ...  # a model loaded, failed to, or unloaded


class UnitProcess:
    """One unit's process and pipe, across restarts (each start is a new *generation*)."""

    def __init__(
        self,
        config: UnitConfig,
        listener: UnitListener,
        loop: asyncio.AbstractEventLoop,
        entry: Callable[..., None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        warm_spare: bool = False,
    ) -> None:
        self.config = config
        self.name = config.name
        self.listener = listener
        self.loop = loop
        self.entry = entry or UnitEntry()
        self.clock = clock
        self.state = UnitState.STOPPED
        self.ready: ipc.Ready | None = None  # the latest Ready (models and pool of the live generation)
        self.restarts = 0
        self.last_error: str | None = None
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self._gen = 0
        self._proc: Any = None
        self._conn: Connection | None = None
        self._stats_waiters: list[asyncio.Future[ipc.StatsSnapshot | None]] = []
        self._crashes: deque[float] = deque(maxlen=8)
        self._stopped = asyncio.Event()
        # A standby process (module imported, no models) to replace the unit if it dies.
        self.warm_spare = warm_spare and isinstance(self.entry, UnitEntry)
        self._spare: tuple[Any, Connection] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    @property
    def spare_pid(self) -> int | None:
        return self._spare[0].pid if self._spare is not None and self._spare[0].is_alive() else None

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        if self.state in (UnitState.STOPPING, UnitState.STOPPED) and self._gen:
            return  # stopped while a restart was scheduled
        proc, parent = self._take_spare() or self._spawn()
        self._gen += 1
        self._proc, self._conn = proc, parent
        self.state = UnitState.STARTING if self.restarts == 0 else UnitState.RESTARTING
        self.started_at = self.clock()
        self._stopped.clear()
        log.info("unit %s: process %d loads %s", self.name, proc.pid, ", ".join(m.name for m in self.config.models))
        kind = "unit_starting" if self.restarts == 0 else "unit_restarting"
        self.listener.unit_changed(self, kind, f"process {proc.pid} loads {', '.join(m.name for m in self.config.models)}")
        threading.Thread(target=self._read, args=(self._gen, proc, parent), name=f"muxd-read-{self.name}", daemon=True).start()

    def _spawn(self) -> tuple[Any, Connection]:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=self.entry, args=(self.config, child), name=f"muxd-unit-{self.name}", daemon=True)
        with stop_signals_ignored():
            proc.start()
        child.close()  # else the pipe never reports EOF when the unit dies
        return proc, parent

    def _take_spare(self) -> tuple[Any, Connection] | None:
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        proc, conn = spare
        try:
            if proc.is_alive():
                conn.send(self.config)
                return proc, conn
        except OSError:
            pass
        proc.kill()
        conn.close()
        return None

    def _spawn_spare(self) -> None:
        if not self.warm_spare or self._spare is not None or self.state is not UnitState.READY:
            return
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        target = Standby(self.entry)  # type: ignore[arg-type]
        proc = ctx.Process(target=target, args=(self.config, child), name=f"muxd-spare-{self.name}", daemon=True)
        with stop_signals_ignored():
            proc.start()
        child.close()
        self._spare = (proc, parent)

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:  # it holds no state: no need to ask it nicely
            spare[0].kill()
            spare[0].join(timeout=5)
            spare[1].close()

    def send(self, msg: object) -> None:
        """Send to the live unit, or raise ``UnitUnavailableError`` (503) if it is not serving."""
        if self.state is not UnitState.READY or self._conn is None:
            raise UnitUnavailableError(self.unavailable_reason())
        try:
            self._conn.send(msg)
        except OSError as e:  # it died a moment ago; the reader thread reports it
            raise UnitUnavailableError(f"unit {self.name} is down ({e}); it is being restarted") from None

    def try_send(self, msg: object) -> None:
        """Send if the unit is up; drop the message otherwise (aborts of a dead unit's requests)."""
        if self.state is UnitState.READY and self._conn is not None:
            try:
                self._conn.send(msg)
            except OSError:
                pass

    def unavailable_reason(self) -> str:
        if self.state is UnitState.STARTING:
            return f"unit {self.name} is starting (loading its models); retry in a few seconds"
        if self.state in (UnitState.RESTARTING, UnitState.FAILED):
            detail = f": {self.last_error}" if self.last_error else ""
            return f"unit {self.name} is restarting after a failure{detail}; retry in a few seconds"
        return f"unit {self.name} is {self.state.value}; the daemon is shutting down"

    async def stats(self, timeout: float = 5.0) -> ipc.StatsSnapshot | None:
        """A fresh snapshot from the unit, or None if it is not serving or does not answer in time."""
        if self.state is not UnitState.READY:
            return None
        future: asyncio.Future[ipc.StatsSnapshot | None] = self.loop.create_future()
        if not self._stats_waiters:
            try:
                self.send(ipc.StatsRequest())
            except UnitUnavailableError:
                return None
        self._stats_waiters.append(future)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            if future in self._stats_waiters:
                self._stats_waiters.remove(future)

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Ask the unit to shut down; kill it if it has not exited within ``timeout``."""
        proc = self._proc
        self.state = UnitState.STOPPING
        await asyncio.get_running_loop().run_in_executor(None, self._drop_spare)
        if proc is None or not proc.is_alive():
            self.state = UnitState.STOPPED
            return
        if self._conn is not None:
            try:
                self._conn.send(ipc.Shutdown())
            except OSError:
                pass
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("unit %s did not stop within %.0f s; killing process %d", self.name, timeout, proc.pid)
            proc.kill()
            await self._stopped.wait()
        self.state = UnitState.STOPPED

    # -- the reader thread -----------------------------------------------------
    def _read(self, gen: int, proc: Any, conn: Connection) -> None:
        """Block on the pipe and the process sentinel; hand every message to the loop."""
        poller = select.poll()  # made once: wait() would build a selector per message
        poller.register(conn.fileno(), select.POLLIN)
        poller.register(proc.sentinel, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if conn.fileno() not in ready:
                    break  # the process is gone and nothing is left to read
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    break
                self._to_loop(self._on_message, gen, msg)
        finally:
            proc.join(timeout=STOP_TIMEOUT_S)
            self._to_loop(self._on_exit, gen, proc.exitcode)

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop has closed: the daemon is exiting
            pass

    # -- on the event loop -------------------------------------------------------
    def _on_message(self, gen: int, msg: object) -> None:
        if gen != self._gen:
            return
        if isinstance(msg, list):
            self.listener.unit_events(self, msg)
        elif isinstance(msg, ipc.StatsSnapshot):
            waiters, self._stats_waiters = self._stats_waiters, []
            for f in waiters:
                if not f.done():
                    f.set_result(msg)
        elif isinstance(msg, (ipc.ModelLoaded, ipc.ModelLoadFailed, ipc.ModelUnloaded)):
            self.listener.unit_model(self, msg)
        elif isinstance(msg, ipc.Ready):
            self._on_ready(msg)
        elif isinstance(msg, ipc.StartFailed):
            self.last_error = msg.error
            log.error("unit %s could not load its models: %s", self.name, msg.error)
            self.listener.unit_changed(self, "unit_failed", f"could not load its models: {msg.error}")
            first = self.restarts == 0
            if self.state not in (UnitState.STOPPING, UnitState.STOPPED):  # stopping: its exit is no crash to restart
                self.state = UnitState.FAILED
            if first:
                self.listener.unit_start_failed(self, msg.error)
        else:
            log.error("unit %s sent an unknown message %r", self.name, msg)

    def _on_ready(self, ready: ipc.Ready) -> None:
        if self.state in (UnitState.STOPPING, UnitState.STOPPED):
            return  # told to stop while it loaded: it reads its Shutdown next and exits
        self.ready = ready
        self.state = UnitState.READY
        self.ready_at = self.clock()
        took = self.ready_at - (self.started_at or self.ready_at)
        what = "restarted" if self.restarts else "ready"
        log.info("unit %s %s in %.2f s: %d KV pages (%d MiB)", self.name, what, took, ready.kv_pages, ready.kv_bytes >> 20)
        self.listener.unit_changed(self, "unit_ready", f"{what} in {took:.2f} s: {ready.kv_pages} KV pages ({ready.kv_bytes >> 20} MiB)")
        self.listener.unit_ready(self, ready)
        self._spawn_spare()

    def _on_exit(self, gen: int, exitcode: int | None) -> None:
        if gen != self._gen:
            return
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        for f in self._stats_waiters:
            if not f.done():
                f.set_result(None)
        self._stats_waiters = []
        self._stopped.set()
        if self.state in (UnitState.STOPPING, UnitState.STOPPED):
            self.state = UnitState.STOPPED
            log.info("unit %s stopped", self.name)
            self.listener.unit_changed(self, "unit_stopped", "stopped")
            return
        reason = f"unit {self.name} {describe_exit(exitcode)}"
        if self.state is UnitState.READY:
            self.last_error = reason
        failed_to_load = self.state is UnitState.FAILED
        log.error("%s; failing its in-flight requests and restarting it", reason)
        self.listener.unit_changed(self, "unit_crashed", reason)
        self.listener.unit_down(self, reason)
        if failed_to_load and self.restarts == 0:
            return  # the first start failed: the daemon reports it and exits
        self.state = UnitState.RESTARTING
        self.restarts += 1
        delay = self._backoff()
        if delay:
            log.warning("unit %s crashed %d times in %.0f s; restarting in %.0f s", self.name, len(self._crashes), CRASH_WINDOW_S, delay)
        self.loop.call_later(delay, self.start)

    def _backoff(self) -> float:
        now = self.clock()
        self._crashes.append(now)
        recent = [t for t in self._crashes if now - t < CRASH_WINDOW_S]
        return 0.0 if len(recent) <= 1 else min(MAX_BACKOFF_S, 2.0 ** (len(recent) - 2))


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "process vanished"
    if exitcode < 0:
        try:
            return f"process was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"process was killed by signal {-exitcode}"
    return f"process exited with code {exitcode}"
