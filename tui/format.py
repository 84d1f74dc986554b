"""Every figure the dashboard shows, formatted in one place: bytes, times, shares, bars and sparklines.

Each function takes ``None`` for "the daemon cannot say" and shows it as
``-``. Bars and sparklines return Rich ``Text`` with their colours, so the
widgets only lay them out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from rich.text import Text

NONE = "-"
SPARKS = "▁▂▃▄▅▆▇█"
CLOSE_TO_GOAL = 0.05  # attainment this far below its goal is yellow; further is red

PREFILL_STYLE = "bold magenta"
DECODE_STYLE = "bold cyan"
EMPTY_STYLE = "bright_black"


def fmt_bytes(n: float | None) -> str:
    """``1536 -> "1.5 KiB"``; binary units, three significant figures at most."""
    if n is None:
        return NONE
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            break
        n /= 1024
    if unit == "B":
        return f"{int(n)} B"
    return f"{n:.3g} {unit}" if abs(n) < 100 else f"{n:.0f} {unit}"


def fmt_ms(ms: float | None) -> str:
    """Milliseconds as people read them: ``"4.2 ms"``, ``"38 ms"``, ``"1.00 s"``, ``"12.5 s"``, ``"3m05s"``."""
    if ms is None:
        return NONE
    if ms >= 1000:
        return fmt_seconds(ms / 1000) if ms >= 60_000 else f"{ms / 1000:.{2 if ms < 10_000 else 1}f} s"
    return f"{ms:.2g} ms" if ms < 10 else f"{ms:.0f} ms"


def fmt_pct(fraction: float | None, digits: int = 0) -> str:
    """A fraction as a percentage: ``0.456 -> "46%"``."""
    return NONE if fraction is None else f"{fraction * 100:.{digits}f}%"


def fmt_rate(per_s: float | None) -> str:
    """A rate (tokens/s, requests/s) in four characters or so: ``0.25``, ``12.5``, ``431``, ``12.3k``."""
    if per_s is None:
        return NONE
    if per_s >= 10_000:
        return f"{per_s / 1000:.0f}k"
    if per_s >= 1000:
        return f"{per_s / 1000:.1f}k"
    if per_s >= 100 or per_s == 0:
        return f"{per_s:.0f}"
    return f"{per_s:.1f}" if per_s >= 1 else f"{per_s:.2f}"


def fmt_seconds(s: float | None) -> str:
    """A duration: ``"0.4 s"``, ``"12 s"``, ``"3m05s"``, ``"2h03m"``, ``"4d02h"``."""
    if s is None:
        return NONE
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    minutes, hours = int(s // 60), int(s // 3600)
    if hours == 0:
        return f"{minutes}m{int(s % 60):02d}s"
    if hours < 24:
        return f"{hours}h{minutes % 60:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def fmt_clock(unix_s: float) -> str:
    """Local wall-clock time of day, ``"14:03:27"``."""
    return time.strftime("%H:%M:%S", time.localtime(unix_s))


def fmt_of(used: float | None, total: float | None, fmt=fmt_bytes) -> str:
    """``"1.2 GiB / 8 GiB"``, or the one that is known."""
    if total is None:
        return fmt(used)
    return f"{fmt(used)} / {fmt(total)}"


def slo_style(attainment: float | None, goal: float) -> str:
    """Green at or above its goal, yellow within ``CLOSE_TO_GOAL`` of it, red below that."""
    if attainment is None:
        return "dim"
    if attainment >= goal:
        return "green"
    return "yellow" if attainment >= goal - CLOSE_TO_GOAL else "red"


def level_style(fraction: float | None) -> str:
    """The colour of a utilization or fill level: green, yellow above 70 %, red above 90 %."""
    if fraction is None or fraction < 0.7:
        return "green"
    return "yellow" if fraction < 0.9 else "red"


def bar(fraction: float | None, width: int, style: str | None = None) -> Text:
    """A horizontal bar ``width`` cells wide, filled to ``fraction`` (clamped to 0..1) in eighths."""
    text = Text()
    if width <= 0:
        return text
    eighths = round(_clamp(fraction or 0.0) * width * 8)
    full, part = divmod(eighths, 8)
    filled = "█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")
    text.append(filled, style or level_style(fraction))
    text.append("·" * (width - len(filled)), EMPTY_STYLE)
    return text


def share_bar(prefill: float, decode: float, width: int) -> Text:
    """A unit's compute share as one bar of two colours: prefill, then decode, then what is left idle."""
    text = Text()
    if width <= 0:
        return text
    end_prefill = round(_clamp(prefill) * width)
    end_decode = max(end_prefill, round(_clamp(prefill + decode) * width))
    text.append("█" * end_prefill, PREFILL_STYLE)
    text.append("█" * (end_decode - end_prefill), DECODE_STYLE)
    text.append("·" * (width - end_decode), EMPTY_STYLE)
    return text


def sparkline(values: Sequence[float | None], width: int, low: float = 0.0, high: float | None = None,
              style: str | Callable[[float], str] = "cyan") -> Text:  # fmt: skip
    """The last values as block characters, ``width`` cells at most, scaled from ``low`` to ``high``.

    With more values than cells, consecutive values are averaged into one
    cell. ``None`` (nothing known then) is a blank. ``high`` defaults to the
    largest value shown. ``style`` is a colour, or a function giving each
    value its colour.
    """
    cells = _resample(values, width)
    known = [v for v in cells if v is not None]
    top = high if high is not None else max(known, default=0.0)
    span = top - low
    text = Text(" " * (width - len(cells)))
    for v in cells:
        if v is None:
            text.append(" ")
        else:
            level = 0 if span <= 0 else round(_clamp((v - low) / span) * (len(SPARKS) - 1))
            text.append(SPARKS[level], style(v) if callable(style) else style)
    return text


def _resample(values: Sequence[float | None], width: int) -> list[float | None]:
    """``values`` averaged into at most ``width`` cells, the newest value last."""
    if width <= 0:
        return []
    if len(values) <= width:
        return list(values)
    per_cell = len(values) / width
    cells: list[float | None] = []
    for i in range(width):
        group = [v for v in values[round(i * per_cell) : round((i + 1) * per_cell)] if v is not None]
        cells.append(sum(group) / len(group) if group else None)
    return cells


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


def fmt_si(value: float | None, unit: str) -> str:
    """A figure with an SI prefix: ``fmt_si(1234567, "J") -> "1.23 MJ"``."""
    if value is None:
        return NONE
    for prefix in ("", "k", "M", "G", "T"):
        if abs(value) < 1000 or prefix == "T":
            break
        value /= 1000
    return f"{value:.3g} {prefix}{unit}"
