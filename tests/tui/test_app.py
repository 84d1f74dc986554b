"""The app driven by a pilot against a fake daemon playing recorded documents."""

from __future__ import annotations

import pytest

from muxd.protocol import CpuStats, DeviceStats, Event, ModelStats, Stats, UnitStats
from tests.tui import docs
from tests.tui.conftest import all_played, make_app, until
from tests.tui.fake import FakeClient
from tui.detail import DetailScreen, ModelDetail
from tui.device_card import DeviceCard
from tui.events import EventLog
from tui.help import HelpScreen
from tui.models_table import ModelsTable

pytestmark = pytest.mark.asyncio


def rows(app) -> list[str]:
    table = app.query_one(ModelsTable)
    return [key.value for key in table.rows]


def headline(app) -> str:
    left, right = app.headline
    return f"{left.plain}  {right.plain}"


async def test_stats_and_events_fill_the_table_the_cards_and_the_log(cpu_client, clock):
    app = make_app(cpu_client, clock)
    async with app.run_test(size=(120, 36)) as pilot:
        await all_played(pilot)
        assert rows(app) == ["smollm2", "tiny-llama", "tiny-qwen3"]
        assert [card.key for card in app.query(DeviceCard)] == ["cpu"]
        assert len(app.query_one(EventLog).lines) == len(docs.EVENTS)
        assert app.received == len(docs.run())
        assert headline(app).endswith("updated 0.0 s ago")


async def test_a_gpu_daemon_gets_a_card_per_gpu(gpu_client, clock):
    app = make_app(gpu_client, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await all_played(pilot)
        assert [card.key for card in app.query(DeviceCard)] == ["cuda:0", "cuda:1"]


async def test_s_cycles_the_sort_column(cpu_client, clock):
    app = make_app(cpu_client, clock)
    async with app.run_test(size=(120, 36)) as pilot:
        await all_played(pilot)
        while app.sort_by != "OUT/S":
            await pilot.press("s")
        out = {name: m.tokens_out_per_s for name, m in app.stats.models.items()}
        assert rows(app) == sorted(out, key=out.get, reverse=True)
        assert "▼" in str(app.query_one(ModelsTable).columns["OUT/S"].label)


async def test_the_cursor_stays_on_its_model_when_the_order_changes(cpu_client, clock):
    app = make_app(cpu_client, clock)
    async with app.run_test(size=(120, 36)) as pilot:
        await all_played(pilot)
        await pilot.press("down")
        table = app.query_one(ModelsTable)
        assert table.selected == "tiny-llama"
        while app.sort_by != "RATE":
            await pilot.press("s")
        assert table.selected == "tiny-llama" and rows(app).index("tiny-llama") == table.cursor_row


async def test_p_pauses_the_view_but_keeps_receiving(cpu_client, clock):
    app = make_app(cpu_client, clock)
    async with app.run_test(size=(120, 36)) as pilot:
        await all_played(pilot)
        shown = app.stats
        await pilot.press("p")
        received = app.received
        cpu_client.push(docs.stats_at(500))
        cpu_client.push(Event(id=8, time=docs.T0, kind="preemption", unit="cpu0", message="preempted 2 requests"))
        await until(pilot, lambda: app.received > received and app.unshown_events, "the pushed documents")
        clock.now += 3
        app.update_headline()
        assert app.stats is shown and len(app.query_one(EventLog).lines) == len(docs.EVENTS)
        assert "PAUSED · data 3.0 s old" in headline(app)
        await pilot.press("p")
        assert app.stats is app.latest and app.stats.time == docs.stats_at(500).time
        assert len(app.query_one(EventLog).lines) == len(docs.EVENTS) + 1


async def test_question_mark_shows_the_help_and_escape_closes_it(cpu_client, clock):
    app = make_app(cpu_client, clock)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_enter_opens_the_models_detail_and_escape_returns(cpu_client, clock):
    app = make_app(cpu_client, clock)
    async with app.run_test(size=(120, 36)) as pilot:
        await all_played(pilot)
        await pilot.press("down", "enter")
        assert isinstance(app.screen, DetailScreen) and app.screen.model == "tiny-llama"
        await pilot.pause()
        detail = app.screen.query_one(ModelDetail)
        assert detail.stats is app.stats and detail.status is app.status
        await pilot.press("escape")
        assert not isinstance(app.screen, DetailScreen) and rows(app)


async def test_the_detail_view_follows_new_stats(cpu_client, clock):
    app = make_app(cpu_client, clock)
    async with app.run_test(size=(120, 36)) as pilot:
        await all_played(pilot)
        await pilot.press("enter")
        cpu_client.push(docs.stats_at(777))
        await until(pilot, lambda: app.screen.query_one(ModelDetail).stats.time == docs.stats_at(777).time, "new stats")


async def test_q_quits(cpu_client, clock):
    app = make_app(cpu_client, clock)
    async with app.run_test() as pilot:
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "the app to exit")
    assert cpu_client.closed


async def test_without_a_daemon_it_says_so_and_keeps_trying(cpu_client, clock):
    cpu_client.up = False
    app = make_app(cpu_client, clock)
    async with app.run_test() as pilot:
        await until(pilot, lambda: app.down, "the app to notice")
        assert headline(app) == f"no muxd daemon on {docs.SOCKET}; retrying  no data yet"
        cpu_client.up = True
        await all_played(pilot)
        assert app.down is None and rows(app)


async def test_a_daemon_that_stops_is_reported_and_reconnected_to(cpu_client, clock):
    app = make_app(cpu_client, clock)
    async with app.run_test(size=(120, 36)) as pilot:
        await all_played(pilot)
        cpu_client.stop()
        await until(pilot, lambda: app.down, "the app to notice")
        clock.now += 12
        app.update_headline()
        assert headline(app) == f"no muxd daemon on {docs.SOCKET}; retrying  stale 12 s"
        assert rows(app)  # the last figures stay on view
        cpu_client.up = True
        await until(pilot, lambda: app.down is None, "the reconnection")
        assert cpu_client.opened == [0, len(docs.EVENTS)]
        cpu_client.push(docs.stats_at(900))
        await until(pilot, lambda: app.stats.time == docs.stats_at(900).time, "new stats")
        assert headline(app).endswith("updated 0.0 s ago")


async def test_old_figures_are_called_stale(cpu_client, clock):
    app = make_app(cpu_client, clock)
    async with app.run_test() as pilot:
        await all_played(pilot)
        clock.now += 0.4
        app.update_headline()
        assert headline(app).endswith("updated 0.4 s ago")
        clock.now += 30
        app.update_headline()
        assert headline(app).endswith("stale 30 s")


@pytest.mark.parametrize("keys", [(), ("enter",), ("question_mark",)], ids=["main", "detail", "help"])
async def test_a_tiny_terminal_and_back(cpu_client, clock, keys):
    app = make_app(cpu_client, clock)
    async with app.run_test(size=(120, 36)) as pilot:
        await all_played(pilot)
        await pilot.press(*keys)
        for size in [(40, 12), (20, 5), (120, 36), (40, 12), (200, 60)]:
            await pilot.resize_terminal(*size)
            await pilot.pause()
            cpu_client.push(docs.stats_at(1000 + size[0]))
        await pilot.pause()
        assert app.is_running


def minimal_stats() -> Stats:
    """Only what the protocol requires: every optional figure unknown."""
    model = ModelStats(unit="cuda0", running=0, queued=0, in_flight=0, done=0, errors=0, rejected=0, prompt_tokens=0,
                       generated_tokens=0)  # fmt: skip
    devices = {"cuda:0": DeviceStats(unit="cuda0", kind="gpu"), "cpu": DeviceStats(unit="cpu0", cpu=CpuStats())}
    return Stats(time=docs.T0, models={"m": model}, units={"cuda0": UnitStats(state="starting")}, devices=devices)


@pytest.mark.parametrize("keys", [(), ("enter",), ("question_mark",)], ids=["main", "detail", "help"])
async def test_a_document_of_unknowns_renders_on_every_screen(clock, keys):
    client = FakeClient([minimal_stats()], [], docs.status(), docs.SOCKET)
    app = make_app(client, clock)
    async with app.run_test(size=(100, 30)) as pilot:
        await all_played(pilot)
        await pilot.press(*keys)
        await pilot.pause()
        assert app.is_running and rows(app) == ["m"]


@pytest.mark.parametrize(("unit_state", "load_state", "shown", "style"), [
    ("ready", "loaded", "loaded", "green"), ("ready", "unloaded", "unloaded", "dim"),
    ("ready", "loading", "loading", "yellow"), ("ready", None, "ready", "green"),
    ("restarting", "loaded", "restarting", "yellow"),
])  # fmt: skip
def test_the_state_column_shows_the_models_weights_while_its_unit_is_ready(unit_state, load_state, shown, style):
    from tui.models_table import state_cell

    model = ModelStats(unit="cpu0", state=unit_state, load_state=load_state, running=0, queued=0, in_flight=0, done=0,
                       errors=0, rejected=0, prompt_tokens=0, generated_tokens=0)  # fmt: skip
    cell = state_cell(model)
    assert (cell.plain, str(cell.style)) == (shown, style)
