"""The sparklines' history: one point per step of the daemon's clock, bounded."""

from __future__ import annotations

from tests.tui import docs
from tui.history import History


def test_one_point_per_step_of_the_daemons_clock():
    history = History(step_s=5.0)
    taken = [history.add(docs.stats_at(i)) for i in range(6)]  # documents 2.5 s apart
    assert taken == [True, False, True, False, True, False]
    assert len(history.tokens_per_s("smollm2")) == 3


def test_the_oldest_points_are_dropped():
    history = History(step_s=0.0, points=4)
    for i in range(10):
        history.add(docs.stats_at(i))
    assert history.tokens_per_s("tiny-llama") == [docs.stats_at(i).models["tiny-llama"].tokens_out_per_s for i in range(6, 10)]


def test_attainment_is_none_without_a_target():
    history = History(step_s=0.0)
    history.add(docs.stats_at(0))
    assert history.attainment("tiny-qwen3") == [None]
    assert history.attainment("smollm2") == [docs.stats_at(0).models["smollm2"].slo.attainment]


def test_a_clock_that_goes_back_starts_the_spacing_over():
    history = History(step_s=5.0)
    history.add(docs.stats_at(10))
    assert history.add(docs.stats_at(0))  # a new daemon's first document


def test_an_unknown_model_has_no_history():
    assert History().tokens_per_s("nope") == [] and History().attainment("nope") == []
