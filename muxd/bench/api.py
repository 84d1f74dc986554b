"""``muxd bench api``: what the front end adds to a request, and streamed tokens/s through it.

Two paths to the same unit configuration and the same prompt ids:

* **direct**: this process spawns a unit (``muxd.unit.run_unit``) and talks
  to it through the pipe, as the front end does: ``AddRequest`` ->
  ``TokenEvent``s. This is the floor: engine step plus pipe round trip.
* **api**: ``muxd serve`` in a subprocess, reached over its Unix socket with
  keep-alive by a minimal HTTP/1.1 client (pre-built request bytes), so that
  the figure is the front end's and not the client library's; the same
  requests through ``httpx`` are reported too, as a Python program sees them.

The front end's added latency is the difference of the two latency
distributions for a 1-token completion (p50 and p99), one request at a
time. The paths take turns request by request (both units are alive; an
idle unit sleeps on its pipe), so a machine whose load drifts during the run
shifts both alike. Streamed tokens/s compares a long ``ignore_eos``
completion read chunk by chunk with the same request through the pipe.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import signal
import socket
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
    config_file = tmp / "muxd.toml"  # the user's own config must not leak into either path
    config_file.write_text("warm_spare = false\n")  # a spare importing torch would compete for the CPU
    say("starting a unit and muxd serve")
    try:
        ms, direct_tok_s, api_tok_s = _measure(model, tmp, config_file, prompt_ids, requests, warmup, stream_tokens, say)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the daemon's log is in a failure's message
    result: dict[str, Any] = {"bench": "api", "model": str(model), "prompt_tokens": len(prompt_ids), "requests": requests}
    for name in ("api", "httpx", "direct", "healthz"):
        key = "api_httpx" if name == "httpx" else name
        result[f"{key}_p50_ms"] = _q(ms[name], 50)
        result[f"{key}_p99_ms"] = _q(ms[name], 99)
    result.update(stream_tokens=stream_tokens, api_stream_tok_s=round(api_tok_s, 1),
                  direct_stream_tok_s=round(direct_tok_s, 1), target_overhead_p50_ms=TARGET_OVERHEAD_P50_MS)  # fmt: skip
    result["overhead_p50_ms"] = round(result["api_p50_ms"] - result["direct_p50_ms"], 3)
    result["overhead_p99_ms"] = round(result["api_p99_ms"] - result["direct_p99_ms"], 3)
    result["meets_target"] = result["overhead_p50_ms"] < TARGET_OVERHEAD_P50_MS
    return result


def _measure(
    model: Path, tmp: Path, config_file: Path, prompt_ids: list[int], requests: int, warmup: int, stream_tokens: int,
    say: Callable[[str], None],
) -> tuple[dict[str, list[float]], float, float]:
    one = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
    long = {**one, "max_tokens": stream_tokens, "ignore_eos": True}
    with DirectUnit(unit_config(model, config_file)) as direct, Daemon(model, tmp, config_file) as daemon:
        raw = RawHTTP(daemon.socket)
        calls = {
            "direct": lambda: direct.complete(prompt_ids, {"max_tokens": 1, "temperature": 0.0}),
            "api": lambda: raw.post("/v1/completions", one),
            "httpx": lambda: daemon.http.post("/v1/completions", json=one).raise_for_status(),
            "healthz": lambda: daemon.http.get("/healthz"),
        }
        say(f"{requests} one-token completions per path, taking turns")
        ms = _take_turns(calls, requests, warmup)
        raw.close()
        say(f"streaming {stream_tokens} tokens")
        t0 = time.perf_counter()
        tokens = direct.complete(prompt_ids, {"max_tokens": stream_tokens, "temperature": 0.0, "ignore_eos": True})
        direct_tok_s = tokens / (time.perf_counter() - t0)
        api_tok_s = daemon.stream_tok_s(long)
    return ms, direct_tok_s, api_tok_s


def serve_flags(model: Path) -> list[str]:
    return ["--model", f"{MODEL_NAME}={model}", "--device", "cpu", "--kv-cache-mb", str(KV_CACHE_MB)]


def unit_config(model: Path, config_file: Path) -> UnitConfig:
    """The unit both paths run: what ``muxd serve`` resolves ``serve_flags`` to."""
    flags = Flags(config=config_file, models=(f"{MODEL_NAME}={model}",), device="cpu", kv_cache_mb=KV_CACHE_MB)
    (unit,) = resolve(flags, env={}).units
    return unit


def _take_turns(calls: dict[str, Callable[[], object]], requests: int, warmup: int) -> dict[str, list[float]]:
    ms: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(warmup + requests):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            if i >= warmup:
                ms[name].append((time.perf_counter() - t0) * 1e3)
    return ms


class DirectUnit:
    """A unit process of this one's, driven through its pipe as the front end drives its units."""

    def __init__(self, config: UnitConfig) -> None:
        self.config = config
        self._ids = 0

    def __enter__(self) -> DirectUnit:
        from muxd.unit import run_unit

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=run_unit, args=(self.config, child), daemon=True)
        self.proc.start()
        child.close()
        ready = self.conn.recv()
        if not isinstance(ready, ipc.Ready):
            raise RuntimeError(f"the unit did not start: {ready}")
        return self

    def complete(self, prompt_ids: list[int], params: dict[str, Any]) -> int:
        """Send one request and wait for its last event; the number of tokens generated."""
        self._ids += 1
        request_id = f"d{self._ids}"
        self.conn.send(ipc.AddRequest(request_id, MODEL_NAME, prompt_ids, params))
        tokens = 0
        while True:
            msg = self.conn.recv()
            for ev in msg if isinstance(msg, list) else ():
                if ev.request_id == request_id:
                    tokens += len(ev.token_ids)
                    if ev.finished:
                        return tokens

    def __exit__(self, *exc: object) -> None:
        try:
            self.conn.send(ipc.Shutdown())
        except OSError:
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()


class Daemon:
    """``muxd serve`` in a subprocess on a socket of its own."""

    def __init__(self, model: Path, tmp: Path, config_file: Path) -> None:
        self.socket = tmp / "muxd.sock"
        self.cmd = [sys.executable, "-m", "muxd", "serve", *serve_flags(model), "--config", str(config_file),
                    "--socket", str(self.socket), "--log-level", "warning"]  # fmt: skip
        self.log_path = tmp / "serve.log"

    def __enter__(self) -> Daemon:
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(self.cmd, stderr=self.log)
        transport = httpx.HTTPTransport(uds=str(self.socket))
        self.http = httpx.Client(transport=transport, base_url="http://muxd", timeout=60)
        self._wait_healthy()
        return self

    def stream_tok_s(self, body: dict[str, Any]) -> float:
        t0 = time.perf_counter()
        tokens = 0
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        with self.http.stream("POST", "/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and '"usage":{' in line:
                    tokens = json.loads(line[6:])["usage"]["completion_tokens"]
        return tokens / (time.perf_counter() - t0)

    def _wait_healthy(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"muxd serve exited with {self.proc.returncode}: {self.log.read()[-2000:]}")
            try:
                if self.http.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"muxd serve was not healthy within {timeout:.0f} s")

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class RawHTTP:
    """The least an HTTP/1.1 client can do: one keep-alive connection, requests as bytes, Content-Length bodies."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buffer = b""

    def post(self, path: str, body: dict[str, Any]) -> bytes:
        payload = json.dumps(body).encode()
        head = f"POST {path} HTTP/1.1\r\nhost: muxd\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
        self.sock.sendall(head.encode() + payload)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        header, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status = int(header.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in header.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        while len(self.buffer) < length:
            self.buffer += self._recv()
        answer, self.buffer = self.buffer[:length], self.buffer[length:]
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {answer[:200]!r}")
        return answer

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def _q(values: list[float], q: int) -> float:
    if len(values) < 2:
        return round(values[0], 3) if values else float("nan")
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 3)
