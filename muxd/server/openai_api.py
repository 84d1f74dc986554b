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
from muxd.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest
from muxd.quantities import parse_duration
from muxd.server.generation import Delta, Generation, ServedModel, check_token_ids, sampling_params
from muxd.server.residency import Residency
from muxd.server.router import Router
from muxd.server.structured import HERMES, check_tool_choice, response_grammar, tool_grammar
from muxd.server.telemetry import Telemetry
from muxd.server.tokenizer import ChatTemplateError
from muxd.server.tool_calls import split_tool_calls, tool_call_parser

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
        params["grammar"] = await off_loop(response_grammar, req.response_format) if req.response_format else None
        gen = Generation(self.router, self.telemetry, served, new_id("cmpl"), ids, params, req.n, req.stop_strings,
                         arrival=arrival)  # fmt: skip
        shape = CompletionShape(gen, req.logprobs is not None)
        return await respond(request, gen, shape, req.stream, req.include_usage)

    async def chat_completions(self, request: Request) -> Response:
        arrival = time.monotonic()
        req = parse_body(ChatCompletionRequest, await request.body())
        tools = chat_tools(self.model(req.model), req)  # a request the model cannot serve: 400 before any load
        served = await self.loaded(req)
        try:
            ids = served.tokenizer.apply_chat_template([template_message(m) for m in req.messages], tools=tools)
        except ChatTemplateError as e:
            raise InvalidRequestError(str(e), param="messages") from None
        params = sampling_params(served, len(ids), req.output_limit, None, req, "messages", req.logprobs)
        wants_grammar = req.response_format is not None or bool(req.tools)
        params["grammar"] = await off_loop(chat_grammar, req, served.tokenizer.tool_format) if wants_grammar else None
        gen = Generation(self.router, self.telemetry, served, new_id("chatcmpl"), ids, params, req.n, req.stop_strings,
                         arrival=arrival)  # fmt: skip
        calls = {t.function.name for t in req.tools or []} if tools and req.tool_choice != "none" else None
        shape = ChatShape(gen, req.logprobs, calls, served.tokenizer.tool_format)
        return await respond(request, gen, shape, req.stream, req.include_usage)


# -- structured output and tools -------------------------------------------------
def chat_tools(served: ServedModel, req: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The tools to render into the prompt (None: none); 400 where they cannot be served."""
    check_tool_choice(req.tools, req.tool_choice)
    if not req.tools:
        if req.tool_choice not in (None, "none", "auto"):
            raise InvalidRequestError("tool_choice needs tools; send the functions in tools", param="tool_choice")
        return None
    if not served.tokenizer.supports_tools:
        raise InvalidRequestError(
            f"model {served.name!r} cannot take tools: its chat template has no place for them "
            "(Qwen2/Qwen3 and Llama 3.1+ templates do); leave tools unset or use a model whose template renders tools",
            param="tools",
        )
    if req.response_format is not None and req.response_format.type != "text" and req.tool_choice != "none":
        raise InvalidRequestError(
            "response_format and tools cannot both shape the output; drop one, or set tool_choice to \"none\"",
            param="response_format",
        )
    return [t.model_dump(exclude_none=True) for t in req.tools]


async def off_loop(build: Callable[..., str | None], *args: Any) -> str | None:
    """A grammar built and validated on a worker thread: a large schema takes llguidance
    milliseconds to check, which the event loop (every stream of the daemon) must not wait on."""
    return await asyncio.to_thread(build, *args)


def chat_grammar(req: ChatCompletionRequest, tool_format: str) -> str | None:
    if req.tools and req.tool_choice not in (None, "auto", "none"):
        return tool_grammar(req.tools, req.tool_choice, req.parallel_tool_calls, tool_format)
    return response_grammar(req.response_format)


def template_message(m: ChatMessage) -> dict[str, Any]:
    """A message as chat templates read it: tool calls' arguments as objects, as transformers passes them."""
    out: dict[str, Any] = {"role": m.role, "content": m.text}
    if m.name:
        out["name"] = m.name
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": _json_or_text(c.function.arguments)}}
            for c in m.tool_calls
        ]  # fmt: skip
    return out


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


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
    """Chat responses; with ``tool_names`` (tools the model may call), calls in the
    template's ``tool_format`` become ``message.tool_calls`` and stream as tool-call deltas."""

    object_name = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def __init__(
        self, gen: Generation, logprobs: bool, tool_names: set[str] | None = None, tool_format: str = HERMES
    ) -> None:
        super().__init__(gen, logprobs)
        self.tool_names, self.tool_format = tool_names, tool_format
        self.parsers = {c.index: tool_call_parser(tool_format, tool_names) for c in gen.choices} if tool_names else {}

    def choice(self, index: int, text: str, finish: str | None, ids: list[int], lps: list[float]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self.tool_names:
            content, calls = split_tool_calls(text, self.tool_names, self.tool_format)
            if calls:
                message = {"role": "assistant", "content": content or None, "tool_calls": [c.to_dict() for c in calls]}
                finish = "tool_calls" if finish == "stop" else finish
        return {"index": index, "message": message, "finish_reason": finish, "logprobs": self._logprobs(ids, lps)}

    def opening(self) -> list[dict[str, Any]]:
        return [
            {"index": c.index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
            for c in self.gen.choices
        ]

    def chunks(self, d: Delta) -> list[dict[str, Any]]:
        parser = self.parsers.get(d.index)
        text, calls = parser.feed(d.text) if parser else (d.text, [])
        finish = d.finish_reason
        if finish and parser:
            known = len(parser.calls)
            text += parser.finish()
            calls = [*calls, *parser.calls[known:]]  # a JSON-format call is known only at the end
            finish = "tool_calls" if parser.calls and finish == "stop" else finish
        out = []
        if text or (self.logprobs and d.token_ids):
            lp = self._logprobs(d.token_ids, d.logprobs)
            out.append({"index": d.index, "delta": {"content": text}, "finish_reason": None, "logprobs": lp})
        for call in calls:
            k = parser.calls.index(call)
            delta = {"tool_calls": [call.to_dict(index=k)]}
            out.append({"index": d.index, "delta": delta, "finish_reason": None, "logprobs": None})
        if finish:
            out.append({"index": d.index, "delta": {}, "finish_reason": finish, "logprobs": None})
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
