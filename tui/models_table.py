"""The models table: one row per served model, sortable, its cursor kept on the same model across updates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.reactive import reactive
from textual.widgets import DataTable

from muxd.protocol import ModelStats, Stats
from tui.format import NONE, fmt_ms, fmt_pct, fmt_rate, fmt_seconds, share_bar, slo_style

SHARE_CELLS = 10

# The columns, in order: their header and, for those ``s`` sorts by, the sort key (smallest first).
Key = Callable[[str, ModelStats], Any]
COLUMNS: list[tuple[str, Key | None]] = [
    ("MODEL", lambda name, m: name),
    ("STATE", None),
    ("UNIT", lambda name, m: (m.unit, name)),
    ("RATE", lambda name, m: -m.rate),
    ("IN/S", lambda name, m: -m.tokens_in_per_s),
    ("OUT/S", lambda name, m: -m.tokens_out_per_s),
    ("COMPUTE P|D", lambda name, m: -m.share.total),
    ("PAGES", lambda name, m: -(m.pages_held or 0)),
    ("QUEUE", lambda name, m: (-m.queued, -(m.queue_age_s or 0))),
    ("TTFT p99", lambda name, m: -_or_zero(m.latency.ttft_ms.p99)),
    ("TPOT p99", lambda name, m: -_or_zero(m.latency.tpot_ms.p99)),
    ("SLO", lambda name, m: _attainment_key(m)),
]
SORTABLE = [label for label, key in COLUMNS if key is not None]


class ModelsTable(DataTable):
    """``stats`` and ``sort_by`` are bound to the app's; Enter on a row posts ``RowSelected`` with the model's name."""

    BINDINGS = [Binding("enter", "select_cursor", "detail")]

    stats: reactive[Stats | None] = reactive(None)
    sort_by: reactive[str] = reactive("MODEL")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, cell_padding=1, cursor_foreground_priority="renderable",
                         **kwargs)  # fmt: skip

    @property
    def selected(self) -> str | None:
        """The model under the cursor."""
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def watch_sort_by(self) -> None:
        selected = self.selected
        self.clear(columns=True)
        for label, _ in COLUMNS:
            mark = " ▼" if label == self.sort_by else ""
            self.add_column(Text(label + mark, style="bold" if mark else ""), key=label)
        self.show(selected)

    def watch_stats(self) -> None:
        self.show()

    def show(self, selected: str | None = None) -> None:
        """Rows for ``stats`` in ``sort_by`` order, the cursor on the model it was on (or on ``selected``).

        Cells are updated in place while the rows stay the same, so the
        cursor and the scroll position do not move under the user.
        """
        models = self.stats.models if self.stats else {}
        key = dict(COLUMNS)[self.sort_by] or COLUMNS[0][1]
        names = [name for name, _ in sorted(models.items(), key=lambda item: key(*item))]
        if names == [k.value for k in self.rows]:
            for name in names:
                for (label, _), cell, old in zip(COLUMNS, row(name, models[name]), self.get_row(name)):
                    if cell != old:
                        self.update_cell(name, label, cell, update_width=True)
            return
        selected, scroll_x = selected or self.selected, self.scroll_x
        self.clear()
        for name in names:
            self.add_row(*row(name, models[name]), key=name)
        if selected in models:
            self.move_cursor(row=self.get_row_index(selected), animate=False)
        self.scroll_x = scroll_x


def row(name: str, m: ModelStats) -> list[Text | str]:
    """A model's cells, in ``COLUMNS`` order."""
    share = share_bar(m.share.prefill, m.share.decode, SHARE_CELLS)
    share.append(f" {fmt_pct(m.share.total):>4}")
    pages = NONE if m.pages_held is None else f"{m.pages_held}/{NONE if m.pages_quota is None else m.pages_quota}"
    queue = str(m.queued) if not m.queued or m.queue_age_s is None else f"{m.queued} ({fmt_seconds(m.queue_age_s)})"
    state = state_cell(m)
    return [
        Text(name, style="bold"), state, m.unit, Text(fmt_rate(m.rate), justify="right"),
        Text(fmt_rate(m.tokens_in_per_s), justify="right"), Text(fmt_rate(m.tokens_out_per_s), justify="right"),
        share, Text(pages, justify="right"), Text(queue, justify="right"),
        Text(fmt_ms(m.latency.ttft_ms.p99), justify="right"), Text(fmt_ms(m.latency.tpot_ms.p99), justify="right"),
        slo_cell(m),
    ]  # fmt: skip


def state_cell(m: ModelStats) -> Text:
    """Its weights' state while its unit is ready (loaded, loading, unloading, unloaded), else the unit's."""
    state = m.load_state if m.state == "ready" and m.load_state else m.state
    style = "green" if state in ("ready", "loaded") else "dim" if state == "unloaded" else "yellow"
    return Text(state, style=style)


def slo_cell(m: ModelStats) -> Text:
    """Window attainment coloured against the goal; ``-`` with no target (or nothing judged yet)."""
    if not has_target(m) or m.slo.attainment is None:
        return Text(NONE, justify="right", style="dim")
    return Text(fmt_pct(m.slo.attainment, 1), justify="right", style=slo_style(m.slo.attainment, m.slo.goal))


def has_target(m: ModelStats) -> bool:
    return any(t is not None for t in (m.slo.ttft_ms, m.slo.tpot_ms, m.slo.e2e_ms))


def _or_zero(x: float | None) -> float:
    return 0.0 if x is None else x


def _attainment_key(m: ModelStats) -> float:
    """Worst first; models without a target last."""
    return 2.0 if m.slo.attainment is None or not has_target(m) else m.slo.attainment - m.slo.goal
