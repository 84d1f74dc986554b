"""Quantities as people write them in a config file or a request: durations and byte sizes.

``keep_alive`` takes Ollama's forms (``300``, ``"5m"``, ``-1``); ``memory_budget`` takes
bytes (``"8GiB"``) or a fraction of a device's memory (``0.5``, ``"50%"``). Errors name the
setting and what it accepts.
"""

from __future__ import annotations

from typing import Any


def parse_duration(value: Any, what: str) -> float:
    """Seconds from ``300``, ``"90s"``, ``"5m"``, ``"1h"``, ``-1`` (never) or ``"0"`` (at once), as Ollama's keep_alive."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be seconds or a duration such as \"5m\", got {value!r}")
    text = str(value).strip()
    scale = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    unit = next((u for u in ("ms", "s", "m", "h") if text.endswith(u)), "")
    try:
        seconds = float(text[: len(text) - len(unit)]) * scale.get(unit, 1.0)
    except ValueError:
        raise ValueError(f"{what} must be seconds or a duration such as \"5m\", got {value!r}") from None
    if seconds < 0:
        return -1.0
    return seconds


def parse_bytes(value: Any, what: str) -> int | float:
    """Bytes from ``1073741824``, ``"512MiB"``, ``"8GB"``; a fraction from ``0.5`` or ``"50%"`` (kept as a float <= 1)."""
    text = str(value).strip().replace(" ", "")
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9,
             "tb": 10**12, "k": 2**10, "m": 2**20, "g": 2**30, "b": 1}  # fmt: skip
    try:
        if text.endswith("%"):
            fraction = float(text[:-1]) / 100
        else:
            unit = next((u for u in units if text.lower().endswith(u)), "")
            number = float(text[: len(text) - len(unit)])
            if unit or number > 1:
                return int(number * units.get(unit, 1))
            fraction = number
    except ValueError:
        raise ValueError(f"{what} must be bytes (\"8GiB\", 512000000) or a fraction (0.5, \"50%\"), got {value!r}") from None
    if not 0 < fraction <= 1:
        raise ValueError(f"{what}: a fraction of the device's memory must be in (0, 1], got {value!r}")
    return fraction
