"""The official openai SDK against ``muxd serve`` on tiny models, through the real socket."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import openai
import pytest
import pytest_asyncio

from muxd import protocol

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(tiny_daemon):
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(tiny_daemon.socket)))
    with openai.OpenAI(base_url="http://localhost/v1", api_key="unused", http_client=http, max_retries=0) as c:
        yield c


@pytest_asyncio.fixture
async def aclient(tiny_daemon):
    http = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(tiny_daemon.socket)))
    async with openai.AsyncOpenAI(base_url="http://localhost/v1", api_key="unused", http_client=http, max_retries=0) as c:
        yield c


def test_models_lists_every_served_model(client):
    assert {m.id for m in client.models.list()} == {"tiny-llama", "tiny-qwen3"}


def test_chat_completion_returns_text_and_usage(client):
    reply = client.chat.completions.create(model="tiny-llama", messages=PROMPT, max_tokens=8, temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and choice.message.content is not None
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_greedy_chat_is_deterministic_and_streaming_gives_the_same_text(client):
    kwargs = dict(model="tiny-qwen3", messages=PROMPT, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    assert client.chat.completions.create(**kwargs).choices[0].message.content == whole
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stream_options_include_usage_adds_a_final_usage_chunk(client):
    stream = client.chat.completions.create(
        model="tiny-llama", messages=PROMPT, max_completion_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_with_text_and_token_id_prompts(client):
    reply = client.completions.create(model="tiny-llama", prompt="The capital of France", max_tokens=4, temperature=0)
    assert reply.object == "text_completion" and reply.usage.completion_tokens <= 4
    by_ids = client.completions.create(model="tiny-llama", prompt=[5, 6, 7], max_tokens=3, temperature=0,
                                       extra_body={"ignore_eos": True})  # fmt: skip
    assert by_ids.usage.prompt_tokens == 3 and by_ids.usage.completion_tokens == 3


def test_streamed_completion_ends_with_a_finish_reason(client):
    chunks = list(client.completions.create(model="tiny-qwen3", prompt="Once", max_tokens=6, stream=True,
                                            temperature=0, extra_body={"ignore_eos": True}))  # fmt: skip
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.object == "text_completion" for c in chunks)


def test_n_fans_out_into_independent_choices(client):
    reply = client.chat.completions.create(model="tiny-llama", messages=PROMPT, n=3, max_tokens=6, temperature=1.0,
                                           seed=11, extra_body={"ignore_eos": True})  # fmt: skip
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    assert reply.usage.completion_tokens == 18
    again = client.chat.completions.create(model="tiny-llama", messages=PROMPT, n=3, max_tokens=6, temperature=1.0,
                                           seed=11, extra_body={"ignore_eos": True})  # fmt: skip
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]


def test_n_choices_stream_side_by_side(client):
    stream = client.chat.completions.create(model="tiny-qwen3", messages=PROMPT, n=2, max_tokens=4, temperature=0,
                                            stream=True, extra_body={"ignore_eos": True})  # fmt: skip
    finishes = {c.choices[0].index: c.choices[0].finish_reason for c in stream if c.choices[0].finish_reason}
    assert finishes == {0: "length", 1: "length"}


def test_seed_makes_sampling_reproducible(client):
    def sample(seed: int) -> str:
        extra = {"ignore_eos": True, "top_k": 50}
        r = client.completions.create(model="tiny-qwen3", prompt="Hello", max_tokens=10, temperature=1.0, top_p=0.9,
                                      seed=seed, extra_body=extra)  # fmt: skip
        return r.choices[0].text

    assert sample(7) == sample(7)


def test_stop_string_cuts_the_text_and_finishes_with_stop(client):
    kwargs = dict(model="tiny-llama", prompt="The", max_tokens=30, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**kwargs).choices[0].text
    stop = full[4:7]  # some text the greedy output is known to contain
    assert stop.strip(), full
    cut = client.completions.create(stop=[stop], **kwargs).choices[0]
    assert cut.finish_reason == "stop" and cut.text == full[: full.index(stop)]


def test_logprobs_of_the_sampled_tokens(client):
    reply = client.chat.completions.create(model="tiny-llama", messages=PROMPT, max_tokens=4, temperature=0,
                                           logprobs=True, extra_body={"ignore_eos": True})  # fmt: skip
    content = reply.choices[0].logprobs.content
    assert len(content) == 4 and all(t.logprob <= 0 for t in content)
    completion = client.completions.create(model="tiny-llama", prompt="Hi", max_tokens=3, temperature=0, logprobs=0,
                                           extra_body={"ignore_eos": True})  # fmt: skip
    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == 3


def test_sdk_errors_carry_status_and_message(client):
    with pytest.raises(openai.NotFoundError, match="served models: tiny-llama, tiny-qwen3"):
        client.chat.completions.create(model="gpt-4", messages=PROMPT)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="tiny-llama", messages=PROMPT, max_tokens=-1)


@pytest.mark.asyncio
async def test_async_sdk_streams_and_answers(aclient):
    reply = await aclient.chat.completions.create(model="tiny-qwen3", messages=PROMPT, max_tokens=5, temperature=0)
    assert reply.choices[0].message.content is not None
    stream = await aclient.chat.completions.create(model="tiny-qwen3", messages=PROMPT, max_tokens=5, temperature=0,
                                                   stream=True, extra_body={"ignore_eos": True})  # fmt: skip
    texts = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert texts
    models = await aclient.models.list()
    assert len(models.data) == 2


def test_responses_match_the_protocol_models(tiny_daemon):
    """The daemon builds responses as dicts; they must parse as the documented response types."""
    with tiny_daemon.http() as http:
        body = {"model": "tiny-llama", "messages": PROMPT, "max_tokens": 3, "logprobs": True}
        protocol.ChatCompletion.model_validate(http.post("/v1/chat/completions", json=body).json())
        protocol.Completion.model_validate(http.post("/v1/completions", json={"model": "tiny-llama", "prompt": "x",
                                                                                "max_tokens": 2}).json())  # fmt: skip
        protocol.ModelList.model_validate(http.get("/v1/models").json())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_over_the_unix_socket(tiny_daemon):
    sock = str(tiny_daemon.socket)
    models = subprocess.run(["curl", "-sf", "--unix-socket", sock, "http://localhost/v1/models"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert [m["id"] for m in json.loads(models.stdout)["data"]] == ["tiny-llama", "tiny-qwen3"]
    body = json.dumps({"model": "tiny-llama", "messages": PROMPT, "max_tokens": 4, "stream": True})
    stream = subprocess.run(["curl", "-sfN", "--unix-socket", sock, "http://localhost/v1/chat/completions",
                             "-H", "content-type: application/json", "-d", body],
                            capture_output=True, text=True, check=True)  # fmt: skip
    events = [line for line in stream.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) >= 3
