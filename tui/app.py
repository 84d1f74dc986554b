"""``muxd top``: a live dashboard of one muxd daemon, fed by its stats stream.

A worker (``follow_daemon``) reads the stream for as long as the app runs,
reconnecting when the daemon goes and comes back. What it reads lands in
``latest`` and the history at once; the view (``stats``, bound to the
widgets) takes ``latest`` unless paused. The clock is injected, so that
"updated 0.4 s ago" is the same in every snapshot test.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widgets import DataTable, Footer

from muxd.protocol import Event, Stats, Status
from tui.charts import Charts
from tui.detail import DetailScreen
from tui.device_card import Devices
from tui.events import MAX_EVENTS, EventLog
from tui.follow import Backoff, Connected, Down, StatsClient, follow
from tui.help import HelpScreen
from tui.history import History
from tui.models_table import SORTABLE, ModelsTable
from tui.status_line import Link, StatusLine, headline

STATUS_EVENTS = {"unit_ready", "model_loaded"}  # after these, the plan and weights in the status may have changed


class MuxdTop(App):
    CSS_PATH = "top.tcss"
    TITLE = "muxd top"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (70, "-wide")]
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("s", "sort", "sort"),
        Binding("p", "pause", "pause"),
        Binding("question_mark", "help", "help", key_display="?"),
    ]

    stats: reactive[Stats | None] = reactive(None)  # the figures on view
    status: reactive[Status | None] = reactive(None)
    sort_by: reactive[str] = reactive(SORTABLE[0])
    paused: reactive[bool] = reactive(False)
    headline: reactive[tuple[Text, Text]] = reactive(lambda: (Text(), Text()))

    def __init__(self, client: StatsClient, interval_ms: int = 500, clock: Callable[[], float] = time.monotonic,
                 backoff: Backoff = Backoff(), history: History | None = None) -> None:  # fmt: skip
        super().__init__()
        self.client = client
        self.interval_ms = interval_ms
        self.clock = clock
        self.backoff = backoff
        self.history = history or History()
        self.latest: Stats | None = None
        self.latest_at: float | None = None
        self.shown_at: float | None = None
        self.down: str | None = None
        self.unshown_events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self.received = 0  # stats documents read (tests wait on it)
        self.stale_after_s = max(2.0, 4 * interval_ms / 1000)

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        yield ModelsTable(id="models").data_bind(MuxdTop.stats, MuxdTop.sort_by)
        with Horizontal(id="middle"):
            yield Devices(id="devices").data_bind(MuxdTop.stats)
            yield Charts(self.history, id="charts").data_bind(MuxdTop.stats)
        yield EventLog(id="events")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#devices").border_title = "devices"
        self.query_one("#events").border_title = "events"
        self.update_headline()
        self.set_interval(1.0, self.update_headline)  # the age, between documents and without them
        self.follow_daemon()

    async def on_unmount(self) -> None:
        aclose = getattr(self.client, "aclose", None)
        if aclose is not None:
            await aclose()

    @work(exclusive=True, group="daemon")
    async def follow_daemon(self) -> None:
        async for item in follow(self.client, self.interval_ms, self.backoff):
            self.receive(item)

    @work(exclusive=True, group="status", exit_on_error=False)
    async def refresh_status(self) -> None:
        self.status = await self.client.status()

    def receive(self, item: Stats | Event | Connected | Down) -> None:
        """One thing from ``follow``: it is kept at once and shown unless the view is paused."""
        match item:
            case Stats():
                self.latest, self.latest_at = item, self.clock()
                self.received += 1
                self.history.add(item)
            case Event():
                self.unshown_events.append(item)
                if item.kind in STATUS_EVENTS:
                    self.refresh_status()
            case Connected():
                self.down, self.status = None, item.status
            case Down():
                self.down = item.message
        if not self.paused:
            self.show_latest()
        self.update_headline()

    def show_latest(self) -> None:
        if self.latest is not self.stats:
            self.stats, self.shown_at = self.latest, self.latest_at
        log = self.query_one(EventLog)
        while self.unshown_events:
            log.add(self.unshown_events.popleft())

    def update_headline(self) -> None:
        stats = self.stats
        self.headline = headline(Link(
            socket=str(self.client.socket), now=self.clock(), stale_after_s=self.stale_after_s,
            version=self.status.version if self.status else None, models=len(stats.models) if stats else 0,
            uptime_s=stats.uptime_s if stats else None, down=self.down, shown_at=self.shown_at, paused=self.paused,
        ))  # fmt: skip

    def action_sort(self) -> None:
        self.sort_by = SORTABLE[(SORTABLE.index(self.sort_by) + 1) % len(SORTABLE)]

    def action_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self.show_latest()
        self.update_headline()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.push_screen(DetailScreen(event.row_key.value, self.history))
