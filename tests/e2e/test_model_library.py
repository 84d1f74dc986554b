"""More models than memory (issue #22): a library that loads on demand, keep-alive, pins and a budget.

Each test starts ``muxd serve`` on a library directory of tiny random models
and drives it through the real socket with the openai SDK, reading what the
daemon holds from ``/muxd/v1/status``.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from muxd.library import estimate_weight_bytes, model_shape
from muxd.models.factory import build_tiny_checkpoint

from .conftest import Daemon, short_tmp_dir, start_daemon, wait_for

FAMILIES = ("llama", "qwen3", "qwen2", "mistral", "llama3", "llama")
POOL_MB = 4


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """Six tiny models of five families, each its own weights (a Hugging Face directory each)."""
    root = tmp_path_factory.mktemp("library")
    for i, family in enumerate(FAMILIES):
        build_tiny_checkpoint(family, root / f"m{i}-{family}", seed=i)
    return root


def library_config(socket: Path, models_dir: Path, extra: str = "", limits: str = "") -> str:
    return (f'socket = "{socket}"\ndevice = "cpu"\nkv_cache_mb = {POOL_MB}\nthreads = 1\nwarm_spare = false\n'
            f'models_dir = "{models_dir}"\n{extra}\n[limits]\n{limits}\n')  # fmt: skip


@pytest.fixture
def tmp():
    path = short_tmp_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def serve(tmp: Path, models_dir: Path, extra: str = "", limits: str = "") -> Daemon:
    return start_daemon(library_config(tmp / "muxd.sock", models_dir, extra, limits), tmp)


def sdk(daemon: Daemon) -> openai.OpenAI:
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), timeout=120)
    return openai.OpenAI(base_url="http://localhost/v1", api_key="unused", http_client=http, max_retries=0)


def status(daemon: Daemon) -> dict:
    return daemon.get("/muxd/v1/status").json()


def states(daemon: Daemon) -> dict[str, str]:
    return {m["name"]: m["load_state"] for m in status(daemon)["models"]}


def events(daemon: Daemon, kind: str) -> list[dict]:
    """The daemon's events of ``kind``, read from the start of its SSE stats stream."""
    with daemon.http() as http, http.stream("GET", "/muxd/v1/stats/stream", headers={"Last-Event-ID": "0"}) as r:
        found, name = [], None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name == "event":
                import json

                found.append(json.loads(line[6:]))
            elif line.startswith("data: ") and name == "stats":
                break  # the replay of past events comes before the first stats document
    return [e for e in found if e["kind"] == kind]


def ask(client: openai.OpenAI, model: str, **extra) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=6, temperature=0, extra_body=extra
    )
    assert reply.choices[0].finish_reason in ("length", "stop")
    return reply.choices[0].message.content


def test_the_library_is_listed_from_the_start_and_nothing_is_loaded_unasked(library, tmp):
    daemon = serve(tmp, library)
    try:
        listed = {m["id"]: m for m in daemon.get("/v1/models").json()["data"]}
        assert sorted(listed) == sorted(f"m{i}-{f}" for i, f in enumerate(FAMILIES))
        assert all(m["state"] == "unloaded" and m["size_bytes"] > 0 for m in listed.values())
        client = sdk(daemon)
        ask(client, "m1-qwen3")
        assert states(daemon) == {name: "loaded" if name == "m1-qwen3" else "unloaded" for name in listed}
        assert [e["model"] for e in events(daemon, "model_loaded")] == ["m1-qwen3"]
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_fifty_library_entries_are_listed_in_under_a_second(library, tmp):
    big = tmp / "lib"
    big.mkdir()
    source = next(library.iterdir())
    for i in range(50):
        (big / f"model-{i:02d}").symlink_to(source, target_is_directory=True)
    daemon = serve(tmp, big)
    try:
        with daemon.http() as http:
            http.get("/v1/models")  # the connection is made; the listing itself is timed
            t0 = time.perf_counter()
            data = http.get("/v1/models").json()["data"]
            took = time.perf_counter() - t0
        assert len(data) == 50 and all(m["state"] == "unloaded" for m in data)
        assert took < 1.0, f"/v1/models took {took:.3f} s for 50 entries"
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_keep_alive_unloads_an_idle_model_and_a_request_can_set_it(library, tmp):
    daemon = serve(tmp, library, extra='keep_alive = "1s"')
    try:
        client = sdk(daemon)
        ask(client, "m0-llama")
        ask(client, "m2-qwen2", keep_alive=-1)  # this one stays
        t0 = time.monotonic()
        wait_for(lambda: states(daemon)["m0-llama"] == "unloaded", 10, "m0-llama to be unloaded after 1 s idle")
        assert time.monotonic() - t0 > 0.5
        ask(client, "m3-mistral", keep_alive=0)
        wait_for(lambda: states(daemon)["m3-mistral"] == "unloaded", 5, "keep_alive=0 to unload m3-mistral")
        assert states(daemon)["m2-qwen2"] == "loaded"
        ask(client, "m0-llama")  # unloaded models load again
        assert [e["model"] for e in events(daemon, "model_loaded")].count("m0-llama") == 2
        with pytest.raises(openai.BadRequestError) as e:
            ask(client, "m0-llama", keep_alive="soon")
        assert e.value.body["param"] == "keep_alive" and "duration such as" in e.value.message
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_a_rotating_workload_over_six_models_in_a_budget_of_two_has_no_error(library, tmp):
    """The acceptance run: six models, memory for the pool and two of them, a seeded rotation over all six."""
    weights = [estimate_weight_bytes(model_shape(d), "float32", "none") for d in sorted(library.iterdir())]
    budget = (POOL_MB << 20) + sum(sorted(weights)[-2:]) + min(weights) // 2
    daemon = serve(tmp, library, extra=f'memory_budget = {budget}\nkeep_alive = "3s"', limits="load_wait_s = 60")
    names = sorted(p.name for p in library.iterdir())
    rng = random.Random(22)
    errors: list[str] = []
    peaks: list[int] = []

    def worker(models: list[str]) -> None:
        client = sdk(daemon)
        for model in models:
            try:
                ask(client, model)
            except openai.APIError as e:
                errors.append(f"{model}: {e}")

    try:
        for _ in range(12):  # rounds of two concurrent requests, on random models of the six
            pair = [[rng.choice(names)] for _ in range(2)]
            threads = [threading.Thread(target=worker, args=(p,)) for p in pair]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            doc = status(daemon)
            unit = doc["units"][0]
            peaks.append(unit["memory_used_bytes"])
            assert unit["memory_used_bytes"] <= unit["memory_budget_bytes"] == budget, doc
            assert sum(m["load_state"] != "unloaded" for m in doc["models"]) <= 2
        assert errors == []
        loads = events(daemon, "model_loaded")
        assert len({e["model"] for e in loads}) >= 4 and max(peaks) <= budget
        assert any("to make room" in e["message"] for e in events(daemon, "model_unloading"))
        wait_for(lambda: set(states(daemon).values()) == {"unloaded"}, 20, "keep-alive to unload every model")
        assert status(daemon)["units"][0]["memory_used_bytes"] == status(daemon)["units"][0]["pool"]["bytes"]
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_a_model_that_cannot_fit_gets_503_naming_what_holds_memory(library, tmp):
    weights = [estimate_weight_bytes(model_shape(d), "float32", "none") for d in sorted(library.iterdir())]
    budget = (POOL_MB << 20) + max(weights) + min(weights) // 2  # one model at a time
    pin = '[[models]]\nname = "m0-llama"\npinned = true\n'
    daemon = serve(tmp, library, extra=f"memory_budget = {budget}\n{pin}", limits="load_wait_s = 1")
    try:
        client = sdk(daemon)
        ask(client, "m0-llama")
        with pytest.raises(openai.APIStatusError) as e:
            ask(client, "m1-qwen3")
        assert e.value.status_code == 503 and int(e.value.response.headers["retry-after"]) >= 1
        message = e.value.response.json()["error"]["message"]
        assert "m1-qwen3" in message and "m0-llama" in message and "pinned" in message and "KV pool" in message
        assert states(daemon)["m0-llama"] == "loaded"
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_a_failed_load_is_a_clear_error_and_the_next_request_retries(library, tmp):
    lib = tmp / "lib"
    lib.mkdir()
    broken = lib / "broken"
    broken.mkdir()
    shutil.copy(next(library.iterdir()) / "config.json", broken / "config.json")  # no weights
    shutil.copytree(next(library.iterdir()), lib / "good")
    daemon = serve(tmp, lib)
    try:
        client = sdk(daemon)
        for _ in range(2):
            with pytest.raises(openai.APIStatusError) as e:
                ask(client, "broken")
            assert "could not be loaded" in e.value.message and "safetensors" in e.value.message
        assert len(events(daemon, "model_load_failed")) == 2
        ask(client, "good")  # the unit serves on
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_unloading_drains_a_running_stream_first(library, tmp):
    daemon = serve(tmp, library)
    try:
        client = sdk(daemon)
        stream = client.completions.create(model="m4-llama3", prompt="a b c", max_tokens=120, stream=True,
                                           extra_body={"ignore_eos": True})  # fmt: skip
        first = next(iter(stream))
        with daemon.http() as http:
            answer = http.post("/muxd/v1/models/m4-llama3/unload")
        assert answer.status_code == 200 and answer.json()["load_state"] == "unloaded"
        rest = list(stream)
        assert first.choices and rest[-1].choices[0].finish_reason == "length"
        with daemon.http() as http:
            loaded = http.post("/muxd/v1/models/m4-llama3/load", json={"keep_alive": "10m"}).json()
        assert loaded["load_state"] == "loaded" and 590 < loaded["expires_in_s"] <= 600
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_the_cli_lists_loads_and_unloads_library_models(library, tmp):
    from typer.testing import CliRunner

    from muxd.cli.app import app

    def muxd(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(app, [*args, "--socket", str(daemon.socket)], env={"COLUMNS": "200"})
        assert result.exit_code == code, result.output
        return result.output

    daemon = serve(tmp, library)
    try:
        listing = muxd("ls")
        assert all(f"{name} " in listing for name in (p.name for p in library.iterdir()))
        assert listing.count(" unloaded ") == 6 and " ~" in listing  # weights estimated before a load
        loaded = muxd("load", "m5-llama", "--keep-alive", "10m")
        assert loaded.startswith("m5-llama loaded on cpu0 in ") and ("until: in 9m59s" in loaded or "until: in 10m00s" in loaded)
        rows = [line for line in muxd("ps").splitlines() if "m5-llama" in line]
        assert len(rows) == 1 and " loaded " in rows[0] and (" in 9m5" in rows[0] or " in 10m00s" in rows[0])
        assert "m0-llama" not in muxd("ps")  # ps shows the models in memory only
        assert muxd("unload", "m5-llama").strip() == "m5-llama unloaded"
        assert "m5-llama" not in muxd("ps")
        assert "model 'nope' not found" in muxd("load", "nope", code=1)
    finally:
        assert daemon.stop() == 0, daemon.log()
    offline = CliRunner().invoke(app, ["ls", "--models-dir", str(library), "--socket", str(daemon.socket)],
                                 env={"COLUMNS": "200"})  # fmt: skip
    assert offline.exit_code == 0 and "no daemon running" in offline.output
    assert all(f"{p.name} " in offline.output for p in library.iterdir())
