"""``AsyncClient``: the daemon's API over its Unix socket, for asyncio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
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


class AsyncStream(Generic[T]):
    """Typed chunks of a streamed completion; ``aclose`` (or leaving ``async with``) cancels the request."""

    def __init__(self, response: httpx.Response, chunk_type: type[T]) -> None:
        self.response = response
        self.chunk_type = chunk_type

    async def __aiter__(self) -> AsyncIterator[T]:
        try:
            async for line in self.response.aiter_lines():
                event = parse_event(line)
                if event is DONE:
                    break
                if event is not None:
                    yield self.chunk_type.model_validate(event)
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:
            raise lost(e) from e
        finally:
            await self.aclose()

    async def text(self) -> str:
        return "".join([getattr(chunk, "text", "") async for chunk in self])

    async def aclose(self) -> None:
        await self.response.aclose()

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncStatsStream:
    """The asyncio twin of ``muxd.client.StatsStream``."""

    def __init__(self, response: httpx.Response, last_event_id: int | None) -> None:
        self.response = response
        self.events = StatsEvents(last_event_id)
        self._items = self._read()  # one reader, as StatsStream

    @property
    def last_event_id(self) -> int | None:
        return self.events.last_event_id

    def __aiter__(self) -> AsyncIterator[Stats | Event]:
        return self._items

    async def _read(self) -> AsyncIterator[Stats | Event]:
        try:
            async for line in self.response.aiter_lines():
                item = self.events.feed(line)
                if item is not None:
                    yield item
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:
            raise lost(e) from e
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self.response.aclose()

    async def __aenter__(self) -> AsyncStatsStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncClient:
    """The asyncio twin of ``muxd.client.Client``: same methods, awaited."""

    def __init__(self, socket: str | Path | None = None, *, timeout: float | None = 600.0) -> None:
        self.socket = resolve_socket(socket)
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket))
        self._http = httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=timeout)

    async def models(self) -> list[Model]:
        return ModelList.model_validate(await self._get("/v1/models")).data

    async def complete(self, model: str, prompt: str | list[int], *, stream: bool = False,
                       max_tokens: int | None = None, temperature: float | None = None,
                       response_format: ResponseFormatLike | None = None,
                       **params: Any) -> Completion | AsyncStream[Completion]:  # fmt: skip
        params.update(max_tokens=max_tokens, temperature=temperature, **structured_params(response_format))
        body = completion_body(model, prompt, stream, params)
        if stream:
            return AsyncStream(await self._stream("POST", "/v1/completions", body), Completion)
        return Completion.model_validate(await self._post("/v1/completions", body))

    async def chat(self, model: str, messages: Messages, *, stream: bool = False, max_tokens: int | None = None,
                   temperature: float | None = None, response_format: ResponseFormatLike | None = None,
                   tools: Sequence[ToolLike] | None = None, tool_choice: ToolChoiceLike | None = None,
                   parallel_tool_calls: bool | None = None,
                   **params: Any) -> ChatCompletion | AsyncStream[ChatCompletionChunk]:  # fmt: skip
        params.update(max_tokens=max_tokens, temperature=temperature, parallel_tool_calls=parallel_tool_calls,
                      **structured_params(response_format, tools, tool_choice))  # fmt: skip
        body = chat_body(model, messages, stream, params)
        if stream:
            return AsyncStream(await self._stream("POST", "/v1/chat/completions", body), ChatCompletionChunk)
        return ChatCompletion.model_validate(await self._post("/v1/chat/completions", body))

    async def health(self) -> Health:
        return Health.model_validate((await self._call("GET", "/healthz", ok_statuses=(503,))).json())

    async def status(self) -> Status:
        return Status.model_validate(await self._get("/muxd/v1/status"))

    async def stats(self) -> Stats:
        return Stats.model_validate(await self._get("/muxd/v1/stats"))

    async def stats_stream(self, interval_ms: int = 500, last_event_id: int | None = None) -> AsyncStatsStream:
        """Live stats, as ``Client.stats_stream``."""
        params, headers = stats_stream_request(interval_ms, last_event_id)
        response = await self._stream("GET", "/muxd/v1/stats/stream", params=params, headers=headers)
        return AsyncStatsStream(response, last_event_id)

    async def metrics(self) -> str:
        return (await self._call("GET", "/metrics")).text

    async def openapi(self) -> dict[str, Any]:
        return await self._get("/openapi.json")

    async def load_model(self, name: str, keep_alive: float | str | None = None) -> ModelStatus:
        """Load ``name`` now (returns once it is loaded); ``keep_alive`` as a request's (seconds, "5m", -1)."""
        body = {"keep_alive": keep_alive} if keep_alive is not None else None
        return ModelStatus.model_validate(await self._post(f"/muxd/v1/models/{name}/load", body))

    async def unload_model(self, name: str) -> ModelStatus:
        """Unload ``name`` once its requests have finished (returns when it is unloaded)."""
        return ModelStatus.model_validate(await self._post(f"/muxd/v1/models/{name}/unload", None))

    async def shutdown(self) -> None:
        await self._post("/muxd/v1/shutdown", None)

    async def _get(self, path: str) -> Any:
        return (await self._call("GET", path)).json()

    async def _post(self, path: str, body: dict[str, Any] | None) -> Any:
        return (await self._call("POST", path, body)).json()

    async def _call(self, method: str, path: str, body: Any = None, ok_statuses: tuple[int, ...] = ()) -> httpx.Response:
        try:
            response = await self._http.request(method, path, json=body)
        except (httpx.ConnectError, FileNotFoundError) as e:
            raise not_running(self.socket, e) from e
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:
            raise lost(e) from e
        if response.status_code not in ok_statuses:
            raise_for_status(response, response.content)
        return response

    async def _stream(self, method: str, path: str, body: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        request = self._http.build_request(method, path, json=body, **kwargs)
        try:
            response = await self._http.send(request, stream=True)
        except (httpx.ConnectError, FileNotFoundError) as e:
            raise not_running(self.socket, e) from e
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:  # the daemon closed the connection (stopping)
            raise lost(e) from e
        if response.status_code >= 400:
            raise_for_status(response, await response.aread())
        return response

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
