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
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from muxd import __version__
from muxd.errors import MuxdError
from muxd.nvml import GpuReading, Nvml
from muxd.server.openai_api import ClientGone, OpenAIRoutes
from muxd.server.openapi import openapi_document
from muxd.server.telemetry import BusyWindow, prometheus

if TYPE_CHECKING:
    from muxd.server.daemon import Daemon

log = logging.getLogger("muxd.server")


def build_app(daemon: Daemon) -> Starlette:
    api = OpenAIRoutes(daemon.served, daemon.router, daemon.telemetry)
    own = MuxdRoutes(daemon)
    routes = [
        Route("/v1/models", api.list_models, methods=["GET"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/healthz", own.health, methods=["GET"]),
        Route("/muxd/v1/status", own.status, methods=["GET"]),
        Route("/muxd/v1/stats", own.stats, methods=["GET"]),
        Route("/muxd/v1/shutdown", own.shutdown, methods=["POST"]),
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
    """``/healthz``, ``/muxd/v1/{status,stats,shutdown}``, ``/metrics``, ``/openapi.json``."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._busy: dict[str, BusyWindow] = {}  # unit -> its busy fraction over the last WINDOW_S
        self._nvml = Nvml()  # initialised on the first /stats with a unit on a GPU

    def health_doc(self) -> dict[str, Any]:
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
        return {"status": status, "units": units, "restarts": restarts}

    async def health(self, request: Request) -> Response:
        doc = self.health_doc()
        return JSONResponse(doc, status_code=200 if doc["status"] == "ok" else 503)

    async def status(self, request: Request) -> Response:
        d = self.daemon
        units = []
        for name, u in d.units.items():
            pool = None
            if u.ready is not None:
                pool = {"pages_total": u.ready.kv_pages, "pages_free": None, "page_tokens": u.config.page_tokens,
                        "bytes": u.ready.kv_bytes}  # fmt: skip
            units.append({
                "name": name, "device": u.config.device, "state": u.state.value, "pid": u.pid, "spare_pid": u.spare_pid,
                "policy": u.config.policy, "restarts": u.restarts, "models": [m.name for m in u.config.models],
                "pool": pool, "last_error": u.last_error,
            })  # fmt: skip
        models = []
        for name, s in d.served.items():
            info = s.info
            models.append({
                "name": name, "unit": s.unit, "state": d.units[s.unit].state.value, "path": s.config.path,
                "dtype": info.dtype if info else s.config.dtype, "quantization": s.config.quantization,
                "device": info.device if info else s.config.device,
                "max_model_len": s.max_position, "weight_bytes": info.weight_bytes if info else None,
                "rate": s.config.rate, "plan": info.plan if info else None,
                "plan_notes": list(info.plan_notes) if info else [],
            })  # fmt: skip
        policies = sorted({u.config.policy for u in d.units.values()})
        return JSONResponse({
            "version": __version__, "pid": os.getpid(), "socket": str(d.config.socket),
            "uptime_s": round(time.time() - d.started, 3), "placement": d.config.placement,
            "policy": ",".join(policies), "units": units, "models": models,
        })  # fmt: skip

    async def stats_doc(self) -> dict[str, Any]:
        d = self.daemon
        names = list(d.units)
        snaps = dict(zip(names, await asyncio.gather(*(d.units[n].stats() for n in names))))
        models = {}
        for name, s in d.served.items():
            snap = snaps[s.unit]
            ms = snap.models.get(name) if snap else None
            t = d.telemetry.models[name]
            models[name] = {
                "unit": s.unit,
                "running": ms.running if ms else 0,
                "queued": ms.waiting if ms else d.router.waiting[name],
                "in_flight": d.router.in_flight[name],
                "done": t.done, "errors": t.errors, "rejected": t.rejected,
                "prompt_tokens": t.prompt_tokens, "generated_tokens": t.generated_tokens,
                "tokens_per_s": round(d.telemetry.tokens_per_s(name), 3),
                "pages_held": ms.pages_held if ms else None, "pages_quota": ms.pages_quota if ms else None,
                "pages_cached": ms.pages_cached if ms else None,
                "prefix_hit_tokens": ms.prefix_hit_tokens if ms else None,
                "prefix_query_tokens": ms.prefix_query_tokens if ms else None,
                **d.telemetry.latency_ms(name),
                "slo_attainment": d.telemetry.slo_attainment(name),
            }  # fmt: skip
        units, devices = {}, {}
        on_gpu = any(u.config.device.startswith("cuda") for u in d.units.values())
        gpus = self._nvml.snapshot(u.pid for u in d.units.values() if u.pid) if on_gpu else []
        for name, snap in snaps.items():
            u = d.units[name]
            units[name] = {
                "state": u.state.value,
                "pages_total": snap.kv_pages_total if snap else None,
                "pages_free": snap.kv_pages_free if snap else None,
                "steps": snap.steps if snap else None,
                "preemptions": snap.preemptions if snap else None,
                "busy_s": round(snap.busy_s, 6) if snap else None,
            }
            key = u.config.device if u.config.device not in devices else f"{u.config.device} ({name})"
            devices[key] = device_doc(name, u.config.device, u.pid, self._utilization(name, snap), gpus)
        return {"time": time.time(), "models": models, "units": units, "devices": devices}

    def _utilization(self, unit: str, snap: Any) -> float | None:
        if snap is None:
            return None
        u = self.daemon.units[unit]
        return self._busy.setdefault(unit, BusyWindow()).read(snap.busy_s, u.restarts, u.ready_at)

    async def stats(self, request: Request) -> Response:
        return JSONResponse(await self.stats_doc())

    async def metrics(self, request: Request) -> Response:
        text = prometheus(await self.stats_doc(), self.health_doc())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(__version__))

    async def shutdown(self, request: Request) -> Response:
        asyncio.get_running_loop().call_soon(self.daemon.request_shutdown)
        return JSONResponse({"status": "stopping", "drain_timeout_s": self.daemon.config.limits.drain_timeout_s})


def device_doc(unit: str, device: str, pid: int | None, utilization: float | None, gpus: list[GpuReading]) -> dict[str, Any]:
    """A unit's device figures (``protocol.DeviceStats``): on a CPU the unit
    process's RSS and the machine's RAM; on a GPU its GPU memory and the
    GPU's NVML readings where NVML has them, else its RSS."""
    doc = {"unit": unit, "utilization": utilization, "memory_used_bytes": _rss_bytes(pid), "memory_total_bytes": None}
    if device == "cpu":
        return {**doc, "memory_total_bytes": _mem_total_bytes()}
    index = int(device.partition(":")[2] or 0) if device.startswith("cuda") else -1
    reading = next((g for g in gpus if g.stats.index == index), None)
    if reading is None:
        return doc
    used = reading.process_memory_bytes.get(pid) if pid is not None else None
    return {**doc, "memory_used_bytes": used if used is not None else doc["memory_used_bytes"],
            "memory_total_bytes": reading.stats.memory_total_bytes, "gpu": reading.stats.model_dump()}  # fmt: skip


def _rss_bytes(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _mem_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None
