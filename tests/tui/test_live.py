"""The app against real daemons serving tiny random-weight models (started as the end-to-end tests start them)."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from muxd.client import AsyncClient
from tests.e2e.conftest import short_tmp_dir, start_daemon, tiny_config
from tests.tui.conftest import FAST, until
from tui.app import MuxdTop
from tui.device_card import DeviceCard
from tui.events import EventLog
from tui.models_table import ModelsTable

pytestmark = pytest.mark.asyncio


async def requests(socket, stop: asyncio.Event) -> int:
    """Completions for both models, back to back, until ``stop``; how many finished."""
    done = 0
    async with AsyncClient(socket) as client:
        while not stop.is_set():
            for model in ("tiny-llama", "tiny-qwen3"):
                await client.complete(model, "The capital of France is", max_tokens=16, ignore_eos=True)
                done += 1
    return done


async def test_figures_flow_from_a_real_stream_while_requests_run(tiny_daemon):
    app = MuxdTop(AsyncClient(tiny_daemon.socket, timeout=10), interval_ms=200)
    async with app.run_test(size=(120, 36)) as pilot:
        stop = asyncio.Event()
        load = asyncio.create_task(requests(tiny_daemon.socket, stop))
        try:
            await until(pilot, lambda: app.stats and all(m.tokens_out_per_s > 0 for m in app.stats.models.values()),
                        "tokens/s of both models", timeout=60)  # fmt: skip
        finally:
            stop.set()
            assert await load > 0
        assert sorted(key.value for key in app.query_one(ModelsTable).rows) == ["tiny-llama", "tiny-qwen3"]
        assert [card.key for card in app.query(DeviceCard)] == ["cpu"]
        assert len(app.query_one(EventLog).lines) >= 4  # the ring's unit_starting, unit_ready and two model_loaded
        assert app.status is not None and {m.name for m in app.status.models} == {"tiny-llama", "tiny-qwen3"}


async def test_a_stopped_daemon_is_reported_and_a_restarted_one_reconnected(tiny_models):
    tmp = short_tmp_dir()
    config = tiny_config(tiny_models, tmp / "muxd.sock")
    daemon = await asyncio.to_thread(start_daemon, config, tmp)
    app = MuxdTop(AsyncClient(daemon.socket, timeout=10), interval_ms=200, backoff=FAST)
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.stats is not None, "the first figures", timeout=30)
            first_pid = app.status.pid
            assert await asyncio.to_thread(daemon.stop) == 0
            await until(pilot, lambda: (app.down or "").startswith(f"no muxd daemon on {daemon.socket}"), "the daemon's end")
            daemon = await asyncio.to_thread(start_daemon, config, tmp)
            await until(pilot, lambda: app.down is None and app.status.pid != first_pid, "the reconnection", timeout=30)
            await until(pilot, lambda: app.stats.uptime_s < 60 and app.stats is app.latest, "the new daemon's figures")
    finally:
        await asyncio.to_thread(daemon.stop)
        shutil.rmtree(tmp, ignore_errors=True)
