"""Bad input is a 4xx with a clear OpenAI-style error body, never a 5xx, and the daemon keeps serving."""

from __future__ import annotations

import pytest

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


def json_schema(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def tool(parameters: dict, name: str = "get_weather") -> dict:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


TOOL = tool({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


@pytest.fixture
def http(tiny_daemon):
    with tiny_daemon.http() as h:
        yield h


def error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["message"] and body["type"] and body["code"]
    return body


@pytest.mark.parametrize(
    ("path", "body", "param", "says"),
    [
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES, "max_tokens": -5}, "max_tokens", "greater than or equal to 1"),
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES, "max_tokens": "ten"}, "max_tokens", "valid integer"),
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES, "temperature": "hot"}, "temperature", "valid number"),
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES, "temperature": 3}, "temperature", "less than or equal"),
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES, "top_p": 0}, "top_p", "greater than 0"),
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES, "stream": "yes"}, "stream", "valid boolean"),
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES, "n": 0}, "n", "greater than or equal to 1"),
        (CHAT, {"model": "tiny-llama", "messages": []}, "messages", "at least 1 item"),
        (CHAT, {"model": "tiny-llama", "messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "'user'"),
        (CHAT, {"model": "tiny-llama"}, "messages", "required"),
        (CHAT, {"messages": MESSAGES}, "model", "required"),
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES, "top_logprobs": 3}, "top_logprobs", "does not report"),
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES, "presence_penalty": 1.0}, "presence_penalty", "not supported"),
        (COMPLETIONS, {"model": "tiny-llama", "prompt": ""}, "prompt", "must not be empty"),
        (COMPLETIONS, {"model": "tiny-llama", "prompt": ["a", "b"]}, "prompt", "one prompt per request"),
        (COMPLETIONS, {"model": "tiny-llama", "prompt": 5}, "prompt", "valid string"),
        (COMPLETIONS, {"model": "tiny-llama", "prompt": [1, 10**9]}, "prompt", "outside the vocabulary of model 'tiny-llama'"),
        (COMPLETIONS, {"model": "tiny-llama", "prompt": "x", "seed": 2**70}, "seed", "less than"),
        (COMPLETIONS, {"model": "tiny-llama", "prompt": "x", "echo": True}, "echo", "not supported"),
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES, "response_format": {"type": "xml"}}, "response_format.type", "'json_schema'"),
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES, "response_format": {"type": "json_schema"}}, "response_format", "needs a \"json_schema\""),
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES, "response_format": json_schema({"type": "foo"})}, "response_format", "Invalid type: foo"),
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES, "response_format": json_schema({"$ref": "#/$defs/nope"})}, "response_format", "does not exist"),
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES, "response_format": json_schema({"type": "integer", "minimum": 5, "maximum": 1})}, "response_format", "Unsatisfiable"),
        (COMPLETIONS, {"model": "tiny-llama", "prompt": "x", "response_format": json_schema({"type": "string", "pattern": "(("})}, "response_format", "unclosed group"),
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES, "tools": [TOOL]}, "tools", "cannot take tools"),
        (CHAT, {"model": "tiny-qwen3", "messages": MESSAGES, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "'nope', which is not in tools (given: get_weather)"),
        (CHAT, {"model": "tiny-qwen3", "messages": MESSAGES, "tool_choice": "required"}, "tool_choice", "at least one tool"),
        (CHAT, {"model": "tiny-qwen3", "messages": MESSAGES, "tools": [TOOL, TOOL]}, "tools", "duplicate function names"),
        (CHAT, {"model": "tiny-qwen3", "messages": MESSAGES, "tools": [tool({"type": "nope"})], "tool_choice": "required"}, "tools", "Invalid type: nope"),
        (CHAT, {"model": "tiny-qwen3", "messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name", "pattern"),
        (CHAT, {"model": "tiny-qwen3", "messages": MESSAGES, "tools": [TOOL], "response_format": {"type": "json_object"}}, "response_format", "cannot both shape"),
    ],
)
def test_invalid_parameters_are_400_naming_the_parameter(http, path, body, param, says):
    err = error(http.post(path, json=body), 400)
    assert err["param"] == param and param in err["message"] and says in err["message"]


def test_malformed_json_is_400(http):
    err = error(http.post(CHAT, content=b'{"model": "tiny-llama", "messages": [', headers={"content-type": "application/json"}), 400)
    assert "not valid JSON" in err["message"]
    err = error(http.post(CHAT, content=b"[1, 2]"), 400)
    assert "JSON object" in err["message"]


def test_unknown_model_is_404_listing_the_served_models(http):
    err = error(http.post(CHAT, json={"model": "gpt-4o", "messages": MESSAGES}), 404)
    assert err["message"] == "model 'gpt-4o' not found; served models: tiny-llama, tiny-qwen3"


def test_huge_max_tokens_is_400_saying_the_room_left(http):
    err = error(http.post(COMPLETIONS, json={"model": "tiny-llama", "prompt": "hi", "max_tokens": 10**9}), 400)
    assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens" and "at most" in err["message"]


def test_prompt_longer_than_the_context_is_400(http):
    err = error(http.post(COMPLETIONS, json={"model": "tiny-llama", "prompt": [5] * 600, "max_tokens": 1}), 400)
    assert err["code"] == "context_length_exceeded" and "context of 512 tokens" in err["message"]


def test_unknown_route_and_wrong_method_are_json_404_and_405(http):
    assert "openapi.json" in error(http.get("/v1/nothing"), 404)["message"]
    assert "GET is not allowed" in error(http.get(CHAT), 405)["message"]


def test_the_daemon_still_serves_after_bad_input(http):
    ok = http.post(COMPLETIONS, json={"model": "tiny-llama", "prompt": "hi", "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 2
