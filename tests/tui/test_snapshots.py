"""What the screens look like, from recorded stats documents and a frozen clock (pytest-textual-snapshot).

After a deliberate change of the look: ``pytest tests/tui/test_snapshots.py --snapshot-update``,
then check the SVGs in ``__snapshots__`` (``--snapshot-report`` shows the differences).
"""

from __future__ import annotations


import pytest
from textual.pilot import Pilot

from tests.tui.conftest import all_played, make_app, until


async def played(pilot: Pilot, age_s: float = 0.4) -> None:
    """Every recorded document read, then the clock moved on ``age_s`` ("updated 0.4 s ago")."""
    await all_played(pilot)
    pilot.app.clock.now += age_s
    pilot.app.update_headline()


async def daemon_gone(pilot: Pilot) -> None:
    await all_played(pilot)
    pilot.app.client.stop()
    await until(pilot, lambda: pilot.app.down, "the app to notice")
    pilot.app.clock.now += 12
    pilot.app.update_headline()


def test_main_screen_cpu(snap_compare, recorded_client, clock):
    assert snap_compare(make_app(recorded_client, clock), terminal_size=(120, 34), run_before=played)


def test_main_screen_gpu(snap_compare, gpu_client, clock):
    assert snap_compare(make_app(gpu_client, clock), terminal_size=(120, 40), run_before=played)


def test_detail_view(snap_compare, recorded_client, clock):
    assert snap_compare(make_app(recorded_client, clock), terminal_size=(110, 36), run_before=played, press=["enter"])


def test_detail_view_gpu_with_a_queue(snap_compare, gpu_client, clock):
    assert snap_compare(make_app(gpu_client, clock), terminal_size=(110, 36), run_before=played, press=["enter"])


def test_help_screen(snap_compare, cpu_client, clock):
    assert snap_compare(make_app(cpu_client, clock), terminal_size=(100, 30), run_before=played, press=["question_mark"])


def test_the_daemon_gone(snap_compare, cpu_client, clock):
    assert snap_compare(make_app(cpu_client, clock), terminal_size=(100, 30), run_before=daemon_gone)


@pytest.mark.parametrize("size", [(40, 12), (80, 24)], ids=["40x12", "80x24"])
def test_small_terminals(snap_compare, cpu_client, clock, size):
    assert snap_compare(make_app(cpu_client, clock), terminal_size=size, run_before=played)


def test_paused(snap_compare, cpu_client, clock):
    async def pause_then_wait(pilot: Pilot) -> None:
        await played(pilot)
        await pilot.press("p")
        pilot.app.clock.now += 5
        pilot.app.update_headline()

    assert snap_compare(make_app(cpu_client, clock), terminal_size=(100, 30), run_before=pause_then_wait)
