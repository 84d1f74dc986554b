"""``/openapi.json``: the API's OpenAPI 3.1 document, with schemas from ``muxd.protocol``."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic.json_schema import models_json_schema

from muxd import protocol as p

REF = "#/components/schemas/{model}"

# An SSE response's events: event name -> the model of its JSON data ("message": unnamed ``data:`` lines).
Events = dict[str, type]
COMPLETION_EVENTS: Events = {"message": p.Completion}
CHAT_EVENTS: Events = {"message": p.ChatCompletionChunk}
STATS_EVENTS: Events = {"stats": p.Stats, "event": p.Event}

# (method, path, summary, request model, response model (None: SSE only), its SSE events)
ROUTES: list[tuple[str, str, str, type | None, type | None, Events | None]] = [
    ("get", "/v1/models", "Every model, loaded or not, with its state and size", None, p.ModelList, None),
    ("post", "/v1/completions", "Complete a prompt (OpenAI-compatible)", p.CompletionRequest, p.Completion,
     COMPLETION_EVENTS),
    ("post", "/v1/chat/completions", "Answer a conversation (OpenAI-compatible)", p.ChatCompletionRequest,
     p.ChatCompletion, CHAT_EVENTS),
    ("get", "/healthz", "200 when every unit serves, else 503", None, p.Health, None),
    ("get", "/muxd/v1/status", "Units, models, placement, policy, pools", None, p.Status, None),
    ("get", "/muxd/v1/stats", "Per model and per unit counters, latencies, pages", None, p.Stats, None),
    ("get", "/muxd/v1/stats/stream", "Live stats: a `stats` event each tick (`?interval_ms=`, default 500), an `event` "
     "event with its id as each happens; `Last-Event-ID` replays the events after it", None, None, STATS_EVENTS),
    ("post", "/muxd/v1/shutdown", "Stop gracefully (drain in-flight requests)", None, p.Health, None),
    ("post", "/muxd/v1/models/{name}/load", "Load a model now (optional keep_alive); its status once loaded",
     p.ModelLoadRequest, p.ModelStatus, None),
    ("post", "/muxd/v1/models/{name}/unload", "Unload a model once its requests have drained; its status then",
     None, p.ModelStatus, None),
]  # fmt: skip
ERRORS = {
    "400": "Invalid parameter (the message names it) or a prompt too long for the context",
    "404": "Unknown model (the message lists the served ones)",
    "429": "The model's queue is full; see Retry-After",
    "500": "The model could not be loaded (the message says why; the next request tries again)",
    "503": "The model's unit is starting or restarting, or the model does not fit its unit's memory budget "
           "(the message says what holds it); see Retry-After",
}


STREAM_PARAMETERS = [
    {"name": "interval_ms", "in": "query", "schema": {"type": "integer", "minimum": 50, "maximum": 60000, "default": 500}},
    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer", "minimum": 0},
     "description": "replay the ring's events after this id (0: all of them)"},
]  # fmt: skip


def sse_schema(events: Events, done: bool) -> dict[str, Any]:
    """One server-sent event, as a client parses it: its name, its id, its JSON ``data`` (one schema per event)."""
    variants = []
    for name, model in events.items():
        props: dict[str, Any] = {"event": {"const": name}, "data": {"$ref": REF.format(model=model.__name__)}}
        if model is p.Event:
            props["id"] = {"type": "integer", "description": "the event's id, for Last-Event-ID"}
        variants.append({"title": name, "type": "object", "properties": props, "required": ["data"]})
    if done:
        variants.append({"title": "done", "type": "object", "properties": {"data": {"const": "[DONE]"}}, "required": ["data"]})
    return {"description": "each item is one server-sent event (`event:`, `id:`, `data:` lines, a blank line)",
            "oneOf": variants}  # fmt: skip


@lru_cache(maxsize=1)
def openapi_document(version: str) -> dict[str, Any]:
    models = {m for _, _, _, req, resp, _ in ROUTES for m in (req, resp) if m is not None}
    models |= {p.ErrorResponse} | {m for *_, events in ROUTES for m in (events or {}).values()}
    _, defs = models_json_schema([(m, "validation") for m in sorted(models, key=lambda m: m.__name__)], ref_template=REF)
    paths: dict[str, Any] = {}
    for method, path, summary, req, resp, events in ROUTES:
        content = {} if resp is None else {"application/json": {"schema": {"$ref": REF.format(model=resp.__name__)}}}
        if events:
            content["text/event-stream"] = {"schema": sse_schema(events, done=events is not STATS_EVENTS)}
        op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK", "content": content}}}
        if path == "/muxd/v1/stats/stream":
            op["parameters"] = STREAM_PARAMETERS
            op["responses"]["400"] = {"description": "interval_ms or Last-Event-ID out of range",
                                      "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}}
        if req is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": REF.format(model=req.__name__)}}},
            }
            error = {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}
            op["responses"].update({code: {"description": d, "content": error} for code, d in ERRORS.items()})
        paths.setdefault(path, {})[method] = op
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics", "responses": {"200": {
        "description": "Prometheus text format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    paths["/openapi.json"] = {"get": {"summary": "This document", "responses": {"200": {"description": "OK"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "muxd", "version": version, "description": "OpenAI-compatible API of the muxd daemon"},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }
