"""The detail view of one model (Enter on its row; Escape goes back): every figure the daemon gives for it."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Static

from muxd.protocol import ModelStats, ModelStatus, Slo, Stats, Status
from tui.charts import model_lines
from tui.format import (
    DECODE_STYLE, NONE, PREFILL_STYLE, fmt_bytes, fmt_ms, fmt_pct, fmt_rate, fmt_seconds, share_bar, slo_style,
)  # fmt: skip
from tui.history import History
from tui.status_line import StatusLine
from tui.models_table import has_target


class ModelDetail(Widget):
    """One model's figures, redrawn whenever the app shows new stats."""

    def __init__(self, model: str, history: History) -> None:
        super().__init__()
        self.model = model
        self.history = history
        self.stats: Stats | None = None
        self.status: Status | None = None

    def on_mount(self) -> None:
        self.watch(self.app, "stats", self.show_stats)
        self.watch(self.app, "status", self.show_status)

    def show_stats(self, stats: Stats | None) -> None:
        self.stats = stats
        self.refresh(layout=True)

    def show_status(self, status: Status | None) -> None:
        self.status = status
        self.refresh(layout=True)

    def render(self) -> Group:
        m = self.stats.models.get(self.model) if self.stats else None
        if m is None:
            return Group(Text(f"{self.model}: not in the daemon's stats (any more)", style="yellow"))
        status = next((s for s in self.status.models if s.name == self.model), None) if self.status else None
        tokens, attainment = self.history.tokens_per_s(self.model), self.history.attainment(self.model)
        charts = model_lines(self.model, m, tokens, attainment, max(self.content_size.width, 40))
        window = self.stats.latency_window_s
        blank = Text()
        return Group(figures(m, status), compute_line(m), blank, latency_table(m, window), blank,
                     slo_table(m.slo, window), blank, *charts)  # fmt: skip


def compute_line(m: ModelStats) -> Text:
    text = Text("compute  ", style="bold")
    text.append_text(share_bar(m.share.prefill, m.share.decode, 20))
    text.append(f"  {fmt_pct(m.share.total)} of {m.unit}: ")
    text.append(f"prefill {fmt_pct(m.share.prefill)}", PREFILL_STYLE)
    text.append(", ")
    text.append(f"decode {fmt_pct(m.share.decode)}", DECODE_STYLE)
    return text


def figures(m: ModelStats, status: ModelStatus | None) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_column(style="bold")
    table.add_column()
    tokens_per_joule = NONE if m.tokens_per_joule is None else f"{m.tokens_per_joule:.3g}"
    pages = f"held {_n(m.pages_held)}  quota {_n(m.pages_quota)}  cached {_n(m.pages_cached)}"
    rows = [
        ("state", m.state, "unit", m.unit),
        ("plan", _get(status, "plan"), "dtype", _get(status, "dtype")),
        ("weights", fmt_bytes(status.weight_bytes if status else None), "max len", _get(status, "max_model_len")),
        ("rate", f"{fmt_rate(m.rate)} req/s expected", "tok/J", tokens_per_joule),
        ("tokens/s", f"in {fmt_rate(m.tokens_in_per_s)}  out {fmt_rate(m.tokens_out_per_s)}",
         "tokens", f"prompt {m.prompt_tokens}  generated {m.generated_tokens}"),
        ("requests", f"running {m.running}  queued {m.queued}  in flight {m.in_flight}",
         "finished", f"done {m.done}  errors {m.errors}  429s {m.rejected}"),
        ("oldest queued", fmt_seconds(m.queue_age_s), "pages", pages),
        ("prefix cache", _hit_rate(m), "", ""),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    if status is not None and status.plan_notes:
        table.add_row("plan notes", Text("; ".join(status.plan_notes), style="dim"), "", "")
    return table


def latency_table(m: ModelStats, window_s: float) -> Table:
    """TTFT, TPOT and end-to-end percentiles over the window and since start, next to their SLO targets."""
    table = Table(title="latency", title_justify="left", box=None, header_style="bold", pad_edge=False)
    table.add_column("")
    for header in (f"last {fmt_seconds(window_s)} p50", "p99", "since start p50", "p99", "target"):
        table.add_column(header, justify="right")
    targets = {"ttft_ms": m.slo.ttft_ms, "tpot_ms": m.slo.tpot_ms, "e2e_ms": m.slo.e2e_ms}
    for label, field in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("e2e", "e2e_ms")):
        window, total = getattr(m.latency, field), getattr(m.latency_total, field)
        table.add_row(label, fmt_ms(window.p50), fmt_ms(window.p99), fmt_ms(total.p50), fmt_ms(total.p99),
                      fmt_ms(targets[field]))  # fmt: skip
    table.add_row(Text("requests", style="dim"), "", str(m.latency.requests), "", str(m.latency_total.requests), "")
    return table


def slo_table(slo: Slo, window_s: float) -> Table | Text:
    if not any(t is not None for t in (slo.ttft_ms, slo.tpot_ms, slo.e2e_ms)):
        return Text("SLO: no target set", style="dim")
    table = Table(title=f"SLO (goal {fmt_pct(slo.goal, 1)})", title_justify="left", box=None, header_style="bold",
                  pad_edge=False)  # fmt: skip
    table.add_column("")
    table.add_column("attainment", justify="right")
    table.add_column("judged", justify="right")
    for label, attainment, judged in ((f"last {fmt_seconds(window_s)}", slo.attainment, slo.judged),
                                      ("since start", slo.attainment_total, slo.judged_total)):  # fmt: skip
        cell = Text(fmt_pct(attainment, 1), style=slo_style(attainment, slo.goal))
        table.add_row(label, cell, str(judged))
    return table


def _get(status: ModelStatus | None, name: str) -> str:
    value = getattr(status, name, None) if status is not None else None
    return NONE if value is None else str(value)


def _n(x: int | None) -> str:
    return NONE if x is None else str(x)


def _hit_rate(m: ModelStats) -> str:
    if not m.prefix_query_tokens:
        return NONE
    return f"{fmt_pct((m.prefix_hit_tokens or 0) / m.prefix_query_tokens)} of {m.prefix_query_tokens} prompt tokens"


class DetailScreen(Screen):
    """The model's figures, live, under the same status line as the main screen."""

    BINDINGS = [Binding("escape", "app.pop_screen", "back")]

    def __init__(self, model: str, history: History) -> None:
        super().__init__()
        self.model = model
        self.history = history

    def compose(self) -> ComposeResult:
        yield StatusLine()
        yield Static(Text(f" {self.model}", style="bold"), id="detail-title")
        with VerticalScroll():
            yield ModelDetail(self.model, self.history)
        yield Footer()
