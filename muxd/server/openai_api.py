"""The OpenAI-compatible routes: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.

Each generation request: validate the body (``muxd.protocol``, 400 naming
the field), find the model (404 listing the served ones), tokenize, build
the sampling parameters (400 if it cannot fit the context), admit it (429
when the model's queue is full, 503 while its unit restarts), then either
stream Server-Sent Events ending in ``data: [DONE]`` or answer once. A
client that goes away cancels its request at once, even while it waits for
its first token: the unit then frees its pages.

Responses are built as plain dicts of the shapes in ``muxd.protocol``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from muxd.errors import InvalidRequestError, ModelNotFoundError, MuxdError
from muxd.protocol import ChatCompletionRequest, CompletionRequest
from muxd.quantities import parse_duration
from muxd.server.generation import Delta, Generation, ServedModel, check_token_ids, sampling_params
from muxd.server.residency import Residency
from muxd.server.router import Router
from muxd.server.telemetry import Telemetry
from muxd.server.tokenizer import ChatTemplateError

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the context left
T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")


class OpenAIRoutes:
    def __init__(self, served: dict[str, ServedModel], router: Router, telemetry: Telemetry, residency: Residency) -> None:
        self.served = served
        self.router = router
        self.telemetry = telemetry
        self.residency = residency

    def model(self, name: str) -> ServedModel:
        served = self.served.get(name)
        if served is None:
            raise ModelNotFoundError(name, self.served)
        return served

    async def loaded(self, req: CompletionRequest | ChatCompletionRequest) -> ServedModel:
        """The request's model, once loaded (a model not in memory is loaded now; the request waits)."""
        served = self.model(req.model)
        await self.residency.ensure(req.model, keep_alive_seconds(req.keep_alive))
        return served

    async def list_models(self, request: Request) -> Response:
        """Every model, loaded or not, with its state and size on disk."""
        models = self.residency.models
        data = [
            {"id": m.name, "object": "model", "created": m.created, "owned_by": "muxd", "unit": m.unit,
             "max_model_len": m.max_position, "state": models[m.name].state.value,
             "size_bytes": models[m.name].size_bytes, "pinned": m.config.pinned}  # fmt: skip
            for m in self.served.values()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def completions(self, request: Request) -> Response:
        arrival = time.monotonic()  # latencies count from here, as the client's do: parsing and tokenizing included
        req = parse_body(CompletionRequest, await request.body())
        served = await self.loaded(req)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            ids = list(prompt)
            check_token_ids(served, ids)
        else:
            ids = served.tokenizer.encode(prompt if isinstance(prompt, str) else prompt[0])
        if not ids:
            raise InvalidRequestError("the prompt encodes to no tokens; send some text", param="prompt")
        params = sampling_params(
            served, len(ids), req.max_tokens, COMPLETION_DEFAULT_MAX_TOKENS, req, "prompt", req.logprobs is not None
        )
        gen = Generation(self.router, self.telemetry, served, new_id("cmpl"), ids, params, req.n, req.stop_strings,
                         arrival=arrival)  # fmt: skip
        shape = CompletionShape(gen, req.logprobs is not None)
        return await respond(request, gen, shape, req.stream, req.include_usage)

    async def chat_completions(self, request: Request) -> Response:
        arrival = time.monotonic()
        req = parse_body(ChatCompletionRequest, await request.body())
        served = await self.loaded(req)
        messages = [{"role": m.role, "content": m.text, **({"name": m.name} if m.name else {})} for m in req.messages]
        try:
            ids = served.tokenizer.apply_chat_template(messages)
        except ChatTemplateError as e:
            raise InvalidRequestError(str(e), param="messages") from None
        params = sampling_params(served, len(ids), req.output_limit, None, req, "messages", req.logprobs)
        gen = Generation(self.router, self.telemetry, served, new_id("chatcmpl"), ids, params, req.n, req.stop_strings,
                         arrival=arrival)  # fmt: skip
        shape = ChatShape(gen, req.logprobs)
        return await respond(request, gen, shape, req.stream, req.include_usage)


# -- request plumbing ----------------------------------------------------------
def keep_alive_seconds(value: float | str | None) -> float | None:
    """A request's ``keep_alive`` in seconds (-1: forever), or None when it has none."""
    if value is None:
        return None
    try:
        return parse_duration(value, "keep_alive")
    except ValueError as e:
        raise InvalidRequestError(str(e), param="keep_alive") from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def parse_body(model: type[T], body: bytes) -> T:
    """Validate a JSON body, or raise a 400 that names the parameter at fault and why."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise invalid_request(e) from None


def invalid_request(error: ValidationError) -> InvalidRequestError:
    errors = error.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return InvalidRequestError(f"the request body is not valid JSON: {first['msg'].removeprefix('Invalid JSON: ')}")
    if first["type"] == "model_type" and not first["loc"]:
        return InvalidRequestError("the request body must be a JSON object")
    by_param: dict[str, list[str]] = {}
    for err in errors:
        param = _param_name(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "this parameter is required"
        elif "input" in err and err["type"] not in ("value_error",) and not isinstance(err["input"], (dict, list)):
            msg += f" (got {json.dumps(err['input'])})"
        by_param.setdefault(param, []).append(msg)
    param, msgs = next(iter(by_param.items()))
    others = f"; also invalid: {', '.join(list(by_param)[1:])}" if len(by_param) > 1 else ""
    return InvalidRequestError(f"invalid parameter '{param}': {'; or '.join(dict.fromkeys(msgs))}{others}", param=param)


def _param_name(loc: tuple[Any, ...]) -> str:
    """``("messages", 0, "role") -> "messages[0].role"``; union branch tags (``list[int]``) dropped."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif "[" in part or part in ("str", "int", "float", "bool", "none", "function-after"):
            continue
        else:
            name += f".{part}" if name else part
    return name or "body"


async def respond(request: Request, gen: Generation, shape: _Shape, stream: bool, include_usage: bool) -> Response:
    gen.start()
    if stream:
        return EventStream(shape.events(include_usage), gen.cancel)
    try:
        return JSONResponse(await until_disconnect(request, shape.collect()))
    finally:
        gen.cancel()


async def until_disconnect(request: Request, work: Awaitable[R]) -> R:
    """Await ``work``; if the client disconnects first, stop and raise ``ClientGone`` (the caller aborts)."""
    with DisconnectWatch(request.receive) as watch:
        try:
            return await work
        except asyncio.CancelledError:
            if watch.gone:
                raise ClientGone() from None
            raise


class ClientGone(Exception):
    """The client disconnected; nothing is left to answer."""


class DisconnectWatch:
    """While active, cancel the current task as soon as the client disconnects (``gone`` then says so).

    One extra task per request, reading ``receive`` until ``http.disconnect``:
    the request body is already read, so the next message is the disconnect.
    """

    def __init__(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self.receive = receive
        self.gone = False
        self._active = False

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass

    def _fire(self, watcher: asyncio.Future[None]) -> None:
        if self._active and not watcher.cancelled() and watcher.exception() is None:
            self.gone = True
            self._task.cancel()

    def __enter__(self) -> DisconnectWatch:
        self._task = asyncio.current_task()
        self._watcher = asyncio.ensure_future(self._watch())
        self._watcher.add_done_callback(self._fire)
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False
        self._watcher.cancel()
        uncancel = getattr(self._task, "uncancel", None)  # Python 3.11+
        if self.gone and uncancel is not None:
            uncancel()  # the cancellation was ours, and it is handled


class EventStream:
    """A ``text/event-stream`` ASGI response that stops and cleans up the moment the client leaves.

    Starlette's ``StreamingResponse`` notices a disconnect only when it next
    writes; a request still queued in a unit writes nothing for a while. Here
    a ``DisconnectWatch`` cancels the writer as soon as ``http.disconnect``
    arrives, and ``on_close`` (the generation's ``cancel``) runs however the
    stream ends.
    """

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        self.events = events
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            with DisconnectWatch(receive) as watch:
                try:
                    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
                    async for event in self.events:
                        await send({"type": "http.response.body", "body": event, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except asyncio.CancelledError:
                    if not watch.gone:
                        raise  # cancelled by the server (drain timeout), not by the client
        finally:
            self.on_close()


SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
DONE = b"data: [DONE]\n\n"


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


# -- response shapes -----------------------------------------------------------
class _Shape:
    """How one endpoint turns deltas into a response body or a stream of chunks."""

    object_name = ""
    chunk_object = ""

    def __init__(self, gen: Generation, logprobs: bool) -> None:
        self.gen = gen
        self.logprobs = logprobs
        self.created = int(time.time())

    def head(self) -> dict[str, Any]:
        return {"id": self.gen.request_id, "object": self.chunk_object, "created": self.created, "model": self.gen.model}

    def usage(self) -> dict[str, int]:
        p, c = self.gen.prompt_tokens, self.gen.completion_tokens
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    async def collect(self) -> dict[str, Any]:
        n = len(self.gen.choices)
        texts, ids, lps = [""] * n, [[] for _ in range(n)], [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        async for deltas in self.gen.deltas():
            for d in deltas:
                texts[d.index] += d.text
                ids[d.index] += d.token_ids
                lps[d.index] += d.logprobs
                finish[d.index] = d.finish_reason or finish[d.index]
        choices = [self.choice(i, texts[i], finish[i], ids[i], lps[i]) for i in range(n)]
        head = {**self.head(), "object": self.object_name}
        return {**head, "choices": choices, "usage": self.usage()}

    async def events(self, include_usage: bool) -> AsyncIterator[bytes]:
        extra = {"usage": None} if include_usage else {}
        try:
            for chunk in self.opening():
                yield sse({**self.head(), "choices": [chunk], **extra})
            async for deltas in self.gen.deltas():
                for d in deltas:
                    for chunk in self.chunks(d):
                        yield sse({**self.head(), "choices": [chunk], **extra})
        except MuxdError as e:
            yield sse(e.to_dict())
            yield DONE
            return
        if include_usage:
            yield sse({**self.head(), "choices": [], "usage": self.usage()})
        yield DONE

    def opening(self) -> list[dict[str, Any]]:
        return []

    def choice(self, index: int, text: str, finish: str | None, ids: list[int], lps: list[float]) -> dict[str, Any]:
        raise NotImplementedError

    def chunks(self, d: Delta) -> list[dict[str, Any]]:
        raise NotImplementedError


class CompletionShape(_Shape):
    object_name = chunk_object = "text_completion"

    def choice(self, index: int, text: str, finish: str | None, ids: list[int], lps: list[float]) -> dict[str, Any]:
        return {"index": index, "text": text, "finish_reason": finish, "logprobs": self._logprobs(ids, lps)}

    def chunks(self, d: Delta) -> list[dict[str, Any]]:
        if not d.text and not d.finish_reason and not (self.logprobs and d.token_ids):
            return []
        return [{"index": d.index, "text": d.text, "finish_reason": d.finish_reason, "logprobs": self._logprobs(d.token_ids, d.logprobs)}]

    def _logprobs(self, ids: list[int], lps: list[float]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        tokens = [self.gen.served.tokenizer.token_text(t) for t in ids]
        offsets, at = [], 0
        for t in tokens:
            offsets.append(at)
            at += len(t)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": None, "text_offset": offsets}


class ChatShape(_Shape):
    object_name = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def choice(self, index: int, text: str, finish: str | None, ids: list[int], lps: list[float]) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        return {"index": index, "message": message, "finish_reason": finish, "logprobs": self._logprobs(ids, lps)}

    def opening(self) -> list[dict[str, Any]]:
        return [
            {"index": c.index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
            for c in self.gen.choices
        ]

    def chunks(self, d: Delta) -> list[dict[str, Any]]:
        out = []
        if d.text or (self.logprobs and d.token_ids):
            lp = self._logprobs(d.token_ids, d.logprobs)
            out.append({"index": d.index, "delta": {"content": d.text}, "finish_reason": None, "logprobs": lp})
        if d.finish_reason:
            out.append({"index": d.index, "delta": {}, "finish_reason": d.finish_reason, "logprobs": None})
        return out

    def _logprobs(self, ids: list[int], lps: list[float]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        text = self.gen.served.tokenizer.token_text
        content = [
            {"token": (s := text(t)), "logprob": lp, "bytes": list(s.encode()), "top_logprobs": []}
            for t, lp in zip(ids, lps)
        ]
        return {"content": content}
