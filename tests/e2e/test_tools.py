"""Tool calling through the official openai SDK, on tiny models whose templates render tools.

tiny-qwen3 has a Qwen template (Hermes ``<tool_call>`` blocks), tiny-llama3
a Llama 3.1 one (the reply is a bare JSON call). With ``tool_choice``
``required`` or a named function the grammar forces a call in the model's
format whose arguments follow the tool's schema, so even random weights
make a valid call.
"""

from __future__ import annotations

import json
import shutil

import httpx
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

from .conftest import short_tmp_dir, start_daemon, tiny_config

MODEL = "tiny-qwen3"
MODELS = {"tiny-qwen3": "qwen3", "tiny-llama3": "llama3"}  # name -> factory family
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


class WeatherArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=12)
    days: int = Field(ge=1, le=7)


class TimeArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    zone: str = Field(max_length=8)


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast", "parameters": WeatherArgs.model_json_schema()}},
    {"type": "function", "function": {"name": "get_time", "parameters": TimeArgs.model_json_schema()}},
]
ARGS = {"get_weather": WeatherArgs, "get_time": TimeArgs}


@pytest.fixture(scope="module")
def tools_daemon(tmp_path_factory):
    """A daemon serving tiny Qwen3 and Llama 3 models with 2048-token contexts: tool signatures make long prompts."""
    from muxd.models.factory import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("tools")
    paths = {name: build_tiny_checkpoint(family, root / family, max_position_embeddings=2048) for name, family in MODELS.items()}
    tmp = short_tmp_dir()
    daemon = start_daemon(tiny_config(paths, tmp / "muxd.sock"), tmp)
    yield daemon
    assert daemon.stop() == 0, daemon.log()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def client(tools_daemon):
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(tools_daemon.socket)))
    with openai.OpenAI(base_url="http://localhost/v1", api_key="unused", http_client=http, max_retries=0) as c:
        yield c


def assert_valid_calls(calls) -> None:
    assert calls, "no tool call"
    for call in calls:
        assert call.type == "function" and call.id
        ARGS[call.function.name].model_validate_json(call.function.arguments)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("model", MODELS)
def test_required_tool_choice_returns_calls_whose_arguments_follow_the_schema(client, model, seed):
    reply = client.chat.completions.create(
        model=model, messages=QUESTION, tools=TOOLS, tool_choice="required", seed=seed, temperature=1.0, max_tokens=300
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert_valid_calls(choice.message.tool_calls)


@pytest.mark.parametrize("model", MODELS)
def test_streamed_required_tool_call_arrives_as_tool_call_deltas(client, model):
    stream = client.chat.completions.create(
        model=model, messages=QUESTION, tools=TOOLS, tool_choice="required", seed=4, temperature=1.0, max_tokens=300,
        parallel_tool_calls=False, stream=True,
    )  # fmt: skip
    chunks = list(stream)
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) == 1 and deltas[0].index == 0 and deltas[0].id
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)  # no call text leaks as content
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    ARGS[deltas[0].function.name].model_validate_json(deltas[0].function.arguments)


@pytest.mark.parametrize("model", MODELS)
def test_a_named_tool_choice_calls_that_function(client, model):
    reply = client.chat.completions.create(
        model=model, messages=QUESTION, tools=TOOLS, seed=1, max_tokens=300,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )  # fmt: skip
    calls = reply.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"]
    assert_valid_calls(calls)


@pytest.mark.parametrize("model", MODELS)
def test_tool_round_trip_call_result_and_final_answer(client, model):
    first = client.chat.completions.create(
        model=model, messages=QUESTION, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, seed=2, max_tokens=300
    )
    message = first.choices[0].message
    call = message.tool_calls[0]
    conversation = [
        *QUESTION,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"forecast": "sunny", "celsius": 21})},
    ]
    final = client.chat.completions.create(model=model, messages=conversation, tools=TOOLS, max_tokens=16, temperature=0)
    assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # The call and its result are in the prompt: it grew by at least their text.
    assert final.usage.prompt_tokens > first.usage.prompt_tokens + len(call.function.arguments) // 4


def test_tool_choice_none_leaves_text_as_content(client):
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="none", max_tokens=8, temperature=0)
    assert reply.choices[0].message.tool_calls is None and reply.choices[0].message.content is not None


def test_muxd_client_takes_typed_tools_and_returns_typed_calls(tools_daemon):
    from muxd.client import Client
    from muxd.protocol import NamedToolChoice, Tool

    tools = [Tool.model_validate(t) for t in TOOLS]
    choice = NamedToolChoice.model_validate({"type": "function", "function": {"name": "get_weather"}})
    with Client(tools_daemon.socket) as c:
        reply = c.chat(MODEL, QUESTION, tools=tools, tool_choice=choice, seed=3, max_tokens=300)
    assert reply.choices[0].finish_reason == "tool_calls"
    (call,) = reply.tool_calls
    assert call.function.name == "get_weather"
    WeatherArgs.model_validate_json(call.function.arguments)
