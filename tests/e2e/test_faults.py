"""Faults: a unit killed mid-stream, clients that hang up, a burst past the queue limit."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
import time

import httpx
import pytest

from tests.e2e.conftest import short_tmp_dir, start_daemon, tiny_config, wait_for

QUEUE = 8  # per model, small so that a burst overflows it


@pytest.fixture(scope="module")
def daemon(tiny_models):
    tmp = short_tmp_dir()
    config = tiny_config(tiny_models, tmp / "muxd.sock", warm_spare=True, queue_per_model=QUEUE, drain_timeout_s=10)
    d = start_daemon(config, tmp)
    wait_for(lambda: spare_ready(d), 60, "the warm spare")
    yield d
    assert d.stop() == 0, d.log()
    shutil.rmtree(tmp, ignore_errors=True)


def spare_ready(daemon) -> bool:
    """The unit's warm spare has imported torch and gone idle (its CPU time stopped growing)."""
    pid = daemon.get("/muxd/v1/status").json()["units"][0]["spare_pid"]
    try:
        if pid is None or "libtorch" not in open(f"/proc/{pid}/maps").read():
            return False
        before = cpu_ticks(pid)
        time.sleep(0.3)
        return cpu_ticks(pid) == before
    except OSError:
        return False


def cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def aclient(daemon) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(daemon.socket))
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    return httpx.AsyncClient(transport=transport, base_url="http://muxd", timeout=60, limits=limits)


def stats(daemon) -> dict:
    return daemon.get("/muxd/v1/stats").json()


def test_a_killed_unit_fails_its_requests_with_503_and_its_warm_spare_takes_over(daemon):
    pid = daemon.unit_pid()
    waiting = {}

    def non_streaming() -> None:
        with daemon.http(timeout=60) as http:
            body = {"model": "tiny-qwen3", "prompt": [5, 6], "max_tokens": 500, "ignore_eos": True}
            waiting["response"] = http.post("/v1/completions", json=body)

    thread = threading.Thread(target=non_streaming)
    with daemon.http(timeout=60) as http:
        body = {"model": "tiny-llama", "prompt": "Once", "max_tokens": 500, "ignore_eos": True, "stream": True}
        with http.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: {"))  # a token arrived: mid-stream
            thread.start()
            wait_for(lambda: stats(daemon)["models"]["tiny-qwen3"]["in_flight"] == 1, 10, "the second request")
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            rest = [line for line in lines if line.startswith("data: ")]
    error = json.loads(rest[-2].removeprefix("data: "))["error"]
    assert error["code"] == "unit_unavailable" and "SIGKILL" in error["message"] and rest[-1] == "data: [DONE]"
    thread.join(timeout=30)
    assert waiting["response"].status_code == 503, waiting["response"].text

    recovery = recover(daemon, killed_at)
    print(f"\nrecovery after kill -9 of the unit, warm spare: {recovery:.2f} s to the first successful request")
    status = daemon.get("/muxd/v1/status").json()["units"][0]
    assert status["restarts"] == 1 and status["pid"] != pid and status["state"] == "ready"


def test_while_a_unit_restarts_new_requests_get_503_with_retry_after(daemon):
    """Killed again before its new spare is warm, the unit takes seconds to come back: 503s meanwhile."""
    killed_at = time.monotonic()
    os.kill(daemon.unit_pid(), signal.SIGKILL)
    wait_for(lambda: daemon.health()["status"] == "degraded", 10, "the daemon to notice")
    with daemon.http() as http:
        refused = http.post("/v1/completions", json={"model": "tiny-llama", "prompt": "x", "max_tokens": 1})
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert "restarting" in refused.json()["error"]["message"]
    recovery = recover(daemon, killed_at)
    print(f"\nrecovery after kill -9 of the unit, spare still starting: {recovery:.2f} s")


def recover(daemon, since: float) -> float:
    """Wait for the daemon to be healthy and serve a request; seconds since ``since``."""
    daemon.wait_healthy(timeout=60)
    with daemon.http() as http:
        ok = http.post("/v1/completions", json={"model": "tiny-llama", "prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200, ok.text
    return time.monotonic() - since


@pytest.mark.asyncio
async def test_200_streams_cancelled_mid_stream_give_every_page_back(daemon):
    async def cancel_one(i: int) -> None:
        model = ("tiny-llama", "tiny-qwen3")[i % 2]
        body = {"model": model, "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True, "stream": True}
        async with http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    break  # the first token: leave mid-stream, which closes the connection

    async with aclient(daemon) as http:
        wave = QUEUE // 2 * 2 - 2  # per wave, 3 per model: the previous wave's aborts may still be landing
        for start in range(0, 200, wave):
            await asyncio.gather(*(cancel_one(i) for i in range(start, min(200, start + wave))))

    def pool_full() -> bool:
        s = stats(daemon)
        unit = s["units"]["cpu0"]
        idle = all(m["in_flight"] == 0 and m["running"] == 0 and m["queued"] == 0 for m in s["models"].values())
        return idle and unit["pages_free"] == unit["pages_total"]

    wait_for(pool_full, 30, "the KV pool to be full again")
    assert daemon.health()["status"] == "ok"


@pytest.mark.asyncio
async def test_a_burst_ten_times_the_queue_limit_gets_429s_and_every_admitted_request_completes(daemon):
    body = {"model": "tiny-llama", "prompt": "Once upon a time", "max_tokens": 64, "ignore_eos": True}
    async with aclient(daemon) as http:
        responses = await asyncio.gather(*(http.post("/v1/completions", json=body) for _ in range(10 * QUEUE)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) > 0 and codes.count(200) >= QUEUE
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "queue_full"
        else:
            assert r.json()["usage"]["completion_tokens"] == 64
    assert daemon.health()["status"] == "ok"
    rejected = lambda: stats(daemon)["models"]["tiny-llama"]["rejected"] == codes.count(429)  # noqa: E731
    wait_for(rejected, 10, "a stats tick that counts every 429")
