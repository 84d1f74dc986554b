"""The engine bench keeps muxd's figures when a transformers baseline cannot run."""

from __future__ import annotations

import contextlib

import pytest

from muxd.bench.engine import Timing, _time_interleaved


@contextlib.contextmanager
def working():
    yield lambda n: Timing(n, 1.0, [[0] * n])


@contextlib.contextmanager
def failing_to_start():
    raise TypeError("ContinuousBatchingConfig.__init__() got an unexpected keyword argument 'page_size'")
    yield  # a generator, as the bench's runners are


def test_a_baseline_that_cannot_start_is_left_out_with_its_error():
    best, errors = _time_interleaved({"muxd": working(), "hf_cb": failing_to_start()}, 4, 1, lambda _msg: None)
    assert best["muxd"].tokens == 4
    assert "hf_cb" not in best and "page_size" in errors["hf_cb"]


def test_muxd_failing_is_an_error_of_the_bench():
    with pytest.raises(TypeError):
        _time_interleaved({"muxd": failing_to_start(), "hf_cb": working()}, 4, 1, lambda _msg: None)
