"""A unit whose models load on demand and unload after draining, through its pipe (issue #22)."""

import multiprocessing as mp
import threading
from pathlib import Path

import pytest

from muxd import ipc
from muxd.config import ModelConfig, UnitConfig
from muxd.unit import Unit, build_engine



def collect(conn, ids):
    """Token events of ``ids`` (others skipped) until each has finished; other messages skipped too."""
    tokens = {i: [] for i in ids}
    finals = {}
    while len(finals) < len(ids):
        msg = conn.recv()
        for ev in msg if isinstance(msg, list) else []:
            if ev.request_id in tokens:
                tokens[ev.request_id] += ev.token_ids
                if ev.finished:
                    finals[ev.request_id] = ev
    return tokens, finals


def recv_kind(conn, kind, timeout=60.0):
    """The next message of ``kind``; token events and others before it are skipped."""
    while conn.poll(timeout):
        msg = conn.recv()
        if isinstance(msg, kind):
            return msg
    pytest.fail(f"no {kind.__name__} within {timeout:.0f} s")


@pytest.fixture
def unit(tiny_model_dirs, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((Path(tiny_model_dirs["llama"]) / "config.json").read_text())
    config = UnitConfig(
        "u0",
        (
            ModelConfig("a", str(tiny_model_dirs["llama"])),
            ModelConfig("b", str(tiny_model_dirs["qwen3"]), preload=False),
            ModelConfig("broken", str(broken), preload=False),  # a config but no weights
        ),
        kv_cache_bytes=4 << 20,
    )
    front, back = mp.Pipe()
    u = Unit(config, build_engine(config), back)
    thread = threading.Thread(target=u.serve_forever, daemon=True)
    thread.start()
    ready = front.recv()
    assert [m.name for m in ready.models] == ["a"]
    yield front
    front.send(ipc.Shutdown())
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_model_not_preloaded_loads_when_asked_while_another_serves(unit):
    unit.send(ipc.AddRequest("r1", "a", [5, 6, 7], {"max_tokens": 30, "ignore_eos": True}))
    unit.send(ipc.LoadModel("b"))
    loaded = recv_kind(unit, ipc.ModelLoaded)
    assert loaded.info.name == "b" and loaded.info.weight_bytes > 0 and loaded.info.load_s > 0
    unit.send(ipc.AddRequest("r2", "b", [8, 9], {"max_tokens": 4, "ignore_eos": True}))
    tokens, _ = collect(unit, ["r2"])
    assert len(tokens["r2"]) == 4


def test_a_failed_load_is_reported_and_can_be_retried(unit):
    unit.send(ipc.LoadModel("broken"))
    failed = recv_kind(unit, ipc.ModelLoadFailed)
    assert failed.model == "broken" and "safetensors" in failed.error
    unit.send(ipc.LoadModel("broken"))
    assert recv_kind(unit, ipc.ModelLoadFailed).model == "broken"


def test_unload_waits_for_the_models_requests_then_frees_its_pages(unit):
    unit.send(ipc.AddRequest("r1", "a", [1, 2, 3], {"max_tokens": 20, "ignore_eos": True}))
    unit.send(ipc.UnloadModel("a"))
    tokens, finals = [], None
    while True:  # every token of r1 arrives before the model's unload
        msg = unit.recv()
        if isinstance(msg, ipc.ModelUnloaded):
            break
        for ev in msg:
            tokens += ev.token_ids
            finals = ev if ev.finished else finals
    assert msg.model == "a" and len(tokens) == 20 and finals.finish_reason == "length"
    unit.send(ipc.StatsRequest())
    snap = recv_kind(unit, ipc.StatsSnapshot)
    assert "a" not in snap.models and snap.kv_pages_free == snap.kv_pages_total
    unit.send(ipc.AddRequest("r2", "a", [1], {}))
    (ev,) = unit.recv()
    assert ev.finished and "not found" in ev.error


def test_an_unknown_model_cannot_be_loaded(unit):
    unit.send(ipc.LoadModel("nope"))
    assert "not one of unit u0's models" in recv_kind(unit, ipc.ModelLoadFailed).error


def test_a_hundred_load_and_unload_cycles_leave_no_page_thread_or_memory_behind(unit):
    import psutil

    process = psutil.Process()

    def cycle(i: int) -> None:
        unit.send(ipc.LoadModel("b"))
        assert recv_kind(unit, ipc.ModelLoaded).info.name == "b"
        unit.send(ipc.AddRequest(f"r{i}", "b", [8, 9, 10], {"max_tokens": 3, "ignore_eos": True}))
        collect(unit, [f"r{i}"])
        unit.send(ipc.UnloadModel("b"))
        assert recv_kind(unit, ipc.ModelUnloaded).model == "b"

    for i in range(5):  # warm: allocator pools, kernel builds, the first load's one-off imports
        cycle(i)
    threads, rss = threading.active_count(), process.memory_info().rss
    for i in range(5, 105):
        cycle(i)
    unit.send(ipc.StatsRequest())
    snap = recv_kind(unit, ipc.StatsSnapshot)
    assert "b" not in snap.models and snap.kv_pages_free == snap.kv_pages_total  # the pool is whole
    assert threading.active_count() == threads
    assert process.memory_info().rss <= rss * 1.10, (rss, process.memory_info().rss)
