"""What the sync and async clients share: request bodies, SSE parsing, error mapping."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from muxd.client.errors import ConnectionLostError, DaemonNotRunningError, error_from
from muxd.paths import find_socket

BASE_URL = "http://muxd"  # the host is ignored on a Unix socket
DONE = object()

Messages = str | Sequence[dict[str, Any]]


def resolve_socket(socket: str | Path | None = None) -> Path:
    """``socket``, else the one the daemon picks: ``$MUXD_SOCKET``, the config file's, the default."""
    return Path(socket).expanduser() if socket else find_socket()


def completion_body(model: str, prompt: str | list[int], stream: bool, params: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, **_params(stream, params)}


def chat_body(model: str, messages: Messages, stream: bool, params: dict[str, Any]) -> dict[str, Any]:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return {"model": model, "messages": list(messages), **_params(stream, params)}


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
