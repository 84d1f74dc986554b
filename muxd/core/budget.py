"""A unit's memory budget: which idle models to unload so that another fits (no torch).

A unit's memory is its KV pool (fixed at start) plus the weights of every
model it holds: loaded, loading (reserved by its estimate) or unloading
(held until its requests drain). A model is admitted when pool + holders +
its weights fit the budget. When they do not, idle models are unloaded
first: lower ``priority`` first, then the least recently used, then the
cheapest to reload (fewest bytes); a pinned, busy, loading or unloading
model is never chosen. Where nothing evictable makes room, the caller waits
and, past its bound, answers 503 with ``describe``'s account of who holds
the memory.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Holder:
    """A model that holds (or is about to hold) part of a unit's memory."""

    name: str
    bytes: int
    state: str  # "loaded", "loading" or "unloading"
    evictable: bool  # loaded, idle and not pinned
    priority: int = 0
    last_used: float = 0.0
    why: str = ""  # e.g. "pinned", "busy: 2 requests", "idle"


def used_bytes(fixed: int, holders: list[Holder]) -> int:
    return fixed + sum(h.bytes for h in holders)


def make_room(need: int, budget: int, fixed: int, holders: list[Holder]) -> list[str] | None:
    """The models to unload so that ``fixed`` + holders + ``need`` <= ``budget``:
    [] when it fits now, None when unloading every evictable model would not do."""
    used = used_bytes(fixed, holders)
    if used + need <= budget:
        return []
    victims = []
    for h in sorted((h for h in holders if h.evictable), key=lambda h: (h.priority, h.last_used, h.bytes)):
        victims.append(h.name)
        used -= h.bytes
        if used + need <= budget:
            return victims
    return None


def describe(budget: int, fixed: int, holders: list[Holder]) -> str:
    """One line on who holds a unit's memory, largest first."""
    parts = [f"KV pool {_mib(fixed)}"] + [
        f"{h.name} {_mib(h.bytes)} ({h.why or h.state})" for h in sorted(holders, key=lambda h: -h.bytes)
    ]
    return f"{_mib(used_bytes(fixed, holders))} of the {_mib(budget)} budget is held by: {', '.join(parts)}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
