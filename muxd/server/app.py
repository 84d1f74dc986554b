"""The HTTP application: the OpenAI routes, muxd's own, and errors as OpenAI-style JSON.

Every error a client can cause is a ``MuxdError`` with its status (never a
5xx for bad input); 429 and 503 carry ``Retry-After``. Unknown paths and
methods answer in the same JSON shape. An unexpected exception is a 500
whose body names it, and is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from muxd import __version__
from muxd.errors import MuxdError
from muxd.errors import InvalidRequestError, ModelNotFoundError, UnitUnavailableError
from muxd.protocol import Health, ModelLoadRequest, ModelStatus, PoolStatus, Status, UnitStatus
from muxd.server.openai_api import ClientGone, OpenAIRoutes, keep_alive_seconds, parse_body
from muxd.server.openapi import openapi_document
from muxd.server.prometheus import prometheus
from muxd.server.stats_feed import StatsFeed

if TYPE_CHECKING:
    from muxd.server.daemon import Daemon

log = logging.getLogger("muxd.server")


def build_app(daemon: Daemon) -> Starlette:
    api = OpenAIRoutes(daemon.served, daemon.router, daemon.telemetry, daemon.residency)
    own = MuxdRoutes(daemon)
    routes = [
        Route("/v1/models", api.list_models, methods=["GET"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/healthz", own.health, methods=["GET"]),
        Route("/muxd/v1/status", own.status, methods=["GET"]),
        Route("/muxd/v1/stats", own.stats, methods=["GET"]),
        Route("/muxd/v1/stats/stream", own.stats_stream, methods=["GET"]),
        Route("/muxd/v1/shutdown", own.shutdown, methods=["POST"]),
        Route("/muxd/v1/models/{name}/load", own.load_model, methods=["POST"]),
        Route("/muxd/v1/models/{name}/unload", own.unload_model, methods=["POST"]),
        Route("/metrics", own.metrics, methods=["GET"]),
        Route("/openapi.json", own.openapi, methods=["GET"]),
    ]
    handlers = {MuxdError: muxd_error, HTTPException: http_error, ClientGone: client_gone, Exception: internal_error}
    return Starlette(routes=routes, exception_handlers=handlers)


async def muxd_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MuxdError)
    headers = {}
    retry = getattr(exc, "retry_after_s", None)
    if retry is not None:
        headers["Retry-After"] = str(max(1, round(retry)))
    return JSONResponse(exc.to_dict(), status_code=exc.http_status, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no route {request.url.path}; see /openapi.json for the API"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    body = {"error": {"message": message, "type": "HTTPException", "code": str(exc.status_code), "param": None}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)  # nobody reads it: the client has disconnected


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    message = f"internal error: {type(exc).__name__}: {exc}; the daemon's log has the traceback"
    body = {"error": {"message": message, "type": "InternalError", "code": "internal_error", "param": None}}
    return JSONResponse(body, status_code=500)


class MuxdRoutes:
    """``/healthz``, ``/muxd/v1/{status,stats,stats/stream,shutdown}``, ``/metrics``, ``/openapi.json``."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def health_doc(self) -> Health:
        units = {name: u.state.value for name, u in self.daemon.units.items()}
        if self.daemon.stopping:
            status = "stopping"
        elif all(s == "ready" for s in units.values()):
            status = "ok"
        elif all(s in ("ready", "starting") for s in units.values()):
            status = "starting"
        else:
            status = "degraded"  # a unit is restarting or failed
        restarts = {name: u.restarts for name, u in self.daemon.units.items()}
        return Health(status=status, units=units, restarts=restarts)

    async def health(self, request: Request) -> Response:
        doc = self.health_doc()
        return JSONResponse(doc.model_dump(), status_code=200 if doc.status == "ok" else 503)

    async def status(self, request: Request) -> Response:
        d = self.daemon
        units = [
            UnitStatus(
                name=name, device=u.config.device, state=u.state.value, pid=u.pid, spare_pid=u.spare_pid,
                policy=u.config.policy, restarts=u.restarts, models=[m.name for m in u.config.models],
                pool=None if u.ready is None else PoolStatus(pages_total=u.ready.kv_pages, page_tokens=u.config.page_tokens,
                                                             bytes=u.ready.kv_bytes),
                last_error=u.last_error, memory_budget_bytes=d.residency.budgets[name],
                memory_used_bytes=d.residency.used(name), compute=u.ready and u.ready.compute,
            )
            for name, u in d.units.items()
        ]  # fmt: skip
        models = [_model_status(d, name) for name in d.served]
        policies = sorted({u.config.policy for u in d.units.values()})
        doc = Status(version=__version__, pid=os.getpid(), socket=str(d.config.socket),
                     uptime_s=round(time.time() - d.started, 3), placement=d.config.placement,
                     policy=",".join(policies), units=units, models=models)  # fmt: skip
        return JSONResponse(doc.model_dump())

    async def stats(self, request: Request) -> Response:
        return JSONResponse((await self._feed().current()).model_dump())

    async def metrics(self, request: Request) -> Response:
        text = prometheus(await self._feed().current(), self.health_doc())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def stats_stream(self, request: Request) -> Response:
        """SSE: a ``stats`` event every ``interval_ms``, an ``event`` event (with its id) as each happens;
        ``Last-Event-ID`` first replays the events after it; a keep-alive comment when idle."""
        interval_ms = _int_param(request.query_params.get("interval_ms", "500"), "interval_ms", 50, 60_000)
        header = request.headers.get("last-event-id")
        last_id = None if header is None else _int_param(header, "Last-Event-ID", 0, None)
        feed, events = self._feed(), self.daemon.events
        if self.daemon.stopping:  # a stream now would hold the drain up until it times out
            raise UnitUnavailableError("the daemon is shutting down; reconnect when it is back")

        async def body() -> AsyncIterator[str]:
            sub = feed.subscribe(interval_ms / 1e3)
            try:
                for e in events.since(last_id) if last_id is not None else ():
                    yield sse("event", e.model_dump_json(), e.id)
                while True:
                    try:
                        item = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if item is None:
                        return
                    yield sse(*item)  # events queued after the replay's snapshot: none repeats
            finally:
                feed.unsubscribe(sub)

        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    def _feed(self) -> StatsFeed:
        if self.daemon.feed is None:
            raise UnitUnavailableError("the daemon is starting; retry in a moment")
        return self.daemon.feed

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(__version__))

    async def load_model(self, request: Request) -> Response:
        """Load a model now (if it is not), with an optional ``keep_alive``; answer its status."""
        name = self._known(request.path_params["name"])
        body = await request.body()
        keep = parse_body(ModelLoadRequest, body).keep_alive if body.strip() else None
        await self.daemon.residency.ensure(name, keep_alive_seconds(keep))
        return JSONResponse(_model_status(self.daemon, name).model_dump())

    async def unload_model(self, request: Request) -> Response:
        """Unload a model once its requests have finished; answer its status."""
        name = self._known(request.path_params["name"])
        await self.daemon.residency.unload(name)
        return JSONResponse(_model_status(self.daemon, name).model_dump())

    def _known(self, name: str) -> str:
        if name not in self.daemon.served:
            raise ModelNotFoundError(name, self.daemon.served)
        return name

    async def shutdown(self, request: Request) -> Response:
        asyncio.get_running_loop().call_soon(self.daemon.request_shutdown)
        return JSONResponse({"status": "stopping", "drain_timeout_s": self.daemon.config.limits.drain_timeout_s})


KEEPALIVE_S = 15.0


def sse(event: str, data: str, event_id: int | None = None) -> str:
    """One server-sent event; ``data`` is one line of JSON."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


def _int_param(text: str, name: str, low: int, high: int | None) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"of {low} or more"
        raise InvalidRequestError(f"{name} must be an integer {bounds}, got {text!r}", param=name)
    return value


def _model_status(d: Daemon, name: str) -> ModelStatus:
    s, r = d.served[name], d.residency.models[name]
    info = s.info
    expires = r.expires_in(time.monotonic(), d.router.in_flight[name] > 0 if d.router else False)
    return ModelStatus(
        name=name, unit=s.unit, state=d.units[s.unit].state.value, path=s.config.path,
        dtype=info.dtype if info else s.config.dtype, quantization=s.config.quantization,
        device=info.device if info else s.config.device, max_model_len=s.max_position,
        weight_bytes=d.residency.weight_bytes(r), weight_bytes_estimated=r.weight_bytes is None, rate=s.config.rate,
        plan=info.plan if info else None, plan_notes=list(info.plan_notes) if info else [],
        load_state=r.state.value, size_bytes=r.size_bytes, keep_alive_s=r.keep_alive,
        expires_in_s=None if expires is None else round(expires, 3), pinned=s.config.pinned,
        priority=s.config.priority, last_error=r.error,
    )  # fmt: skip
