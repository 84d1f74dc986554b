"""``muxd bench api``: what the front end adds to a request, and streamed tokens/s through it.

Two paths to the same unit configuration and the same prompt ids:

* **direct**: this process spawns a unit (``muxd.unit.run_unit``) and talks
  to it through the pipe, as the front end does: ``AddRequest`` ->
  ``TokenEvent``s. This is the floor: engine step plus pipe round trip.
* **api**: ``muxd serve`` in a subprocess, and an HTTP client over its Unix
  socket with keep-alive, as a user's program would.

The front end's added latency is the difference of the two latency
distributions for a 1-token completion (p50 and p99; each measured after a
warm-up, one request at a time, the other path stopped so they do not
compete for the CPU). Streamed tokens/s compares a long ``ignore_eos``
completion read chunk by chunk with the same request through the pipe.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from muxd import ipc
from muxd.config import Flags, UnitConfig, resolve

PROMPT = "What is the capital of France?"
TARGET_OVERHEAD_P50_MS = 2.0
KV_CACHE_MB = 64
MODEL_NAME = "bench"


def run_api_bench(
    model: Path,
    requests: int = 200,
    warmup: int = 20,
    stream_tokens: int = 256,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda _msg: None)
    from muxd.server.tokenizer import Tokenizer

    prompt_ids = Tokenizer.from_dir(model).encode(PROMPT)
    tmp = Path(tempfile.mkdtemp(prefix="muxd-bench-", dir="/tmp"))
    empty_config = tmp / "muxd.toml"  # the user's own config must not leak into either path
    empty_config.write_text("")
    say("direct: spawning a unit")
    direct = _bench_direct(unit_config(model, empty_config), prompt_ids, requests, warmup, stream_tokens)
    say("api: starting muxd serve")
    api = _bench_api(model, tmp, empty_config, requests, warmup, stream_tokens, say)
    result = {
        "bench": "api",
        "model": str(model),
        "prompt_tokens": len(prompt_ids),
        "requests": requests,
        "api_p50_ms": _q(api["latencies"], 50),
        "api_p99_ms": _q(api["latencies"], 99),
        "direct_p50_ms": _q(direct["latencies"], 50),
        "direct_p99_ms": _q(direct["latencies"], 99),
        "healthz_p50_ms": _q(api["healthz"], 50),
        "stream_tokens": stream_tokens,
        "api_stream_tok_s": round(api["stream_tok_s"], 1),
        "direct_stream_tok_s": round(direct["stream_tok_s"], 1),
        "target_overhead_p50_ms": TARGET_OVERHEAD_P50_MS,
    }
    result["overhead_p50_ms"] = round(result["api_p50_ms"] - result["direct_p50_ms"], 3)
    result["overhead_p99_ms"] = round(result["api_p99_ms"] - result["direct_p99_ms"], 3)
    result["meets_target"] = result["overhead_p50_ms"] < TARGET_OVERHEAD_P50_MS
    return result


def serve_flags(model: Path) -> list[str]:
    return ["--model", f"{MODEL_NAME}={model}", "--device", "cpu", "--kv-cache-mb", str(KV_CACHE_MB)]


def unit_config(model: Path, config_file: Path) -> UnitConfig:
    """The unit both paths run: what ``muxd serve`` resolves ``serve_flags`` to."""
    flags = Flags(config=config_file, models=(f"{MODEL_NAME}={model}",), device="cpu", kv_cache_mb=KV_CACHE_MB)
    (unit,) = resolve(flags, env={}).units
    return unit


# -- direct: the unit through its pipe ---------------------------------------------
def _bench_direct(
    config: UnitConfig, prompt_ids: list[int], requests: int, warmup: int, stream_tokens: int
) -> dict[str, Any]:
    from muxd.unit import run_unit

    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=run_unit, args=(config, child), daemon=True)
    proc.start()
    child.close()
    try:
        ready = conn.recv()
        if not isinstance(ready, ipc.Ready):
            raise RuntimeError(f"the unit did not start: {ready}")
        one = {"max_tokens": 1, "temperature": 0.0}
        latencies = []
        for i in range(warmup + requests):
            t0 = time.perf_counter()
            conn.send(ipc.AddRequest(f"d{i}", MODEL_NAME, prompt_ids, one))
            _until_finished(conn, f"d{i}")
            if i >= warmup:
                latencies.append((time.perf_counter() - t0) * 1e3)
        long = {"max_tokens": stream_tokens, "temperature": 0.0, "ignore_eos": True}
        t0 = time.perf_counter()
        conn.send(ipc.AddRequest("stream", MODEL_NAME, prompt_ids, long))
        tokens = _until_finished(conn, "stream")
        stream_tok_s = tokens / (time.perf_counter() - t0)
        conn.send(ipc.Shutdown())
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    return {"latencies": latencies, "stream_tok_s": stream_tok_s}


def _until_finished(conn: Any, request_id: str) -> int:
    tokens = 0
    while True:
        msg = conn.recv()
        for ev in msg if isinstance(msg, list) else ():
            if ev.request_id == request_id:
                tokens += len(ev.token_ids)
                if ev.finished:
                    return tokens


# -- api: muxd serve over its socket -------------------------------------------------
def _bench_api(
    model: Path, tmp: Path, config_file: Path, requests: int, warmup: int, stream_tokens: int, say: Callable[[str], None]
) -> dict[str, Any]:
    sock = tmp / "muxd.sock"
    cmd = [sys.executable, "-m", "muxd", "serve", *serve_flags(model), "--config", str(config_file),
           "--socket", str(sock), "--log-level", "warning"]  # fmt: skip
    log = open(tmp / "serve.log", "w+")
    daemon = subprocess.Popen(cmd, stderr=log)
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://muxd", timeout=60) as http:
            _wait_healthy(http, daemon, log)
            say(f"api: {requests} one-token completions")
            body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
            latencies = []
            for i in range(warmup + requests):
                t0 = time.perf_counter()
                http.post("/v1/completions", json=body).raise_for_status()
                if i >= warmup:
                    latencies.append((time.perf_counter() - t0) * 1e3)
            healthz = []
            for _ in range(requests):
                t0 = time.perf_counter()
                http.get("/healthz")
                healthz.append((time.perf_counter() - t0) * 1e3)
            say(f"api: streaming {stream_tokens} tokens")
            long = {**body, "max_tokens": stream_tokens, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}  # fmt: skip
            t0 = time.perf_counter()
            tokens = 0
            with http.stream("POST", "/v1/completions", json=long) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {") and '"usage":{' in line:
                        tokens = json.loads(line[6:])["usage"]["completion_tokens"]
            stream_tok_s = tokens / (time.perf_counter() - t0)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
    return {"latencies": latencies, "healthz": healthz, "stream_tok_s": stream_tok_s}


def _wait_healthy(http: httpx.Client, daemon: subprocess.Popen, log: Any, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"muxd serve exited with {daemon.returncode}: {log.read()[-2000:]}")
        try:
            if http.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"muxd serve was not healthy within {timeout:.0f} s")


def _q(values: list[float], q: int) -> float:
    if len(values) < 2:
        return round(values[0], 3) if values else float("nan")
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values), 3)
