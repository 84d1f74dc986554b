"""The top line of every screen: which daemon, whether it answers, and how old the figures shown are."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from tui.format import fmt_seconds


@dataclass(frozen=True)
class Link:
    """What the status line says, as the app knows it at ``now`` (its clock's seconds)."""

    socket: str
    now: float
    stale_after_s: float
    version: str | None = None
    models: int = 0
    uptime_s: float | None = None
    down: str | None = None  # why there is no stream, while there is none
    shown_at: float | None = None  # when the stats on view arrived
    paused: bool = False


def headline(link: Link) -> tuple[Text, Text]:
    """What the line says on its left (``muxd 0.1.0 on /run/.../muxd.sock · up 3m05s · 3 models``,
    or why there is no daemon) and on its right (``updated 0.4 s ago``)."""
    if link.down is not None:
        left = Text(link.down, style="bold red")
    else:
        left = Text.assemble(("muxd", "bold"), f" {link.version or ''} on {link.socket}")
        if link.uptime_s is not None:
            left.append(f" · up {fmt_seconds(link.uptime_s)} · {link.models} models")
    return left, age(link)


def age(link: Link) -> Text:
    if link.shown_at is None:
        return Text("no data yet", style="dim")
    seconds = max(0.0, link.now - link.shown_at)
    if link.paused:
        return Text(f"PAUSED · data {fmt_seconds(seconds)} old", style="bold reverse yellow")
    if link.down is not None or seconds > link.stale_after_s:
        return Text(f"stale {fmt_seconds(seconds)}", style="bold yellow")
    return Text(f"updated {fmt_seconds(seconds)} ago", style="dim")


class StatusLine(Static):
    """Shows the app's ``headline`` (kept current by the app), on whichever screen holds it."""

    def on_mount(self) -> None:
        self.watch(self.app, "headline", self.show)

    def show(self, headline: tuple[Text, Text]) -> None:
        left, right = headline
        grid = Table.grid(expand=True)
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", no_wrap=True)
        grid.add_row(left, right)
        self.update(grid)
