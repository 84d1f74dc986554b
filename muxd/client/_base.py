"""What the sync and async clients share: request bodies, SSE parsing, error mapping."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from muxd.client.errors import ConnectionLostError, DaemonNotRunningError, error_from
from muxd.paths import find_socket
from pydantic import BaseModel

from muxd.protocol import Event, NamedToolChoice, ResponseFormat, Stats, Tool

BASE_URL = "http://muxd"  # the host is ignored on a Unix socket
DONE = object()

Messages = str | Sequence[dict[str, Any]]
# A response_format: the protocol's model, its dict, or a pydantic model class (its JSON Schema, strict).
ResponseFormatLike = ResponseFormat | dict[str, Any] | type[BaseModel]
ToolLike = Tool | dict[str, Any]
ToolChoiceLike = str | NamedToolChoice | dict[str, Any]


def resolve_socket(socket: str | Path | None = None) -> Path:
    """``socket``, else the one the daemon picks: ``$MUXD_SOCKET``, the config file's, the default."""
    return Path(socket).expanduser() if socket else find_socket()


def completion_body(model: str, prompt: str | list[int], stream: bool, params: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, **_params(stream, params)}


def chat_body(model: str, messages: Messages, stream: bool, params: dict[str, Any]) -> dict[str, Any]:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return {"model": model, "messages": list(messages), **_params(stream, params)}


def structured_params(
    response_format: ResponseFormatLike | None = None,
    tools: Sequence[ToolLike] | None = None,
    tool_choice: ToolChoiceLike | None = None,
) -> dict[str, Any]:
    """The JSON of the typed structured-output and tool parameters (None: left out)."""
    out: dict[str, Any] = {}
    if isinstance(response_format, type) and issubclass(response_format, BaseModel):
        schema = response_format.model_json_schema()
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": response_format.__name__, "schema": schema, "strict": True}}
    elif response_format is not None:
        out["response_format"] = _jsonable(response_format)
    if tools is not None:
        out["tools"] = [_jsonable(t) for t in tools]
    if tool_choice is not None:
        out["tool_choice"] = _jsonable(tool_choice)
    return out


def _jsonable(value: Any) -> Any:
    return value.model_dump(by_alias=True, exclude_none=True) if isinstance(value, BaseModel) else value


def _params(stream: bool, params: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in params.items() if v is not None}
    if stream:
        body["stream"] = True
        if body.pop("include_usage", False):
            body["stream_options"] = {"include_usage": True}
    else:
        body.pop("include_usage", None)
    return body


def parse_event(line: str) -> Any:
    """One SSE line: the decoded ``data:`` object, ``DONE``, or None for anything else."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return DONE
    event = json.loads(data)
    if isinstance(event, dict) and event.get("error"):
        raise error_from(None, event)
    return event


class SseDecoder:
    """Server-sent events from lines: ``feed`` returns ``(event, data, id)`` when a blank line ends one.

    Comment lines (``:``, the keep-alives) are skipped; ``data`` lines of one
    event are joined by newlines, as the SSE standard says.
    """

    def __init__(self) -> None:
        self.event, self.data, self.id = "message", [], None

    def feed(self, line: str) -> tuple[str, str, str | None] | None:
        if not line:
            if not self.data:
                self.event = "message"
                return None
            out = (self.event, "\n".join(self.data), self.id)
            self.event, self.data, self.id = "message", [], None
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id":
            self.id = value
        return None


def stats_item(event: str, data: str) -> Stats | Event | None:
    """A ``/muxd/v1/stats/stream`` event as its protocol model (None for an event kind this client does not know)."""
    if event == "stats":
        return Stats.model_validate_json(data)
    if event == "event":
        return Event.model_validate_json(data)
    if event == "error":
        raise error_from(None, json.loads(data))
    return None


class StatsEvents:
    """The lines of a stats stream as ``Stats`` and ``Event`` items, following the last event id read."""

    def __init__(self, last_event_id: int | None) -> None:
        self.decoder = SseDecoder()
        self.last_event_id = last_event_id

    def feed(self, line: str) -> Stats | Event | None:
        done = self.decoder.feed(line)
        item = stats_item(done[0], done[1]) if done else None
        if isinstance(item, Event):
            self.last_event_id = item.id
        return item


def stats_stream_request(interval_ms: int, last_event_id: int | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The query and headers of a stats stream: ``Last-Event-ID`` replays the events after it."""
    headers = {"accept": "text/event-stream"}
    if last_event_id is not None:
        headers["last-event-id"] = str(last_event_id)
    return {"interval_ms": interval_ms}, headers


def raise_for_status(response: httpx.Response, body: bytes) -> None:
    if response.status_code >= 400:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = body.decode(errors="replace")
        raise error_from(response.status_code, parsed, response.headers.get("retry-after"))


def not_running(socket: Path, error: Exception) -> DaemonNotRunningError:
    return DaemonNotRunningError(f"no muxd daemon answers on {socket} ({error}); start one with `muxd serve`")


def lost(error: Exception) -> ConnectionLostError:
    return ConnectionLostError(f"the daemon closed the connection mid-response ({error})")
