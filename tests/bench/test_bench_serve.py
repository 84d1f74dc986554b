"""``muxd bench serve``: closed-loop streamed chat completions against OpenAI-compatible servers.

The servers here are tiny fakes (Starlette on a Unix socket) that stream a
fixed number of one-token chunks, so the tests check what the bench sends,
counts and reports, never how fast anything is.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from typer.testing import CliRunner

from muxd.bench.serve import PROMPTS, connection
from muxd.cli.app import app
from muxd.cli.bench_serve import parse_concurrency

CHUNKS = 5  # tokens the fake streams when max_tokens allows
LEVEL_KEYS = {"tok_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "requests", "errors"}


@dataclass
class FakeServer:
    """An OpenAI-compatible chat endpoint streaming ``min(CHUNKS, max_tokens)`` chunks of one token each."""

    socket: Path
    send_usage: bool = True
    reject_ignore_eos: bool = False
    models: tuple[str, ...] | None = None  # None: any name is served
    bodies: list[dict] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request):
        body = await request.json()
        self.bodies.append(body)
        if self.models is not None and body["model"] not in self.models:
            return JSONResponse({"error": {"message": f"model {body['model']!r} not found"}}, status_code=404)
        if self.reject_ignore_eos and "ignore_eos" in body:
            return JSONResponse({"error": {"message": "unknown field ignore_eos"}}, status_code=400)
        tokens = min(CHUNKS, body["max_tokens"])
        return StreamingResponse(self.events(body["model"], tokens), media_type="text/event-stream")

    async def events(self, model: str, tokens: int):
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model}
            yield sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            for i in range(tokens):
                await asyncio.sleep(0.001)  # lets the other streams interleave, as a batching server does
                yield sse({**head, "choices": [{"index": 0, "delta": {"content": f"t{i} "}}]})
            if self.send_usage:
                usage = {"prompt_tokens": 9, "completion_tokens": tokens, "total_tokens": 9 + tokens}
                yield sse({**head, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"
        finally:
            self.in_flight -= 1


def sse(event: dict) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="muxd-bs-"))  # AF_UNIX paths stop near 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_fake(socket_dir: Path):
    """``start_fake(name, **options)`` runs a fake server on ``socket_dir/name`` until the test ends."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(name: str, **options) -> FakeServer:
        fake = FakeServer(socket_dir / name, **options)
        server = uvicorn.Server(uvicorn.Config(fake.app(), uds=str(fake.socket), log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the fake server did not start"
            time.sleep(0.01)
        running.append((server, thread))
        return fake

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)


def run_bench(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["bench", "serve", *args], env=env)


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


# -- the report ------------------------------------------------------------------
def test_json_has_per_level_throughput_ratio_and_latency_of_both_servers(start_fake) -> None:
    muxd, peer = start_fake("muxd.sock"), start_fake("peer.sock")
    result = run_bench(
        "--url", str(muxd.socket), "--model", "m", "--peer-url", str(peer.socket), "--peer-model", "p",
        "--concurrency", "1,4", "--requests", "6", "--max-tokens", "64", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = last_json(result.output)
    assert [row["concurrency"] for row in report["levels"]] == [1, 4]
    for row in report["levels"]:
        for label in ("muxd", "peer"):
            assert {f"{label}_{key}" for key in LEVEL_KEYS} <= row.keys()
            assert row[f"{label}_requests"] == 6 and row[f"{label}_errors"] == 0
            assert row[f"{label}_tokens_per_request"] == CHUNKS
            assert row[f"{label}_tok_s"] > 0
            assert 0 <= row[f"{label}_ttft_p50_ms"] <= row[f"{label}_ttft_p99_ms"]
            assert 0 <= row[f"{label}_tpot_p50_ms"] <= row[f"{label}_tpot_p99_ms"]
        assert row["ratio"] == pytest.approx(row["muxd_tok_s"] / row["peer_tok_s"], rel=1e-2)


def test_each_server_gets_its_own_model_name_and_the_fixed_prompts(start_fake) -> None:
    muxd, peer = start_fake("muxd.sock"), start_fake("peer.sock")
    result = run_bench(
        "--url", str(muxd.socket), "--model", "m", "--peer-url", str(peer.socket), "--peer-model", "p",
        "--concurrency", "2", "--requests", "4", "--max-tokens", "3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {b["model"] for b in muxd.bodies} == {"m"} and {b["model"] for b in peer.bodies} == {"p"}
    for body in muxd.bodies + peer.bodies:
        assert body["messages"][0]["content"] in PROMPTS
        assert body["stream"] is True and body["temperature"] == 0 and body["max_tokens"] == 3
        assert body["stream_options"] == {"include_usage": True} and body["ignore_eos"] is True


def test_without_a_peer_the_ratio_is_null(start_fake) -> None:
    muxd = start_fake("muxd.sock")
    result = run_bench("--url", str(muxd.socket), "--concurrency", "2", "--requests", "3", "--json")
    assert result.exit_code == 0, result.output
    (row,) = last_json(result.output)["levels"]
    assert row["muxd_tok_s"] > 0 and row["peer_tok_s"] is None and row["ratio"] is None


def test_max_tokens_caps_the_tokens_counted(start_fake) -> None:
    muxd = start_fake("muxd.sock")
    args = ("--url", str(muxd.socket), "--concurrency", "1", "--requests", "2", "--max-tokens", "2")
    result = run_bench(*args, "--json")
    assert result.exit_code == 0, result.output
    assert last_json(result.output)["levels"][0]["muxd_tokens_per_request"] == 2


def test_tokens_are_counted_from_chunks_when_the_server_sends_no_usage(start_fake) -> None:
    muxd = start_fake("muxd.sock", send_usage=False)
    result = run_bench("--url", str(muxd.socket), "--concurrency", "2", "--requests", "4", "--json")
    assert result.exit_code == 0, result.output
    assert last_json(result.output)["levels"][0]["muxd_tokens_per_request"] == CHUNKS


def test_a_server_rejecting_ignore_eos_is_benched_without_it(start_fake) -> None:
    muxd, peer = start_fake("muxd.sock"), start_fake("peer.sock", reject_ignore_eos=True)
    args = ("--url", str(muxd.socket), "--peer-url", str(peer.socket), "--concurrency", "2", "--requests", "4")
    result = run_bench(*args, "--json")
    assert result.exit_code == 0, result.output
    report = last_json(result.output)
    assert report["servers"]["muxd"]["ignore_eos"] is True and report["servers"]["peer"]["ignore_eos"] is False
    assert report["levels"][0]["peer_errors"] == 0 and report["levels"][0]["peer_tokens_per_request"] == CHUNKS


# -- the closed loop ---------------------------------------------------------------
def test_the_closed_loop_sends_n_requests_with_at_most_c_in_flight(start_fake) -> None:
    muxd = start_fake("muxd.sock")
    result = run_bench("--url", str(muxd.socket), "--concurrency", "3", "--requests", "10")
    assert result.exit_code == 0, result.output
    warm_up = 1 + 3  # one probe, then one round at the highest level
    assert len(muxd.bodies) == warm_up + 10
    assert muxd.max_in_flight <= 3


def test_repeats_take_turns_and_keep_every_runs_throughput(start_fake) -> None:
    muxd, peer = start_fake("muxd.sock"), start_fake("peer.sock")
    args = ("--url", str(muxd.socket), "--peer-url", str(peer.socket), "--concurrency", "2", "--requests", "3")
    result = run_bench(*args, "--repeats", "2", "--json")
    assert result.exit_code == 0, result.output
    report = last_json(result.output)
    (row,) = report["levels"]
    assert report["repeats"] == 2 and len(muxd.bodies) == len(peer.bodies) == 1 + 2 + 2 * 3
    for label in ("muxd", "peer"):
        assert len(row[f"{label}_tok_s_runs"]) == 2 and row[f"{label}_tok_s"] == max(row[f"{label}_tok_s_runs"])


def test_the_default_url_is_the_daemons_socket(start_fake) -> None:
    muxd = start_fake("muxd.sock")
    result = run_bench("--concurrency", "1", "--requests", "1", "--json", env={"MUXD_SOCKET": str(muxd.socket)})
    assert result.exit_code == 0, result.output
    assert last_json(result.output)["servers"]["muxd"]["url"] == str(muxd.socket)


# -- errors --------------------------------------------------------------------------
def test_an_unreachable_server_is_one_clear_line_and_exit_code_2(socket_dir: Path) -> None:
    result = run_bench("--url", str(socket_dir / "nobody.sock"), "--requests", "1")
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "cannot reach muxd" in line and "nobody.sock" in line


def test_an_unreachable_peer_names_the_peer(start_fake, socket_dir: Path) -> None:
    muxd = start_fake("muxd.sock")
    result = run_bench("--url", str(muxd.socket), "--peer-url", str(socket_dir / "gone.sock"), "--requests", "1")
    assert result.exit_code == 2
    assert "cannot reach peer" in result.output and "--peer-url" in result.output


def test_a_refused_warm_up_is_one_line_with_the_servers_message(start_fake) -> None:
    muxd = start_fake("muxd.sock", models=("smollm2",))
    result = run_bench("--url", str(muxd.socket), "--model", "nope", "--requests", "1")
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "HTTP 404" in line and "model 'nope' not found" in line


@pytest.mark.parametrize("value", ["0", "a", ",", "1,-2"])
def test_bad_concurrency_is_a_usage_error(value: str) -> None:
    with pytest.raises(ValueError):
        parse_concurrency(value)
    assert run_bench("--concurrency", value).exit_code == 2


# -- helpers -------------------------------------------------------------------------
def test_concurrency_is_a_comma_list() -> None:
    assert parse_concurrency("1, 8,16") == [1, 8, 16]


def test_http_urls_use_tcp_and_drop_a_trailing_v1() -> None:
    _, base = connection("http://127.0.0.1:8088/v1/", 4)
    assert base == "http://127.0.0.1:8088"
    _, base = connection("/tmp/x.sock", 4)
    assert base == "http://localhost"

