"""The one percentile of muxd's figures, shared by /stats and the benches."""

from __future__ import annotations

import pytest

from muxd.core.percentile import percentile, percentile_sorted


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(i) for i in range(101)], 99) == pytest.approx(99.0)
    assert percentile(iter([5.0, 1.0, 3.0]), 100) == 5.0 and percentile([5.0, 1.0, 3.0], 0) == 1.0


def test_the_daemon_and_both_benches_use_this_one() -> None:
    from muxd import replay
    from muxd.bench import serve
    from muxd.server import telemetry

    assert replay.percentile is serve.percentile is percentile
    assert telemetry.percentile_sorted is percentile_sorted  # the daemon keeps its values sorted


def test_sorted_values_give_the_same_percentiles_as_unsorted_ones() -> None:
    values = [7.0, 1.0, 4.0, 9.0, 2.5]
    assert all(percentile_sorted(sorted(values), q) == percentile(values, q) for q in (0, 25, 50, 90, 99, 100))
