"""``muxd bench serve``: streamed chat completions against any OpenAI-compatible server, muxd and a peer.

Like vLLM's serving benchmark, but closed-loop: at each concurrency level C,
C workers issue streaming ``/v1/chat/completions`` requests back to back
(the same fixed prompts, temperature 0, ``max_tokens`` each) until N requests
are done. The levels alternate between muxd and the peer (muxd at C=1, the
peer at C=1, muxd at C=8, ...) so that both are measured close together in
time on a shared, noisy machine, and never at the same time; with
``repeats`` > 1 they take turns that many times per level and each keeps
its best run.

Per level and server: aggregate tok/s (generated tokens / wall time of the
level), TTFT (request sent -> first content chunk) and TPOT
((latency - TTFT) / (tokens - 1)) percentiles, requests and errors. Tokens
come from the ``usage`` of the last chunk (asked for with
``stream_options.include_usage``) where the server sends it, else from the
number of content chunks.

``ignore_eos`` (muxd's and llama.cpp's extension) is sent so that every
request generates exactly ``max_tokens``; a server that rejects it in the
warm-up is asked again without it, and the report says so.

Only httpx and the standard library: the bench runs where torch is not installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from muxd.core.percentile import percentile
from muxd.engine import cpu_isa

PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Explain photosynthesis in one paragraph.",
    "Write a haiku about the sea.",
    "What are three uses of a paperclip?",
    "How does a bicycle stay upright?",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet.",
    "What is the difference between a virus and a bacterium?",
    "List five animals that live in the desert.",
    "How do I reverse a list in Python?",
    "What causes the seasons on Earth?",
    "Describe a good morning routine.",
    "What is machine learning?",
    "Tell me a short story about a robot who learns to paint.",
    "How many planets are in the solar system, and which is the largest?",
)
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 600.0  # one request at C=16 on a slow server can take minutes


class ServeBenchError(Exception):
    """The bench cannot go on: a server is unreachable or refuses the warm-up request."""


@dataclass(frozen=True)
class Server:
    """One OpenAI-compatible server under test: ``url`` is ``http(s)://host:port`` or a Unix socket path."""

    label: str
    url: str
    model: str

    def client(self, concurrency: int) -> httpx.AsyncClient:
        transport, base_url = connection(self.url, max(concurrency, 1))
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        return httpx.AsyncClient(transport=transport, base_url=base_url, timeout=timeout)


def connection(url: str, max_connections: int) -> tuple[httpx.AsyncHTTPTransport, str]:
    """``http://h:p[/v1]`` -> a TCP transport and ``http://h:p``; anything else is a Unix socket path."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    if url.startswith(("http://", "https://")):
        base = url.rstrip("/").removesuffix("/v1")
        return httpx.AsyncHTTPTransport(limits=limits), base
    return httpx.AsyncHTTPTransport(uds=url, limits=limits), "http://localhost"  # the host is ignored over a socket


@dataclass
class RequestResult:
    """One streamed request as the client saw it (times in seconds from sending it)."""

    tokens: int = 0
    ttft_s: float | None = None
    latency_s: float = 0.0
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        if self.error or self.ttft_s is None or self.tokens < 2:
            return None
        return (self.latency_s - self.ttft_s) / (self.tokens - 1)


@dataclass
class LevelResult:
    """One concurrency level against one server."""

    concurrency: int
    wall_s: float
    results: list[RequestResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.results if r.error is None]
        tokens = sum(r.tokens for r in ok)
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        tpot = [r.tpot_s for r in ok if r.tpot_s is not None]
        errors = [r.error for r in self.results if r.error is not None]
        return {
            "tok_s": round(tokens / self.wall_s, 2) if self.wall_s > 0 else 0.0,
            "ttft_p50_ms": _ms(percentile(ttft, 50)),
            "ttft_p99_ms": _ms(percentile(ttft, 99)),
            "tpot_p50_ms": _ms(percentile(tpot, 50)),
            "tpot_p99_ms": _ms(percentile(tpot, 99)),
            "requests": len(self.results),
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "tokens_per_request": round(tokens / len(ok), 2) if ok else 0.0,
            "wall_s": round(self.wall_s, 3),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 2)


def request_body(server: Server, prompt: str, max_tokens: int, ignore_eos: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": server.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True
    return body


async def stream_one(client: httpx.AsyncClient, body: dict[str, Any]) -> RequestResult:
    """Send one streaming chat completion and time it; HTTP and stream errors land in ``error``."""
    result = RequestResult()
    chunks, usage_tokens = 0, None
    start = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {_error_message(text)}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    result.error = f"stream error: {_error_message(data)}"
                    return result
                if any(_content(choice) for choice in event.get("choices") or ()):
                    chunks += 1
                    if result.ttft_s is None:
                        result.ttft_s = time.perf_counter() - start
                if event.get("usage"):
                    usage_tokens = event["usage"].get("completion_tokens")
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        result.error = f"{type(e).__name__}: {e}"
        return result
    finally:
        result.latency_s = time.perf_counter() - start
    result.tokens = usage_tokens if usage_tokens is not None else chunks
    return result


def _content(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta") or {}
    return bool(delta.get("content") or delta.get("reasoning_content"))


def _error_message(text: str) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the text itself (shortened)."""
    try:
        error = json.loads(text).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)
    except (json.JSONDecodeError, AttributeError):
        pass
    return text.strip()[:200] or "(empty body)"


async def run_level(
    client: httpx.AsyncClient,
    server: Server,
    concurrency: int,
    requests: int,
    max_tokens: int,
    ignore_eos: bool,
    progress: Callable[[str], None],
) -> LevelResult:
    """Closed loop: ``concurrency`` workers, each sending its next request as soon as its last one ends."""
    results: list[RequestResult] = []
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < requests:
            prompt = PROMPTS[issued % len(PROMPTS)]
            issued += 1
            results.append(await stream_one(client, request_body(server, prompt, max_tokens, ignore_eos)))
            progress(f"{server.label} at concurrency {concurrency}: {len(results)}/{requests} requests")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, requests))))
    return LevelResult(concurrency, time.perf_counter() - start, results)


async def warm_up(client: httpx.AsyncClient, server: Server, concurrency: int, max_tokens: int) -> bool:
    """One probe request, then one round of ``concurrency`` at once; returns whether ``ignore_eos`` is accepted.

    A probe that cannot connect, or that fails both with and without
    ``ignore_eos``, raises :class:`ServeBenchError` naming the server and the cause.
    """
    probe = await stream_one(client, request_body(server, PROMPTS[0], max_tokens, ignore_eos=True))
    ignore_eos = True
    if probe.error and probe.error.startswith(("HTTP 400", "HTTP 422")):
        ignore_eos = False
        probe = await stream_one(client, request_body(server, PROMPTS[0], max_tokens, ignore_eos=False))
    if probe.error:
        raise ServeBenchError(_describe_failure(server, probe.error))
    bodies = [request_body(server, PROMPTS[i % len(PROMPTS)], max_tokens, ignore_eos) for i in range(concurrency)]
    await asyncio.gather(*(stream_one(client, body) for body in bodies))
    return ignore_eos


def _describe_failure(server: Server, error: str) -> str:
    where = f"{server.label} at {server.url}"
    if error.startswith(("ConnectError", "ConnectTimeout")):
        hint = "start `muxd serve`, or pass --url" if server.label == "muxd" else "start it, or check --peer-url"
        return f"cannot reach {where} ({error.split(': ', 1)[-1]}); {hint}"
    return f"{where} failed the warm-up request for model {server.model!r}: {error}"


async def bench_servers(
    servers: Sequence[Server],
    levels: Sequence[int],
    requests: int,
    max_tokens: int,
    repeats: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Warm every server up, then at each level let the servers take turns ``repeats`` times.

    The run with the most tok/s stands for a server at a level (the others
    were most likely slowed by something else on the machine); every run's
    tok/s is kept in ``<label>_tok_s_runs``.
    """
    clients = [server.client(max(levels)) for server in servers]
    try:
        accepts_ignore_eos = []
        for client, server in zip(clients, servers):
            progress(f"{server.label}: warming up")
            accepts_ignore_eos.append(await warm_up(client, server, max(levels), max_tokens))
        per_level = []
        for concurrency in levels:
            runs: dict[str, list[dict[str, Any]]] = {server.label: [] for server in servers}
            for _ in range(repeats):
                for client, server, ignore_eos in zip(clients, servers, accepts_ignore_eos):
                    level = await run_level(client, server, concurrency, requests, max_tokens, ignore_eos, progress)
                    runs[server.label].append(level.summary())
            row: dict[str, Any] = {"concurrency": concurrency}
            for label, summaries in runs.items():
                best = max(summaries, key=lambda summary: summary["tok_s"])
                row.update({f"{label}_{key}": value for key, value in best.items()})
                row[f"{label}_tok_s_runs"] = [summary["tok_s"] for summary in summaries]
            per_level.append(row)
    finally:
        for client in clients:
            await client.aclose()
    info = {s.label: {"url": s.url, "model": s.model, "ignore_eos": ok} for s, ok in zip(servers, accepts_ignore_eos)}
    return {"servers": info, "levels": per_level}


def run_serve_bench(
    url: str,
    model: str,
    levels: Sequence[int],
    requests: int,
    max_tokens: int,
    peer_url: str | None = None,
    peer_model: str | None = None,
    repeats: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the bench against muxd (and the peer, when given); one JSON-ready report.

    Each level has ``muxd_tok_s``, ``peer_tok_s`` and ``ratio`` (muxd / peer;
    None without a peer) and each server's TTFT/TPOT p50/p99 in ms, requests
    and errors. The 1-minute load average before and after says how busy
    the machine was with other work.
    """
    servers = [Server("muxd", url, model)]
    if peer_url is not None:
        servers.append(Server("peer", peer_url, peer_model or model))
    load_before = os.getloadavg()[0]
    say = progress or (lambda _msg: None)
    plan = asyncio.run(muxd_plan(servers[0]))
    report = asyncio.run(bench_servers(servers, levels, requests, max_tokens, repeats, say))
    for row in report["levels"]:
        peer = row.get("peer_tok_s")
        row.setdefault("peer_tok_s", None)
        row["ratio"] = round(row["muxd_tok_s"] / peer, 3) if peer else None
    return {
        "bench": "serve",
        "requests": requests,
        "max_tokens": max_tokens,
        "prompts": len(PROMPTS),
        "repeats": repeats,
        "load_avg_1m_before": round(load_before, 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "cpu": cpu_isa.describe(),
        "muxd_plan": plan,
        **report,
    }


async def muxd_plan(server: Server) -> dict[str, Any] | None:
    """The kernel plan muxd runs ``server.model`` with (``/muxd/v1/status``),
    or None where the server does not say (not muxd, or an older one)."""
    async with server.client(1) as client:
        try:
            response = await client.get("/muxd/v1/status")
            models = response.json().get("models", []) if response.status_code == 200 else []
        except (httpx.HTTPError, json.JSONDecodeError, AttributeError):
            return None
    for m in models:
        if m.get("name") == server.model and m.get("plan"):
            return {"plan": m["plan"], "notes": m.get("plan_notes", [])}
    return None
