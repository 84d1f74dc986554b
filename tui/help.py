"""The help screen (``?``): the keys, and what the columns mean."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = [
    ("↑ ↓", "move between models"),
    ("enter", "the model's detail view"),
    ("escape", "back to the main screen"),
    ("s", "sort by the next column"),
    ("p", "pause the view (figures keep arriving; p again shows the newest)"),
    ("?", "this help"),
    ("q", "quit"),
]
COLUMNS = [
    ("STATE", "its weights: loaded, loading, unloading or unloaded (loads on its next request); else its unit's state"),
    ("RATE", "the requests/s the config expects (placement's popularity)"),
    ("IN/S OUT/S", "prompt and generated tokens/s over the daemon's rate window"),
    ("COMPUTE P|D", "the model's share of its unit's compute: prefill, then decode"),
    ("PAGES", "KV-cache pages held / its quota"),
    ("QUEUE", "requests waiting for their prefill (the oldest's wait)"),
    ("TTFT, TPOT p99", "over the latency window"),
    ("SLO", "attainment over the latency window: green at its goal, yellow close, red below; - without a target"),
]


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,question_mark", "app.pop_screen", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(Text("muxd top", style="bold"))
            yield Static(_table("key", KEYS))
            yield Static(_table("column", COLUMNS))

    def on_mount(self) -> None:
        self.query_one("#help").border_title = "help (escape closes)"


def _table(header: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, expand=True)
    table.add_column(header, style="bold cyan", no_wrap=True)
    table.add_column("")
    for row in rows:
        table.add_row(*row)
    return table
