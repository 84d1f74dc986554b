"""The one SLO rule: finished without error, and every target that is set holds."""

from __future__ import annotations

from muxd.core.slo import Outcome, SloTarget, attainment, meets

TARGET = SloTarget.from_ms(ttft_ms=100, tpot_ms=20, e2e_ms=1000)


def test_a_request_within_every_target_meets_it() -> None:
    assert meets(TARGET, Outcome(ok=True, ttft_s=0.1, tpot_s=0.02, e2e_s=1.0)) is True


def test_one_target_missed_is_a_miss() -> None:
    assert meets(TARGET, Outcome(ok=True, ttft_s=0.101, tpot_s=0.01, e2e_s=0.5)) is False
    assert meets(TARGET, Outcome(ok=True, ttft_s=0.05, tpot_s=0.03, e2e_s=0.5)) is False
    assert meets(TARGET, Outcome(ok=True, ttft_s=0.05, tpot_s=0.01, e2e_s=1.5)) is False


def test_errors_refusals_and_unfinished_requests_are_misses() -> None:
    assert meets(TARGET, Outcome(ok=False)) is False
    assert meets(SloTarget(e2e_s=1.0), Outcome(ok=True, ttft_s=0.1)) is False  # never finished: no e2e


def test_a_one_token_answer_has_no_tpot_to_miss() -> None:
    assert meets(TARGET, Outcome(ok=True, ttft_s=0.05, tpot_s=None, e2e_s=0.05)) is True


def test_without_a_target_nothing_is_judged() -> None:
    assert meets(SloTarget(), Outcome(ok=False)) is None
    assert attainment([None, None]) is None
    assert attainment([True, False, None, True]) == 2 / 3
