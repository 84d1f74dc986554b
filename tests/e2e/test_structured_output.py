"""Structured output through the official openai SDK: the output matches the schema whatever the weights.

The tiny models have random weights, so their free output is noise; every
JSON that validates here does so because the grammar masked every token.
Schemas are pydantic models (as the SDK's ``parse()`` sends them), and the
output is validated with the same models.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from enum import Enum

import httpx
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

PROMPT = [{"role": "user", "content": "Describe a city as JSON."}]


class Color(str, Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Address(Strict):
    city: str = Field(max_length=12)
    zip: int = Field(ge=1000, le=99999)


class Person(Strict):  # nested object, required fields, bounded integer
    name: str = Field(max_length=16)
    age: int = Field(ge=0, le=120)
    address: Address


class Palette(Strict):  # an array of enums with bounds on its length
    colors: list[Color] = Field(min_length=1, max_length=4)
    primary: Color


class Reading(Strict):  # numbers with bounds, a boolean, an optional field
    celsius: float = Field(ge=-50, le=60)
    humidity: int = Field(ge=0, le=100)
    raining: bool
    note: str | None = Field(default=None, max_length=10)


class Inventory(Strict):  # an array of objects
    items: list[Address] = Field(max_length=3)
    count: int = Field(ge=0, le=3)


SCHEMAS = [Person, Palette, Reading, Inventory]


@pytest.fixture
def client(tiny_daemon):
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(tiny_daemon.socket)))
    with openai.OpenAI(base_url="http://localhost/v1", api_key="unused", http_client=http, max_retries=0) as c:
        yield c


def json_schema_format(model: type[BaseModel]) -> dict:
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": model.model_json_schema(), "strict": True}}


def test_json_schema_output_validates_in_100_of_100_seeded_requests(client):
    def ask(i: int):
        schema = SCHEMAS[i % len(SCHEMAS)]
        reply = client.chat.completions.create(
            model=("tiny-llama", "tiny-qwen3")[i % 2], messages=PROMPT, temperature=1.0, seed=i, max_tokens=400,
            response_format=json_schema_format(schema),
        )  # fmt: skip
        return schema, reply.choices[0]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(100)))
    for schema, choice in results:
        assert choice.finish_reason == "stop", choice.message.content
        schema.model_validate_json(choice.message.content)  # raises if it does not validate


def test_streamed_json_schema_output_validates(client):
    stream = client.chat.completions.create(
        model="tiny-qwen3", messages=PROMPT, temperature=1.0, seed=7, max_tokens=400, stream=True,
        response_format=json_schema_format(Person),
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    Person.model_validate_json(text)


def test_sdk_parse_returns_the_pydantic_object(client):
    completion = client.chat.completions.parse(model="tiny-llama", messages=PROMPT, response_format=Palette, seed=3, max_tokens=200)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Palette) and 1 <= len(parsed.colors) <= 4


def test_json_object_gives_a_json_object_on_chat_and_completions(client):
    chat = client.chat.completions.create(
        model="tiny-qwen3", messages=PROMPT, seed=1, max_tokens=300, response_format={"type": "json_object"}
    )
    text = client.completions.create(
        model="tiny-llama", prompt="JSON:", seed=2, max_tokens=300, extra_body={"response_format": {"type": "json_object"}}
    )
    for content, finish in ((chat.choices[0].message.content, chat.choices[0].finish_reason), (text.choices[0].text, text.choices[0].finish_reason)):
        assert content.startswith("{")
        if finish == "stop":  # a random model may write an object longer than max_tokens
            assert isinstance(json.loads(content), dict)


def test_every_choice_of_n_follows_the_schema(client):
    reply = client.chat.completions.create(
        model="tiny-qwen3", messages=PROMPT, n=4, seed=11, temperature=1.0, max_tokens=400,
        response_format=json_schema_format(Reading),
    )  # fmt: skip
    assert len(reply.choices) == 4
    for choice in reply.choices:
        Reading.model_validate_json(choice.message.content)


def test_response_format_text_is_free_text(client):
    reply = client.chat.completions.create(
        model="tiny-llama", messages=PROMPT, max_tokens=8, temperature=0, response_format={"type": "text"}
    )
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_muxd_client_takes_a_pydantic_model_as_response_format(tiny_daemon):
    from muxd.client import Client

    with Client(tiny_daemon.socket) as c:
        reply = c.chat("tiny-llama", "A person, please.", response_format=Person, seed=5, max_tokens=300)
        assert isinstance(reply.parsed(Person), Person)
        done = c.complete("tiny-qwen3", "Colors:", response_format=Palette, seed=6, max_tokens=300)
        Palette.model_validate_json(done.text)


@pytest.mark.asyncio
async def test_async_client_streams_structured_output(tiny_daemon):
    from muxd.client import AsyncClient

    async with AsyncClient(tiny_daemon.socket) as c:
        stream = await c.chat("tiny-qwen3", "Weather?", response_format=Reading, seed=8, max_tokens=300, stream=True)
        text = "".join([chunk.text async for chunk in stream])
        Reading.model_validate_json(text)
