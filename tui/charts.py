"""Sparklines of each model's generated tokens/s and SLO attainment, from the app's ``History``."""

from __future__ import annotations

from functools import partial

from rich.console import Group
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from muxd.protocol import ModelStats, Stats
from tui.format import CLOSE_TO_GOAL, NONE, fmt_pct, fmt_rate, fmt_seconds, slo_style, sparkline
from tui.history import History
from tui.models_table import has_target

NAME_CELLS = 14
VALUE_CELLS = 7


class Charts(Widget):
    """Two lines per model: tokens/s, then SLO attainment (only for models with a target)."""

    stats: reactive[Stats | None] = reactive(None)

    def __init__(self, history: History, **kwargs) -> None:
        super().__init__(**kwargs)
        self.history = history
        self.series: dict[str, tuple[list[float], list[float | None]]] = {}
        self.shape: list[tuple[str, bool]] = []

    def watch_stats(self, stats: Stats | None) -> None:
        """Copy the series now, so that a paused view keeps what it showed."""
        models = stats.models if stats else {}
        shape = [(name, has_target(m)) for name, m in sorted(models.items())]  # what decides the number of lines
        self.series = {name: (self.history.tokens_per_s(name), self.history.attainment(name)) for name in models}
        self.border_title = f"last {fmt_seconds(self.history.span_s)}"
        self.refresh(layout=shape != self.shape)
        self.shape = shape

    def render(self) -> Group:
        if self.stats is None or not self.stats.models:
            return Group(Text("no models", style="dim"))
        width = max(self.content_size.width, NAME_CELLS + VALUE_CELLS + 8)
        lines: list[Text] = []
        for name, m in sorted(self.stats.models.items()):
            tokens, attainment = self.series.get(name, ([], []))
            lines += model_lines(name, m, tokens, attainment, width)
        return Group(*lines)


def model_lines(name: str, m: ModelStats, tokens: list[float], attainment: list[float | None],
                width: int) -> list[Text]:  # fmt: skip
    spark_cells = width - NAME_CELLS - VALUE_CELLS - 8
    label = Text(f"{name[: NAME_CELLS - 1]:<{NAME_CELLS}}", style="bold")
    tok = label.copy()
    tok.append("tok/s ", "dim")
    tok.append_text(sparkline(tokens, spark_cells, style="cyan"))
    tok.append(f" {fmt_rate(m.tokens_out_per_s):>{VALUE_CELLS}}")
    if not has_target(m):
        return [tok]
    known = [a for a in attainment if a is not None]
    low = min([m.slo.goal - 2 * CLOSE_TO_GOAL, *known])
    slo = Text(" " * NAME_CELLS)
    slo.append("SLO   ", "dim")
    slo.append_text(sparkline(attainment, spark_cells, low=low, high=1.0, style=partial(_slo, goal=m.slo.goal)))
    value = NONE if m.slo.attainment is None else fmt_pct(m.slo.attainment, 1)
    slo.append(f" {value:>{VALUE_CELLS}}", slo_style(m.slo.attainment, m.slo.goal))
    return [tok, slo]


def _slo(attainment: float, goal: float) -> str:
    return slo_style(attainment, goal)
