"""The one SLO rule, shared by the daemon's stats and the benches.

A request meets its SLO when it finished without error and every target that
is set holds: time to first token, time per output token (a one-token
answer has none, so that target holds), end-to-end latency. A request that
failed, was refused (429) or never finished is a miss. With no target set
there is nothing to judge (None).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class SloTarget:
    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    @property
    def is_set(self) -> bool:
        return self.ttft_s is not None or self.tpot_s is not None or self.e2e_s is not None

    @classmethod
    def from_ms(cls, ttft_ms: float | None, tpot_ms: float | None, e2e_ms: float | None = None) -> SloTarget:
        return cls(*(None if v is None else v / 1e3 for v in (ttft_ms, tpot_ms, e2e_ms)))


@dataclass(frozen=True)
class Outcome:
    """How one request went, as whoever timed it saw it (None: not reached)."""

    ok: bool  # finished without error
    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None


def meets(target: SloTarget, outcome: Outcome) -> bool | None:
    """Whether ``outcome`` meets ``target``; None when no target is set."""
    if not target.is_set:
        return None
    if not outcome.ok:
        return False
    checks = ((target.ttft_s, outcome.ttft_s, False), (target.tpot_s, outcome.tpot_s, True),
              (target.e2e_s, outcome.e2e_s, False))  # fmt: skip
    for limit, value, absent_holds in checks:
        if limit is None:
            continue
        if value is None:
            if not absent_holds:
                return False
        elif value > limit:
            return False
    return True


def attainment(verdicts: Iterable[bool | None]) -> float | None:
    """The fraction of judged requests that met their SLO; None when none was judged."""
    judged = [v for v in verdicts if v is not None]
    return sum(judged) / len(judged) if judged else None
