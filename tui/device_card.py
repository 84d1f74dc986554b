"""A card per device: a GPU's NVML readings, or the host CPU's cores, RAM and unit processes.

Cards draw themselves at whatever width they are given (bars stretch, many
cores fold into one line of levels), so any terminal size renders.
"""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.containers import VerticalScroll
from textual.reactive import reactive
from textual.widget import Widget

from muxd.protocol import CpuStats, DeviceStats, GpuStats, Stats
from tui.format import NONE, SPARKS, bar, fmt_bytes, fmt_of, fmt_pct, fmt_si, level_style

LABEL = 6  # the width of a bar line's label
CORE_CELL = 16  # " 12 ██████  45%" and a space
MAX_CORE_LINES = 6  # past this many lines of per-core bars, one level character per core


class DeviceCard(Widget):
    """One device of ``Stats.devices``, with its unit's busy share."""

    def __init__(self, key: str) -> None:
        super().__init__(classes="card")
        self.key = key
        self.device: DeviceStats | None = None

    def show(self, device: DeviceStats) -> None:
        """Draw ``device``; lay the screen out again only when the card's lines may change in number."""
        shape = _shape(self.device) if self.device is not None else None
        self.device = device
        self.border_title = f"{self.key} · {device.unit}"
        self.refresh(layout=_shape(device) != shape)

    def render(self) -> Group:
        d, width = self.device, max(self.content_size.width, 20)
        if d is None:
            return Group(Text(NONE))
        lines = gpu_lines(d.gpu, width) if d.gpu is not None else cpu_lines(d.cpu, width)
        lines.append(bar_line("busy", d.utilization, fmt_pct(d.utilization), width))
        if d.gpu is not None:
            lines.append(pair("unit mem", fmt_bytes(d.memory_used_bytes), "tok/J", _tpj(d.tokens_per_joule)))
        return Group(*lines)


def _shape(d: DeviceStats) -> tuple:
    return d.gpu is None, d.cpu is None, d.cpu and len(d.cpu.cores_pct), d.cpu and len(d.cpu.processes)


def gpu_lines(gpu: GpuStats, width: int) -> list[Text]:
    util = None if gpu.utilization_pct is None else gpu.utilization_pct / 100
    used, total = gpu.memory_used_bytes, gpu.memory_total_bytes
    memory = used / total if used is not None and total else None
    return [
        Text(gpu.name or f"GPU {gpu.index}", style="dim", overflow="ellipsis", no_wrap=True),
        bar_line("gpu", util, fmt_pct(util), width),
        bar_line("mem", memory, fmt_of(used, total), width),
        pair("power", fmt_si(gpu.power_w, "W"), "energy", fmt_si(gpu.energy_j, "J")),
        pair("temp", NONE if gpu.temperature_c is None else f"{gpu.temperature_c:.0f} °C",
             "clocks", f"{_mhz(gpu.sm_clock_mhz)} / {_mhz(gpu.memory_clock_mhz)} MHz"),
    ]  # fmt: skip


def cpu_lines(cpu: CpuStats | None, width: int) -> list[Text]:
    if cpu is None:
        return [Text("no readings (neither NVML nor psutil answered)", style="dim")]
    used, total = cpu.memory_used_bytes, cpu.memory_total_bytes
    lines = [Text(cpu.model or "CPU", style="dim", overflow="ellipsis", no_wrap=True)]
    lines += core_lines(cpu.cores_pct, width)
    lines.append(bar_line("ram", used / total if used is not None and total else None, fmt_of(used, total), width))
    for p in cpu.processes:
        cpu_pct = NONE if p.cpu_pct is None else f"{p.cpu_pct:.0f}%"
        line = Text.assemble((f"{p.unit:<{LABEL}}", "bold"), f"pid {p.pid}  rss {fmt_bytes(p.rss_bytes)}  cpu {cpu_pct}")
        line.no_wrap, line.overflow = True, "ellipsis"
        lines.append(line)
    return lines


def core_lines(cores_pct: list[float], width: int) -> list[Text]:
    """A bar per core in as many columns as fit; one level character per core when that takes too many lines."""
    if not cores_pct:
        return []
    per_line = max(1, width // CORE_CELL)
    if len(cores_pct) > per_line * MAX_CORE_LINES:
        text = Text(f"{'cores':<{LABEL}}")
        for pct in cores_pct:
            level = round(min(1.0, max(0.0, pct / 100)) * (len(SPARKS) - 1))
            text.append(SPARKS[level], level_style(pct / 100))
        return [text]
    per_line = min(per_line, len(cores_pct))
    cells = width // per_line - 11  # each core: "{i:>3} ", its bar, " {pct:>3}% "
    lines = []
    for start in range(0, len(cores_pct), per_line):
        line = Text()
        for i, pct in enumerate(cores_pct[start : start + per_line], start):
            line.append(f"{i:>3} ")
            line.append_text(bar(pct / 100, cells))
            line.append(f" {pct:>3.0f}% ")
        lines.append(line)
    return lines


def bar_line(label: str, fraction: float | None, value: str, width: int) -> Text:
    """``label ██████······ value``: the bar takes what the label and value leave of ``width``."""
    cells = max(1, width - LABEL - len(value) - 1)
    text = Text(f"{label:<{LABEL}}", style="bold")
    text.append_text(bar(fraction, cells))
    text.append(f" {value}")
    return text


def pair(label_a: str, value_a: str, label_b: str, value_b: str) -> Text:
    return Text.assemble((f"{label_a} ", "bold"), value_a, "  ", (f"{label_b} ", "bold"), value_b)


def _mhz(mhz: int | None) -> str:
    return NONE if mhz is None else str(mhz)


def _tpj(tokens_per_joule: float | None) -> str:
    return NONE if tokens_per_joule is None else f"{tokens_per_joule:.3g}"


class Devices(VerticalScroll):
    """The cards of ``stats.devices``, one per device key, added and removed as devices come and go."""

    stats: reactive[Stats | None] = reactive(None)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cards: dict[str, DeviceCard] = {}

    def watch_stats(self, stats: Stats | None) -> None:
        devices = stats.devices if stats else {}
        for key in [k for k in self.cards if k not in devices]:
            self.cards.pop(key).remove()
        for key, device in devices.items():
            card = self.cards.get(key)
            if card is None:
                card = self.cards[key] = DeviceCard(key)
                self.mount(card)
            card.show(device)
