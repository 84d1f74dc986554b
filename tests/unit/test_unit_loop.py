"""The unit's message loop, in-process: a pipe, a thread and tiny models."""

import multiprocessing as mp
import threading

import pytest

from muxd import ipc
from muxd.config import ModelConfig, UnitConfig
from muxd.unit import Unit, build_engine


@pytest.fixture
def unit(tiny_model_dirs):
    config = UnitConfig(
        "u0",
        (ModelConfig("a", str(tiny_model_dirs["llama"])), ModelConfig("b", str(tiny_model_dirs["qwen3"]))),
        kv_cache_bytes=4 << 20,
    )
    front, back = mp.Pipe()
    u = Unit(config, build_engine(config), back)
    thread = threading.Thread(target=u.serve_forever, daemon=True)
    thread.start()
    assert isinstance(front.recv(), ipc.Ready)
    yield front
    front.send(ipc.Shutdown())
    thread.join(timeout=10)
    assert not thread.is_alive()


def collect(conn, ids):
    """Token events until every request in ``ids`` has finished."""
    tokens = {i: [] for i in ids}
    finals = {}
    while len(finals) < len(ids):
        for ev in conn.recv():
            tokens[ev.request_id] += ev.token_ids
            if ev.finished:
                finals[ev.request_id] = ev
    return tokens, finals


def test_requests_of_two_models_stream_to_completion(unit):
    unit.send(ipc.AddRequest("r1", "a", [5, 6, 7], {"max_tokens": 6, "ignore_eos": True}))
    unit.send(ipc.AddRequest("r2", "b", [8, 9], {"max_tokens": 4, "ignore_eos": True}))
    tokens, finals = collect(unit, ["r1", "r2"])
    assert len(tokens["r1"]) == 6 and len(tokens["r2"]) == 4
    assert finals["r1"].finish_reason == "length" and finals["r1"].num_prompt_tokens == 3


def test_an_unknown_model_is_an_error_event_not_a_crash(unit):
    unit.send(ipc.AddRequest("bad", "nope", [1], {}))
    (ev,) = unit.recv()
    assert ev.finished and "not found" in ev.error
    unit.send(ipc.AddRequest("ok", "a", [1, 2], {"max_tokens": 2, "ignore_eos": True}))
    tokens, _ = collect(unit, ["ok"])
    assert len(tokens["ok"]) == 2


def test_abort_ends_the_stream_and_frees_pages(unit):
    unit.send(ipc.AddRequest("long", "a", [1, 2, 3], {"max_tokens": 400, "ignore_eos": True}))
    first = unit.recv()[0]
    assert not first.finished
    unit.send(ipc.AbortRequest("long"))
    _, finals = collect(unit, ["long"])
    assert finals["long"].finish_reason == "abort"
    unit.send(ipc.StatsRequest())
    snap = unit.recv()
    while not isinstance(snap, ipc.StatsSnapshot):
        snap = unit.recv()
    assert snap.kv_pages_free == snap.kv_pages_total
    assert snap.models["a"].finished == 1
