"""The event log: the daemon's recent events (replayed on connect), then each as it happens."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from muxd.protocol import Event
from tui.format import fmt_clock

MAX_EVENTS = 500

KIND_STYLES = {
    "unit_crashed": "bold red", "unit_failed": "bold red", "unit_restarting": "yellow", "unit_stopped": "yellow",
    "unit_starting": "cyan", "unit_ready": "green", "model_loaded": "green", "preemption": "magenta",
    "quota_move": "blue",
}  # fmt: skip


class EventLog(RichLog):
    """The last ``MAX_EVENTS`` events, newest at the bottom."""

    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=MAX_EVENTS, wrap=False, markup=False, highlight=False, **kwargs)

    def add(self, event: Event) -> None:
        self.write(event_line(event))


def event_line(event: Event) -> Text:
    return Text.assemble(
        (fmt_clock(event.time), "dim"), " ", (f"{event.kind:<15}", KIND_STYLES.get(event.kind, "")), " ",
        (f"{event.unit or '':<6}", "bold"), (f"{event.model} " if event.model else "", "bold"), event.message,
    )  # fmt: skip
