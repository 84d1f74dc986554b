"""Following a daemon's stats stream across its stops and restarts.

``follow`` yields what the stream sends (``Stats`` and ``Event`` documents)
and, between them, what became of the connection: ``Connected`` with the
daemon's status when a stream opens, ``Down`` with a message to show when
it cannot. It never ends on its own and never raises for a daemon that is
gone: it retries, sooner at first, then every ``max_backoff_s``.

Events are not missed or repeated: reconnecting to the same daemon replays
the events after the last one read; a new daemon (another pid) replays its
whole ring, from id 0.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from muxd.client import AsyncStatsStream, DaemonNotRunningError
from muxd.errors import MuxdError
from muxd.protocol import Event, Health, Stats, Status


class StatsClient(Protocol):
    """What the dashboard needs of ``muxd.client.AsyncClient`` (tests pass a fake)."""

    socket: Path

    async def health(self) -> Health: ...

    async def status(self) -> Status: ...

    async def stats_stream(self, interval_ms: int = 500, last_event_id: int | None = None) -> AsyncStatsStream: ...


@dataclass(frozen=True)
class Connected:
    status: Status


@dataclass(frozen=True)
class Down:
    message: str


@dataclass(frozen=True)
class Backoff:
    """Seconds between tries: ``first_s``, doubling up to ``max_s``, back to ``first_s`` once connected."""

    first_s: float = 0.1
    max_s: float = 2.0


Item = Stats | Event | Connected | Down


class Stopping(Exception):
    """The daemon answers, but is shutting down."""


async def follow(client: StatsClient, interval_ms: int, backoff: Backoff = Backoff(),
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> AsyncIterator[Item]:  # fmt: skip
    pid: int | None = None
    last_event_id = 0
    delay = backoff.first_s
    while True:
        stream: AsyncStatsStream | None = None
        try:
            if (await client.health()).status == "stopping":  # a stream opened now would hold its drain up
                raise Stopping()
            status = await client.status()
            if status.pid != pid:
                pid, last_event_id = status.pid, 0
            stream = await client.stats_stream(interval_ms, last_event_id)
            yield Connected(status)
            delay = backoff.first_s
            async for item in stream:
                yield item
            yield Down(f"the muxd daemon on {client.socket} closed the stream; reconnecting")
        except Stopping:
            yield Down(f"the muxd daemon on {client.socket} is stopping; retrying")
        except DaemonNotRunningError:
            yield Down(f"no muxd daemon on {client.socket}; retrying")
        except httpx.TimeoutException:
            yield Down(f"the muxd daemon on {client.socket} does not answer; retrying")
        except (MuxdError, httpx.HTTPError, OSError, ValueError) as e:  # ValueError: a document this client cannot read
            yield Down(f"lost the muxd daemon on {client.socket} ({_reason(e)}); retrying")
        finally:
            if stream is not None:
                last_event_id = stream.last_event_id or 0
                with contextlib.suppress(MuxdError, httpx.HTTPError, OSError):  # it is gone either way
                    await stream.aclose()
        await sleep(delay)
        delay = min(delay * 2, backoff.max_s)


def _reason(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:120]
