"""``muxd.client`` covers every endpoint, sync and async, with typed results and errors."""

from __future__ import annotations

import pytest

from muxd.client import AsyncClient, BadRequestError, Client, DaemonNotRunningError, NotFoundError
from muxd.errors import MuxdError
from muxd.protocol import ChatCompletion, ChatCompletionChunk, Completion
from tests.e2e.conftest import wait_for


@pytest.fixture
def client(tiny_daemon):
    with Client(tiny_daemon.socket) as c:
        yield c


def test_client_finds_the_socket_from_muxd_socket(tiny_daemon, monkeypatch):
    monkeypatch.setenv("MUXD_SOCKET", str(tiny_daemon.socket))
    with Client() as c:
        assert c.socket == tiny_daemon.socket
        assert [m.id for m in c.models()] == ["tiny-llama", "tiny-qwen3"]


def test_client_finds_the_socket_from_the_config_file(tiny_daemon, monkeypatch):
    monkeypatch.delenv("MUXD_SOCKET", raising=False)
    monkeypatch.setenv("MUXD_CONFIG", str(tiny_daemon.config_path))
    with Client() as c:
        assert c.socket == tiny_daemon.socket


def test_complete_and_chat(client):
    done = client.complete("tiny-llama", "The capital", max_tokens=3, temperature=0, ignore_eos=True)
    assert isinstance(done, Completion) and done.usage.completion_tokens == 3 and isinstance(done.text, str)
    chat = client.chat("tiny-qwen3", "What is the capital of France?", max_tokens=4, temperature=0)
    assert isinstance(chat, ChatCompletion) and chat.choices[0].finish_reason in ("stop", "length")


def test_streams_are_typed_and_match_the_whole_answer(client):
    whole = client.chat("tiny-llama", "hi", max_tokens=6, temperature=0, ignore_eos=True).text
    with client.chat("tiny-llama", "hi", stream=True, max_tokens=6, temperature=0, ignore_eos=True,
                     include_usage=True) as stream:  # fmt: skip
        chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert "".join(c.text for c in chunks) == whole
    assert chunks[-1].usage.completion_tokens == 6
    assert client.complete("tiny-llama", "x", stream=True, max_tokens=2, temperature=0).text() is not None


def test_health_status_stats_metrics_openapi(client):
    assert client.health().status == "ok"
    status = client.status()
    assert [u.name for u in status.units] == ["cpu0"] and status.units[0].state == "ready"
    assert status.units[0].pool.pages_total > 0 and status.policy == status.units[0].policy
    assert status.units[0].compute.kind == "threads" and status.units[0].compute.slots >= 1
    assert {m.name for m in status.models} == {"tiny-llama", "tiny-qwen3"}
    client.complete("tiny-qwen3", "x", max_tokens=2)
    stats = wait_for(lambda: (s := client.stats()).models["tiny-qwen3"].done and s, 10, "the next stats tick")
    model = stats.models["tiny-qwen3"]
    assert model.done >= 1 and model.generated_tokens >= 1 and model.latency.ttft_ms.p50 is not None
    assert stats.units["cpu0"].pages_total == status.units[0].pool.pages_total
    assert stats.devices["cpu"].memory_used_bytes > 0
    metrics = client.metrics()
    assert 'muxd_requests_done_total{model="tiny-qwen3"}' in metrics and "# TYPE muxd_ttft_seconds summary" in metrics
    doc = client.openapi()
    assert doc["openapi"].startswith("3.") and "/v1/chat/completions" in doc["paths"]
    assert "ChatCompletionRequest" in doc["components"]["schemas"]


def test_errors_are_typed(client):
    with pytest.raises(NotFoundError) as e:
        client.chat("nope", "hi")
    assert e.value.http_status == 404 and e.value.code == "model_not_found" and "tiny-llama" in e.value.message
    with pytest.raises(BadRequestError) as e:
        client.complete("tiny-llama", "x", temperature=-1)
    assert e.value.param == "temperature" and isinstance(e.value, MuxdError)


def test_no_daemon_is_a_clear_error(tmp_path):
    with Client(tmp_path / "none.sock") as c, pytest.raises(DaemonNotRunningError, match="muxd serve"):
        c.models()


@pytest.mark.asyncio
async def test_async_client_covers_the_same_endpoints(tiny_daemon):
    async with AsyncClient(tiny_daemon.socket) as c:
        assert len(await c.models()) == 2
        assert (await c.health()).status == "ok"
        assert (await c.complete("tiny-llama", "x", max_tokens=2, temperature=0)).usage.completion_tokens <= 2
        reply = await c.chat("tiny-llama", "hi", max_tokens=3, temperature=0, ignore_eos=True)
        stream = await c.chat("tiny-llama", "hi", stream=True, max_tokens=3, temperature=0, ignore_eos=True)
        assert await stream.text() == reply.text
        assert (await c.status()).units[0].name == "cpu0"
        assert "tiny-llama" in (await c.stats()).models
        assert "muxd_unit_up" in await c.metrics()
        assert "paths" in await c.openapi()
        with pytest.raises(NotFoundError):
            await c.complete("nope", "x")


def test_stats_report_prompt_tokens_served_from_the_prefix_cache(client):
    before = client.stats().models["tiny-llama"]
    prompt = list(range(5, 45))  # 40 tokens: two full 16-token blocks, then a partial one
    first = client.complete("tiny-llama", prompt, max_tokens=2, temperature=0, ignore_eos=True)
    again = client.complete("tiny-llama", prompt, max_tokens=2, temperature=0, ignore_eos=True)
    assert again.text == first.text

    def reused_both_blocks():  # the second request's 32 tokens, once a stats tick has seen it
        m = client.stats().models["tiny-llama"]
        return m.prefix_hit_tokens - before.prefix_hit_tokens >= 32 and m

    after = wait_for(reused_both_blocks, 10, "a stats tick with the prefix-cache hits")
    assert after.prefix_query_tokens - before.prefix_query_tokens >= 2 * len(prompt)
