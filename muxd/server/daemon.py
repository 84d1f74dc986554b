"""The daemon's life: claim the socket, start the units, serve HTTP, drain, clean up.

``Daemon.run`` is the whole of ``muxd serve`` once the configuration is
resolved. The order matters:

1. ``uds.claim`` (in ``serve``) before anything slow, so a second daemon on
   the same socket is refused at once and the first is never touched.
2. Units are spawned and the socket is bound at once; until a unit is ready
   its models answer 503 "starting" and ``/healthz`` says so.
3. SIGTERM / SIGINT (or ``POST /muxd/v1/shutdown``): the listeners close (new
   connections are refused), in-flight requests run on for up to
   ``limits.drain_timeout_s``, then the units are stopped, the socket is
   unlinked and the process exits 0. A second SIGINT forces the exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

import uvicorn

from muxd import ipc
from muxd.config import DaemonConfig
from muxd.errors import ConfigError
from muxd.server import uds
from muxd.server.app import build_app
from muxd.server.generation import ServedModel
from muxd.server.residency import Residency
from muxd.server.router import Router
from muxd.server.events import EventLog
from muxd.server.stats_feed import StatsFeed
from muxd.server.supervisor import UnitProcess
from muxd.server.telemetry import Telemetry

log = logging.getLogger("muxd.server")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: the daemon installs its own.

    uvicorn re-raises a captured SIGTERM after shutting down, which would
    end the process with -15 instead of exit code 0.
    """

    def capture_signals(self):  # type: ignore[override]
        import contextlib

        return contextlib.nullcontext()


class Daemon:
    def __init__(self, config: DaemonConfig, *, unit_entry=None) -> None:
        self.config = config
        self.unit_entry = unit_entry
        self.started = time.time()
        self.telemetry = Telemetry(config.models)
        self.events = EventLog()
        try:
            self.served = {m.name: ServedModel.load(m, u.name) for u in config.units for m in u.models}
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"cannot read a model's tokenizer or config: {e}") from e
        self.units: dict[str, UnitProcess] = {}
        self.router: Router | None = None
        self.residency = Residency(config, self.served, self.events, self._in_flight)
        self.server: _Server | None = None
        self.fatal: str | None = None
        self.feed: StatsFeed | None = None
        self.stopping = False

    def _in_flight(self, model: str) -> int:
        return self.router.in_flight[model] if self.router is not None else 0

    # -- the unit listener ---------------------------------------------------------
    def unit_ready(self, unit: UnitProcess, ready: ipc.Ready) -> None:
        for info in ready.models:
            served = self.served.get(info.name)
            if served is not None:
                if not served.prepared:  # a GGUF file: its tokenizer is in the directory converted at start
                    served.prepare(info.source_dir)
                served.info = info
                served.max_position = info.max_position
            plan = f", plan {info.plan}" if info.plan else ""
            self.events.add("model_loaded", f"{info.weight_bytes / 2**20:.0f} MiB of weights on {info.device}{plan}",
                            unit=unit.name, model=info.name)  # fmt: skip
        self.residency.unit_ready(unit.name, ready)
        if all(u.state.value == "ready" for u in self.units.values()) and unit.restarts == 0:
            names = ", ".join(n for n, s in self.served.items() if s.config.preload)
            log.info("muxd serving %s on %s", names, self.config.socket)

    def unit_events(self, unit: UnitProcess, events: list[ipc.TokenEvent]) -> None:
        self.router.deliver(events)

    def unit_model(self, unit: UnitProcess, msg: object) -> None:
        self.residency.unit_model(unit.name, msg)
        if self.feed is not None:
            self.feed.poke()

    def unit_down(self, unit: UnitProcess, reason: str) -> None:
        self.residency.unit_down(unit.name, reason)
        n = self.router.fail_unit(unit, reason)
        if n:
            log.warning("failed %d in-flight request(s) of unit %s with 503", n, unit.name)

    def unit_changed(self, unit: UnitProcess, kind: str, message: str) -> None:
        self.events.add(kind, message, unit=unit.name)  # type: ignore[arg-type]
        if self.feed is not None:
            self.feed.poke()

    def unit_start_failed(self, unit: UnitProcess, error: str) -> None:
        self.fatal = f"unit {unit.name} could not load its models: {error}"
        self.request_shutdown()

    # -- running -----------------------------------------------------------------
    def request_shutdown(self) -> None:
        if not self.stopping:
            log.info("shutting down: no new connections; draining in-flight requests (up to %.0f s)",
                     self.config.limits.drain_timeout_s)  # fmt: skip
        self.stopping = True
        if self.feed is not None:
            self.feed.close()  # the stats streams end, so the drain waits only for requests
        if self.server is not None:
            self.server.should_exit = True

    def _force_exit(self) -> None:
        if self.server is not None and self.server.should_exit:
            log.warning("second interrupt: exiting without draining")
            self.server.force_exit = True
        self.request_shutdown()

    async def run(self, claim: uds.Claim) -> int:
        """Serve until told to stop; return the process exit code."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_shutdown)
        loop.add_signal_handler(signal.SIGINT, self._force_exit)
        spare = self.config.warm_spare
        self.units = {u.name: UnitProcess(u, self, loop, self.unit_entry, warm_spare=spare) for u in self.config.units}
        self.router = Router({m: self.units[s.unit] for m, s in self.served.items()}, self.config.limits.queue_per_model)
        sockets = [uds.bind_unix(self.config.socket)]
        try:
            if self.config.tcp:
                sockets.append(uds.bind_tcp(*self.config.tcp))
                log.warning("also listening on tcp %s:%d, with no authentication", *self.config.tcp)
            self.residency.units = self.units
            for unit in self.units.values():
                unit.start()
            self.feed = StatsFeed(self)
            ticker = asyncio.create_task(self.feed.run(), name="muxd-stats")
            keep_alive = asyncio.create_task(self.residency.run(), name="muxd-keep-alive")
            self.server = _Server(self._uvicorn_config())
            if self.stopping:
                self.server.should_exit = True
            await self.server.serve(sockets=sockets)
        finally:
            if self.feed is not None:
                ticker.cancel()
                keep_alive.cancel()
            for s in sockets:
                s.close()
            await asyncio.gather(*(u.stop() for u in self.units.values()))
            uds.unlink_socket(self.config.socket)  # last: a vanished socket means the daemon is done
            claim.release()
        if self.fatal:
            log.error("%s", self.fatal)
            return 1
        log.info("muxd stopped")
        return 0

    def _uvicorn_config(self) -> uvicorn.Config:
        allowed = uds.allowed_uids(self.config.allow_uids)
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        return uvicorn.Config(
            build_app(self),
            http=uds.peer_checked(AutoHTTPProtocol, allowed),
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=self.config.log_level == "debug",
            timeout_graceful_shutdown=self.config.limits.drain_timeout_s,
            timeout_keep_alive=30,
        )


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's per-connection chatter only when debugging
    logging.getLogger("uvicorn.error").setLevel("DEBUG" if level == "debug" else "WARNING")
    logging.getLogger("uvicorn.access").setLevel("INFO" if level == "debug" else "WARNING")


def serve(config: DaemonConfig, claim: uds.Claim | None = None) -> int:
    """Run the daemon in this process (blocking); the socket is claimed here unless ``claim`` is given."""
    setup_logging(config.log_level)
    claim = claim or uds.claim(config.socket)
    try:
        daemon = Daemon(config)
    except BaseException:
        claim.release()
        raise
    log.info("muxd %s (pid %d) starting on %s: %s", _version(), os.getpid(), config.socket,
             "; ".join(f"{u.name}[{', '.join(m.name for m in u.models)}]" for u in config.units))  # fmt: skip
    return asyncio.run(daemon.run(claim))


def _version() -> str:
    from muxd import __version__

    return __version__
