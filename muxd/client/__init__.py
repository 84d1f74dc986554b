"""muxd's client library: the daemon's API over its Unix socket (httpx; no torch).

    from muxd.client import Client

    with Client() as client:                       # finds the socket as the daemon picks it
        print(client.chat("smollm2", "What is the capital of France?", max_tokens=32).text)
        for chunk in client.chat("smollm2", "Tell me a joke.", stream=True):
            print(chunk.text, end="", flush=True)

``AsyncClient`` has the same methods, awaited. Errors are typed
(``BadRequestError``, ``NotFoundError``, ``RateLimitError``, ...), all
``muxd.errors.MuxdError``.
"""

from muxd.client._base import resolve_socket as find_socket
from muxd.client.aio import AsyncClient, AsyncStatsStream, AsyncStream
from muxd.client.errors import (
    APIError, BadRequestError, ConnectionLostError, DaemonNotRunningError, InternalServerError, NotFoundError,
    PermissionDeniedError, RateLimitError, UnavailableError,
)  # fmt: skip
from muxd.client.sync import Client, StatsStream, Stream

__all__ = [
    "Client", "AsyncClient", "Stream", "AsyncStream", "StatsStream", "AsyncStatsStream", "find_socket", "APIError", "BadRequestError",
    "ConnectionLostError", "DaemonNotRunningError", "InternalServerError", "NotFoundError", "PermissionDeniedError",
    "RateLimitError", "UnavailableError",
]  # fmt: skip
