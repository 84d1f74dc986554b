"""``GET /muxd/v1/stats/stream``: typed stats each tick, events with ids, replay, errors, and an end at shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from muxd.client import AsyncClient, BadRequestError, Client, ConnectionLostError, DaemonNotRunningError
from muxd.errors import MuxdError
from muxd.protocol import Event, Stats
from tests.e2e.conftest import short_tmp_dir, start_daemon, tiny_config, wait_for


def read_until(stream, condition, timeout: float = 60.0):
    """Items of ``stream`` until ``condition(item)``; that item last."""
    deadline = time.monotonic() + timeout
    seen = []
    for item in stream:
        seen.append(item)
        if condition(item):
            return seen
        if time.monotonic() > deadline:
            break
    pytest.fail(f"the stream did not give what was awaited in {timeout:.0f} s; last items: {seen[-3:]}")


def test_a_stats_document_comes_each_tick_and_shows_the_requests(tiny_daemon):
    with Client(tiny_daemon.socket) as client:
        before = client.stats().models["tiny-llama"].done
        with client.stats_stream(interval_ms=100) as stream:
            client.complete("tiny-llama", "The capital", max_tokens=8, temperature=0, ignore_eos=True)
            docs = [i for i in read_until(stream, lambda i: isinstance(i, Stats) and i.models["tiny-llama"].done > before)
                    if isinstance(i, Stats)]  # fmt: skip
    m = docs[-1].models["tiny-llama"]
    assert m.generated_tokens >= 8 and m.tokens_out_per_s > 0 and m.tokens_in_per_s > 0
    assert m.share.prefill > 0 and m.share.decode > 0
    assert m.latency.requests >= 1 and m.latency.e2e_ms.p50 >= m.latency.ttft_ms.p50 > 0
    unit = docs[-1].units[m.unit]
    assert 0 < unit.busy <= 1 and m.share.total <= unit.busy + 0.02  # shares are parts of the unit's busy share
    assert docs[-1].devices["cpu"].cpu.memory_total_bytes > 0


def test_the_ring_replays_the_daemons_events_in_order(tiny_daemon):
    with Client(tiny_daemon.socket) as client, client.stats_stream(last_event_id=0) as stream:
        items = read_until(stream, lambda i: isinstance(i, Stats))
    events = [i for i in items if isinstance(i, Event)]
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["unit_starting", "unit_ready"] and kinds.count("model_loaded") == 2
    assert [e.id for e in events] == sorted(e.id for e in events) and events[0].id == 1
    assert {e.model for e in events if e.kind == "model_loaded"} == {"tiny-llama", "tiny-qwen3"}


def test_last_event_id_replays_only_the_events_after_it(tiny_daemon):
    with Client(tiny_daemon.socket) as client, client.stats_stream(last_event_id=2) as stream:
        items = read_until(stream, lambda i: isinstance(i, Stats))
    assert all(e.id > 2 for e in items if isinstance(e, Event))


def test_the_wire_format_is_server_sent_events(tiny_daemon):
    with tiny_daemon.http() as http, http.stream("GET", "/muxd/v1/stats/stream", headers={"last-event-id": "0"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = []
        for line in r.iter_lines():
            lines.append(line)
            if line == "event: stats":
                break
    assert lines[0] == "id: 1" and lines[1] == "event: event" and lines[2].startswith('data: {"id":1,')


@pytest.mark.parametrize("interval", ["0", "abc", "10"])
def test_a_bad_interval_is_a_400_naming_it(tiny_daemon, interval):
    with tiny_daemon.http() as http:
        r = http.get("/muxd/v1/stats/stream", params={"interval_ms": interval})
    assert r.status_code == 400 and r.json()["error"]["param"] == "interval_ms"
    with Client(tiny_daemon.socket) as client, pytest.raises(BadRequestError, match="interval_ms"):
        client.stats_stream(interval_ms=int(interval) if interval.isdigit() else 1)


def test_the_async_client_streams_too(tiny_daemon):
    async def first_stats() -> Stats:
        async with AsyncClient(tiny_daemon.socket) as client:
            async with await client.stats_stream(interval_ms=200) as stream:
                async for item in stream:
                    if isinstance(item, Stats):
                        return item
        raise AssertionError("no stats")

    assert set(asyncio.run(first_stats()).models) == {"tiny-llama", "tiny-qwen3"}


def test_a_crash_and_restart_are_events_and_the_stream_ends_when_the_daemon_stops(tiny_models):
    tmp = short_tmp_dir()
    daemon = start_daemon(tiny_config(tiny_models, tmp / "muxd.sock", drain_timeout_s=30), tmp)
    try:
        with Client(daemon.socket) as client, client.stats_stream(interval_ms=100, last_event_id=0) as stream:
            read_until(stream, lambda i: isinstance(i, Stats))
            os.kill(daemon.unit_pid(), signal.SIGKILL)
            items = read_until(stream, lambda i: isinstance(i, Event) and i.kind == "unit_ready" and i.id > 3)
            kinds = [i.kind for i in items if isinstance(i, Event)]
            assert kinds.index("unit_crashed") < kinds.index("unit_restarting") < kinds.index("unit_ready")
            started = time.monotonic()
            daemon.proc.send_signal(signal.SIGTERM)
            for _ in stream:  # the daemon ends the stream rather than wait out the drain
                pass
        assert daemon.proc.wait(timeout=30) == 0 and time.monotonic() - started < 20
    finally:
        daemon.stop()
    wait_for(lambda: not daemon.socket.exists(), 10, "the socket to go")


def test_openapi_describes_each_event_of_each_stream(tiny_daemon):
    with Client(tiny_daemon.socket) as client:
        paths = client.openapi()["paths"]
    stream = paths["/muxd/v1/stats/stream"]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert {v["title"]: v["properties"]["data"]["$ref"].rsplit("/", 1)[1] for v in stream["oneOf"]} == {
        "stats": "Stats", "event": "Event"}
    chat = paths["/v1/chat/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert [v["title"] for v in chat["oneOf"]] == ["message", "done"]
    assert chat["oneOf"][0]["properties"]["data"]["$ref"].endswith("/ChatCompletionChunk")


def test_no_stream_holds_up_a_stopping_daemons_exit(tiny_models):
    tmp = short_tmp_dir()
    daemon = start_daemon(tiny_config(tiny_models, tmp / "muxd.sock", drain_timeout_s=30), tmp)
    try:
        with Client(daemon.socket) as client:
            assert client.health().status == "ok"
            daemon.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            while daemon.proc.poll() is None and time.monotonic() - started < 30:
                try:  # refused (503), no listener or connection any more, or a stream that ends with the drain
                    with client.stats_stream() as stream:
                        for _ in stream:
                            assert time.monotonic() - started < 20, "a stats stream outlived the drain"
                except (DaemonNotRunningError, ConnectionLostError):
                    pass
                except MuxdError as e:
                    assert e.http_status == 503 and "shutting down" in e.message
                time.sleep(0.01)
        assert daemon.proc.wait(timeout=30) == 0 and time.monotonic() - started < 20
    finally:
        daemon.stop()
