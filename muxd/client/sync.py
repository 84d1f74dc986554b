"""``Client``: the daemon's API over its Unix socket, blocking."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from muxd.client._base import (
    BASE_URL, DONE, Messages, ResponseFormatLike, StatsEvents, ToolChoiceLike, ToolLike, chat_body, completion_body,
    lost, not_running, parse_event, raise_for_status, resolve_socket, stats_stream_request, structured_params,
)  # fmt: skip
from muxd.protocol import (
    ChatCompletion, ChatCompletionChunk, Completion, Event, Health, Model, ModelList, ModelStatus, Stats, Status,
)  # fmt: skip

T = TypeVar("T", bound=BaseModel)


class Stream(Generic[T]):
    """Chunks of a streamed completion, typed; closing it (or leaving its ``with``) cancels the request."""

    def __init__(self, response: httpx.Response, chunk_type: type[T]) -> None:
        self.response = response
        self.chunk_type = chunk_type

    def __iter__(self) -> Iterator[T]:
        try:
            for line in self.response.iter_lines():
                event = parse_event(line)
                if event is DONE:
                    break
                if event is not None:
                    yield self.chunk_type.model_validate(event)
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:
            raise lost(e) from e
        finally:
            self.close()

    def text(self) -> str:
        """Read the whole stream; the first choice's text."""
        return "".join(getattr(chunk, "text", "") for chunk in self)

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StatsStream:
    """``/muxd/v1/stats/stream``: a ``Stats`` each tick and each ``Event`` as it happens.

    ``last_event_id`` follows the events read, so a new stream opened with
    it after a disconnect replays the events missed meanwhile.
    """

    def __init__(self, response: httpx.Response, last_event_id: int | None) -> None:
        self.response = response
        self.events = StatsEvents(last_event_id)
        self._items = self._read()  # one reader: a loop that breaks and iterates again goes on where it was

    @property
    def last_event_id(self) -> int | None:
        return self.events.last_event_id

    def __iter__(self) -> Iterator[Stats | Event]:
        return self._items

    def _read(self) -> Iterator[Stats | Event]:
        try:
            for line in self.response.iter_lines():
                item = self.events.feed(line)
                if item is not None:
                    yield item
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:
            raise lost(e) from e
        finally:
            self.close()

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> StatsStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """``Client()`` finds the socket as the daemon picks it; ``Client("/path/to/muxd.sock")`` names one."""

    def __init__(self, socket: str | Path | None = None, *, timeout: float | None = 600.0) -> None:
        self.socket = resolve_socket(socket)
        transport = httpx.HTTPTransport(uds=str(self.socket))
        self._http = httpx.Client(transport=transport, base_url=BASE_URL, timeout=timeout)

    # -- OpenAI-compatible ---------------------------------------------------------
    def models(self) -> list[Model]:
        return ModelList.model_validate(self._get("/v1/models")).data

    def complete(self, model: str, prompt: str | list[int], *, stream: bool = False, max_tokens: int | None = None,
                 temperature: float | None = None, response_format: ResponseFormatLike | None = None,
                 **params: Any) -> Completion | Stream[Completion]:  # fmt: skip
        """``/v1/completions``; other OpenAI parameters (top_p, seed, stop, n, ...) as keywords.
        ``response_format`` may be a pydantic model class: the output then follows its JSON Schema."""
        params.update(max_tokens=max_tokens, temperature=temperature, **structured_params(response_format))
        body = completion_body(model, prompt, stream, params)
        if stream:
            return Stream(self._stream("POST", "/v1/completions", body), Completion)
        return Completion.model_validate(self._post("/v1/completions", body))

    def chat(self, model: str, messages: Messages, *, stream: bool = False, max_tokens: int | None = None,
             temperature: float | None = None, response_format: ResponseFormatLike | None = None,
             tools: Sequence[ToolLike] | None = None, tool_choice: ToolChoiceLike | None = None,
             parallel_tool_calls: bool | None = None,
             **params: Any) -> ChatCompletion | Stream[ChatCompletionChunk]:  # fmt: skip
        """``/v1/chat/completions``; ``messages`` may be a plain string (one user message).
        ``response_format`` may be a pydantic model class (``reply.parsed(Model)`` reads it back);
        ``tools`` / ``tool_choice`` take the protocol's ``Tool`` / ``NamedToolChoice`` or their dicts."""
        params.update(max_tokens=max_tokens, temperature=temperature, parallel_tool_calls=parallel_tool_calls,
                      **structured_params(response_format, tools, tool_choice))  # fmt: skip
        body = chat_body(model, messages, stream, params)
        if stream:
            return Stream(self._stream("POST", "/v1/chat/completions", body), ChatCompletionChunk)
        return ChatCompletion.model_validate(self._post("/v1/chat/completions", body))

    # -- muxd's own ------------------------------------------------------------------
    def health(self) -> Health:
        """Never raises for a 503: a starting or degraded daemon still says how it is."""
        return Health.model_validate(self._call("GET", "/healthz", ok_statuses=(503,)).json())

    def status(self) -> Status:
        return Status.model_validate(self._get("/muxd/v1/status"))

    def stats(self) -> Stats:
        return Stats.model_validate(self._get("/muxd/v1/stats"))

    def stats_stream(self, interval_ms: int = 500, last_event_id: int | None = None) -> StatsStream:
        """Live stats: ``Stats`` every ``interval_ms`` and ``Event``s as they happen (those after
        ``last_event_id`` first, from the daemon's ring; 0 replays the whole ring)."""
        params, headers = stats_stream_request(interval_ms, last_event_id)
        return StatsStream(self._stream("GET", "/muxd/v1/stats/stream", params=params, headers=headers), last_event_id)

    def metrics(self) -> str:
        return self._call("GET", "/metrics").text

    def openapi(self) -> dict[str, Any]:
        return self._get("/openapi.json")

    def load_model(self, name: str, keep_alive: float | str | None = None) -> ModelStatus:
        """Load ``name`` now (returns once it is loaded); ``keep_alive`` as a request's (seconds, "5m", -1)."""
        body = {"keep_alive": keep_alive} if keep_alive is not None else None
        return ModelStatus.model_validate(self._post(f"/muxd/v1/models/{name}/load", body))

    def unload_model(self, name: str) -> ModelStatus:
        """Unload ``name`` once its requests have finished (returns when it is unloaded)."""
        return ModelStatus.model_validate(self._post(f"/muxd/v1/models/{name}/unload", None))

    def shutdown(self) -> None:
        """Ask the daemon to drain its requests and exit."""
        self._post("/muxd/v1/shutdown", None)

    # -- plumbing ----------------------------------------------------------------------
    def _get(self, path: str) -> Any:
        return self._call("GET", path).json()

    def _post(self, path: str, body: dict[str, Any] | None) -> Any:
        return self._call("POST", path, body).json()

    def _call(self, method: str, path: str, body: Any = None, ok_statuses: tuple[int, ...] = ()) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=body)
        except (httpx.ConnectError, FileNotFoundError) as e:
            raise not_running(self.socket, e) from e
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:
            raise lost(e) from e
        if response.status_code not in ok_statuses:
            raise_for_status(response, response.content)
        return response

    def _stream(self, method: str, path: str, body: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        request = self._http.build_request(method, path, json=body, **kwargs)
        try:
            response = self._http.send(request, stream=True)
        except (httpx.ConnectError, FileNotFoundError) as e:
            raise not_running(self.socket, e) from e
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:  # the daemon closed the connection (stopping)
            raise lost(e) from e
        if response.status_code >= 400:
            raise_for_status(response, response.read())
        return response

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
