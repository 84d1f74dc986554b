"""The stats stream's route: it refuses a stream while the daemon stops (one would hold the drain up)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from starlette.requests import Request

from muxd.errors import UnitUnavailableError
from muxd.server.app import MuxdRoutes
from muxd.server.events import EventLog


def stream_request(query: bytes = b"") -> Request:
    return Request({"type": "http", "method": "GET", "path": "/muxd/v1/stats/stream", "query_string": query,
                    "headers": []})  # fmt: skip


def test_a_stopping_daemon_refuses_a_stats_stream_with_a_503() -> None:
    daemon = SimpleNamespace(stopping=True, feed=SimpleNamespace(), events=EventLog())
    with pytest.raises(UnitUnavailableError, match="shutting down") as refused:
        asyncio.run(MuxdRoutes(daemon).stats_stream(stream_request()))
    assert refused.value.http_status == 503
