"""``/openapi.json``: the API's OpenAPI 3.1 document, with schemas from ``muxd.protocol``."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic.json_schema import models_json_schema

from muxd import protocol as p

REF = "#/components/schemas/{model}"

# (method, path, summary, request model, response model, streams)
ROUTES: list[tuple[str, str, str, type | None, type, bool]] = [
    ("get", "/v1/models", "The served models", None, p.ModelList, False),
    ("post", "/v1/completions", "Complete a prompt (OpenAI-compatible)", p.CompletionRequest, p.Completion, True),
    ("post", "/v1/chat/completions", "Answer a conversation (OpenAI-compatible)", p.ChatCompletionRequest,
     p.ChatCompletion, True),
    ("get", "/healthz", "200 when every unit serves, else 503", None, p.Health, False),
    ("get", "/muxd/v1/status", "Units, models, placement, policy, pools", None, p.Status, False),
    ("get", "/muxd/v1/stats", "Per model and per unit counters, latencies, pages", None, p.Stats, False),
    ("post", "/muxd/v1/shutdown", "Stop gracefully (drain in-flight requests)", None, p.Health, False),
]  # fmt: skip
ERRORS = {
    "400": "Invalid parameter (the message names it) or a prompt too long for the context",
    "404": "Unknown model (the message lists the served ones)",
    "429": "The model's queue is full; see Retry-After",
    "503": "The model's unit is starting or restarting; see Retry-After",
}


@lru_cache(maxsize=1)
def openapi_document(version: str) -> dict[str, Any]:
    models = {m for _, _, _, req, resp, _ in ROUTES for m in (req, resp) if m is not None}
    models |= {p.ErrorResponse, p.ChatCompletionChunk}
    _, defs = models_json_schema([(m, "validation") for m in sorted(models, key=lambda m: m.__name__)], ref_template=REF)
    paths: dict[str, Any] = {}
    for method, path, summary, req, resp, streams in ROUTES:
        content = {"application/json": {"schema": {"$ref": REF.format(model=resp.__name__)}}}
        if streams:
            content["text/event-stream"] = {"schema": {"type": "string", "description": "chunks, then data: [DONE]"}}
        op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK", "content": content}}}
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
