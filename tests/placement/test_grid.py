"""LatencyGrid: a measured grid with holes becomes a monotone function defined everywhere.

All grids here are small and synthetic. Most follow ``multilinear`` below, a
latency multilinear in (1 / share, batch, length), which trilinear
interpolation and linear extrapolation reproduce exactly: a test can then
compare against the formula anywhere.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muxd.placement.grid import FAR, LatencyGrid

SHARES = [0.25, 0.5, 1.0]
BATCHES = [1.0, 2.0, 4.0, 8.0]
LENGTHS = [32.0, 64.0, 128.0]


def multilinear(share: float, batch: float, length: float) -> float:
    return 1e-3 * (1 + 1 / share) * (1 + batch) * (1 + length / 32)


def table(f=multilinear) -> np.ndarray:
    return np.array([[[f(s, b, n) for n in LENGTHS] for b in BATCHES] for s in SHARES])


def grid_with(**cells: float) -> LatencyGrid:
    """The multilinear grid with some cells replaced: ``grid_with(c_2_3_1=nan)`` sets [share 2, batch 3, length 1]."""
    values = table()
    for name, value in cells.items():
        _, i, j, k = name.split("_")
        values[int(i), int(j), int(k)] = value
    return LatencyGrid(SHARES, BATCHES, LENGTHS, values)


def test_exact_at_every_grid_point():
    grid = grid_with()
    for s in SHARES:
        for b in BATCHES:
            for n in LENGTHS:
                assert grid(s, b, n) == multilinear(s, b, n)


def test_linear_in_batch_and_length_between_grid_points():
    grid = grid_with()
    assert grid(1.0, 3, 32) == pytest.approx((grid(1.0, 2, 32) + grid(1.0, 4, 32)) / 2, rel=1e-12)
    assert grid(1.0, 1, 96) == pytest.approx((grid(1.0, 1, 64) + grid(1.0, 1, 128)) / 2, rel=1e-12)
    assert grid(0.5, 5.5, 100) == pytest.approx(multilinear(0.5, 5.5, 100), rel=1e-12)


def test_linear_in_inverse_share_between_shares():
    # 1 / 0.75 lies a third of the way from 1 / 1.0 to 1 / 0.5
    grid = grid_with()
    expected = grid(1.0, 2, 64) + (grid(0.5, 2, 64) - grid(1.0, 2, 64)) / 3
    assert grid(0.75, 2, 64) == pytest.approx(expected, rel=1e-12)


def test_flat_below_the_smallest_batch_and_length_and_above_the_largest_share():
    grid = grid_with()
    assert grid(0.5, 0.5, 64) == grid(0.5, 1, 64)
    assert grid(0.5, 0, 64) == grid(0.5, 1, 64)
    assert grid(0.5, 2, 1) == grid(0.5, 2, 32)
    assert grid(1.5, 2, 64) == grid(1.0, 2, 64)


def test_linear_beyond_the_longest_length_and_the_largest_batch():
    grid = grid_with()
    slope = (grid(1.0, 2, 128) - grid(1.0, 2, 64)) / 64
    assert grid(1.0, 2, 2048) == pytest.approx(grid(1.0, 2, 128) + slope * (2048 - 128), rel=1e-12)
    assert grid(0.5, 256, 64) == pytest.approx(multilinear(0.5, 256, 64), rel=1e-12)
    assert grid(0.5, 256, 2048) == pytest.approx(multilinear(0.5, 256, 2048), rel=1e-12)


def test_linear_in_inverse_share_below_the_smallest_share():
    grid = grid_with()
    assert grid(0.1, 2, 64) == pytest.approx(multilinear(0.1, 2, 64), rel=1e-12)
    assert grid(0.01, 8, 2048) == pytest.approx(multilinear(0.01, 8, 2048), rel=1e-12)


def test_flat_beyond_the_far_point():
    grid = grid_with()
    far = LENGTHS[-1] * FAR
    assert grid(1.0, 2, 10 * far) == grid(1.0, 2, far)
    assert math.isfinite(grid(1e-12, 1e12, 1e12))


def test_extrapolation_slope_is_raised_so_a_larger_batch_never_gains_less():
    # batch 8's last length step (+0.01) is smaller than batch 4's (+0.1): unraised, a long
    # enough context would make batch 8 cheaper than batch 4
    values = table()
    values[:, 2, :] = [1.0, 1.1, 1.2]
    values[:, 3, :] = [1.3, 1.4, 1.41]
    grid = LatencyGrid(SHARES, BATCHES, LENGTHS, values)
    assert grid(1.0, 8, 4096) >= grid(1.0, 4, 4096)
    assert grid(1.0, 8, 4096) == pytest.approx(1.41 + (0.1 / 64) * (4096 - 128))


def test_an_axis_of_one_point_is_flat():
    grid = LatencyGrid([1.0], [1.0], [32.0], np.array([[[0.5]]]))
    assert grid(1.0, 64, 4096) == 0.5
    assert grid(0.5, 1, 32) == 0.5


def test_missing_cell_is_another_shares_scaled_by_their_ratio_below_it_and_flagged():
    grid = grid_with(c_1_2_1=math.nan)
    assert grid.filled[1, 2, 1] and grid.filled.sum() == 1
    # the ratio of two shares is the same at every cell of a multilinear latency: exact
    assert grid(0.5, 4, 64) == pytest.approx(multilinear(0.5, 4, 64), rel=1e-12)


def test_missing_cell_no_share_measured_is_interpolated_along_batch_and_length():
    values = table()
    values[:, 2, 1] = math.nan
    grid = LatencyGrid(SHARES, BATCHES, LENGTHS, values)
    assert grid.filled[:, 2, 1].all() and grid.filled.sum() == len(SHARES)
    # batch 4 lies between 2 and 8, length 64 between 32 and 128: the mean of both lines
    by_batch = multilinear(0.5, 2, 64) + (multilinear(0.5, 8, 64) - multilinear(0.5, 2, 64)) * (4 - 2) / (8 - 2)
    by_length = multilinear(0.5, 4, 32) + (multilinear(0.5, 4, 128) - multilinear(0.5, 4, 32)) * (64 - 32) / (128 - 32)
    assert grid(0.5, 4, 64) == pytest.approx((by_batch + by_length) / 2, rel=1e-12)


def test_missing_corner_cells_are_extrapolated_from_the_cells_below_and_flagged():
    # out of memory at large batch x length: the corner of every share is missing
    values = table()
    values[:, 3, 1:] = math.nan
    values[:, 2, 2] = math.nan
    grid = LatencyGrid(SHARES, BATCHES, LENGTHS, values)
    assert grid.filled.sum() == 3 * len(SHARES)
    for s in SHARES:  # a multilinear latency is linear along each axis: extrapolation is exact
        assert grid(s, 8, 128) == pytest.approx(multilinear(s, 8, 128), rel=1e-12)
        assert grid(s, 4, 128) == pytest.approx(multilinear(s, 4, 128), rel=1e-12)


def test_missing_smallest_cell_copies_the_nearest_share():
    grid = grid_with(c_0_0_0=math.nan)
    assert grid.filled[0, 0, 0]
    # copied from share 0.5, then nothing else needed: latency at 0.25 stays >= that at 0.5
    assert grid(0.25, 1, 32) == multilinear(0.5, 1, 32)


def test_a_grid_with_nothing_at_its_smallest_cell_is_refused():
    values = table()
    values[:, 0, 0] = math.nan
    with pytest.raises(ValueError, match="smallest batch and length"):
        LatencyGrid(SHARES, BATCHES, LENGTHS, values)


def test_a_spike_is_lowered_to_the_cell_beyond_it_and_flagged():
    grid = grid_with(c_2_1_1=1.0)  # 1 s between cells of a few ms
    assert grid.adjusted[2, 1, 1] and grid.adjusted.sum() == 1
    # lowered to the least of the cells that cannot be faster: a larger batch or length, a smaller share
    assert grid(1.0, 2, 64) == min(multilinear(1.0, 4, 64), multilinear(1.0, 2, 128), multilinear(0.5, 2, 64))


@pytest.mark.parametrize(
    ("shares", "batches", "lengths", "match"),
    [
        ([0.5, 0.5, 1.0], BATCHES, LENGTHS, "share axis"),
        (SHARES, [1.0, 4.0, 2.0, 8.0], LENGTHS, "batch axis"),
        (SHARES, BATCHES, [0.0, 64.0, 128.0], "length axis"),
        ([0.25, 0.5, 2.0], BATCHES, LENGTHS, "at most 1"),
        (SHARES, BATCHES, [32.0, 64.0], "does not match"),
    ],
)
def test_bad_axes_are_refused(shares, batches, lengths, match):
    with pytest.raises(ValueError, match=match):
        LatencyGrid(shares, batches, lengths, table())


def test_a_share_of_zero_is_refused():
    with pytest.raises(ValueError, match="positive"):
        grid_with()(0.0, 1, 32)


cells = st.floats(min_value=1e-4, max_value=10.0)
points = st.tuples(st.floats(1e-3, 1.5), st.floats(0, 64), st.floats(0, 1024))


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.one_of(cells, st.just(math.nan)), min_size=36, max_size=36),
    point=points,
    axis=st.sampled_from([0, 1, 2]),
    step=st.floats(0, 512),
)
def test_any_noisy_grid_with_holes_becomes_monotone(values, point, axis, step):
    grid_values = np.array(values).reshape(3, 4, 3)
    grid_values[:, 0, 0] = 1e-3  # a grid needs its smallest cell somewhere
    grid = LatencyGrid(SHARES, BATCHES, LENGTHS, grid_values)
    share, batch, length = point
    further = [share / (1 + step), batch + step, length + step]  # slower along every axis
    moved = [share, batch, length]
    moved[axis] = further[axis]
    assert grid(*moved) >= grid(share, batch, length) * (1 - 1e-12)
