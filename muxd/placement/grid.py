"""One job kind's latency over (compute share, batch, length): filled, monotone, defined everywhere.

A profile measures latency at grid points; placement and the simulator ask
at any point. ``LatencyGrid`` turns a measured grid, with holes and noise,
into a function that is

- **exact at grid points** (every measured cell the clean-up below left alone);
- **trilinear between them**: linear in batch, in length and in ``1 / share``.
  Leave-one-out on the MuxServe A100 file (each interior measured cell
  predicted from its two neighbours; median error, prefill / decode): batch
  2.3 / 2.4 % linear against 24 / 4.4 % over log2; length 2.7 / 1.7 %
  linear against 24 / 2.6 % over log2; share 1.6 / 2.3 % in ``1 / share``
  against 2.7 / 2.5 % in share (compute time goes as ``1 / share``);
- **non-decreasing in batch and length, non-increasing in share**, in and
  beyond the grid;
- **defined at and beyond its edges**: below the smallest batch or length
  and above the largest share, flat (the edge's value); above the largest
  batch or length and below the smallest share, linear from the last two
  grid points along that axis (in ``1 / share`` for the share; a one-point
  axis stays flat), the slope raised where needed so that it never falls
  as the other axes grow (a bigger batch never gains less per extra token).
  On the A100 file, length 512 predicted from 128 and 256 this way misses
  by a median 4 % for prefill (attention's quadratic term: a slight
  under-estimate) and 3 % for decode, share 30 % from 40 and 50 % by 4 %
  and 7 %; scaling by ``smallest share / share`` instead over-estimates
  decode by 22 % (a decode step is bound by memory bandwidth, not SMs).

It is built once, in ``LatencyGrid.__init__``, on arrays indexed
``[u, batch, length]`` with ``u = 1 / share`` ascending, so that latency
grows along every axis:

1. **Lower spikes** (``lower_spikes``): a measured cell above a measured
   cell that cannot be faster (larger u, batch or length) is lowered to it.
   Timing noise is one-sided, a glitch makes a run slower, and the A100
   file has spikes of up to 8x (llama-30b on 4 GPUs, 100 % SMs, batch 64,
   length 64: 231 ms between 28 and 29 ms); a running maximum from below
   would spread each to every larger cell (it moved 1,105 of the file's
   4,704 measured decode cells by over 20 %; this way, 56, most of them
   the spikes, and 666 by over 5 %).
2. **Fill** (``fill_missing``): each missing cell, in order of growing
   batch index + length index (so its smaller neighbours are done first),
   is the nearest share's measurement of it, scaled by the mean ratio of the
   two shares at the cells below it (one smaller batch, one smaller
   length). Where no share measured it, it is the mean of one estimate
   along the batch axis and one along the length axis: linear interpolation
   between the nearest known cells on both sides, else linear extrapolation
   from the two below, else (only if neither axis has a line) a copy of the
   one below. A share that lacks the smallest-batch, smallest-length cell
   copies the nearest share's. The A100 file's holes (-1) are runs out of
   memory at large batch x length, past the measured cells; measured cells
   at that frontier, held out one at a time, are refilled with a median
   error of 2.2 % (prefill) and 2.1 % (decode), 90th percentile 8 and 9 %
   (from the batch and length lines alone: 8 and 6 % median).
3. **Clamp** (``make_monotone``): a running maximum along each axis in
   turn (each keeps the earlier axes monotone), for fills that came out
   below a neighbour.
4. **Extend** (``extend_far``): one more grid point per axis at ``FAR``
   times the last (share: ``1 / FAR`` of the smallest), on the line of the
   last segment with its slope made non-decreasing along the other axes.
   Between the last grid point and the far one, trilinear interpolation
   *is* the linear extrapolation above; beyond the far point (a batch or
   length 65,536 times the grid's, outside any plan) latency stays at the
   far value, so it stays monotone there too.

A query is then three bisections and eight reads of a flat list of floats.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import numpy as np

FAR = 65536.0  # the extension's grid point, in multiples of the last one: linear up to there


def fill_missing(
    batches: Sequence[float], lengths: Sequence[float], values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fill NaN cells of ``values[u, batch, length]``; return (filled copy, mask of filled cells).

    Axis 0 is ``1 / share``. A cell is filled from the nearest share that
    measured it, else from its batch and length neighbours, linear in the
    batch and length values; a share's smallest cell from the nearest share
    that measured it (see the module's docstring, step 2).
    """
    out = np.array(values, dtype=float)
    missing = np.isnan(out)
    measured_origin = [u for u in range(out.shape[0]) if not missing[u, 0, 0]]
    if not measured_origin:
        raise ValueError("no share has a measurement at the smallest batch and length: nothing to fill from")
    xb, xl = np.asarray(batches, dtype=float), np.asarray(lengths, dtype=float)
    for u in range(out.shape[0]):
        if missing[u, 0, 0]:
            out[u, 0, 0] = out[min(measured_origin, key=lambda m: abs(m - u)), 0, 0]
        cells = sorted(zip(*np.nonzero(np.isnan(out[u]))), key=lambda c: (c[0] + c[1], c[0]))
        for b, l in cells:  # smaller neighbours first: each cell's lower ones are known by its turn
            out[u, b, l] = _estimate(out, missing, u, b, l, xb, xl)
    return out, missing


def _estimate(out: np.ndarray, missing: np.ndarray, u: int, b: int, l: int, xb: np.ndarray, xl: np.ndarray) -> float:
    """The estimate of missing cell ``out[u, b, l]`` (see the module's docstring, step 2)."""
    for other in sorted(range(out.shape[0]), key=lambda o: (abs(o - u), o)):
        if other == u or missing[other, b, l]:
            continue
        below = [(bb, ll) for bb, ll in ((b - 1, l), (b, l - 1)) if bb >= 0 and ll >= 0 and not missing[other, bb, ll]]
        if below:
            return float(out[other, b, l] * np.mean([out[u, bb, ll] / out[other, bb, ll] for bb, ll in below]))
    estimates = [e for e in (_along(xb, out[u, :, l], b), _along(xl, out[u, b, :], l)) if e is not None]
    best = max(points for points, _ in estimates)  # a line through two cells beats a copy of one
    return float(np.mean([value for points, value in estimates if points == best]))


def _along(x: np.ndarray, line: np.ndarray, i: int) -> tuple[int, float] | None:
    """One axis's estimate of the missing ``line[i]`` at position ``x[i]``, and how many cells it rests on.

    Below ``i`` every cell is known by now; above it, a cell that is not NaN
    was measured. Interpolate between the nearest known cells on both sides,
    else extrapolate from the two below, else copy the one below.
    """
    above = [k for k in range(i + 1, len(line)) if not np.isnan(line[k])]
    if i >= 1 and above:
        lo, hi = i - 1, above[0]
        return 2, float(line[lo] + (line[hi] - line[lo]) * (x[i] - x[lo]) / (x[hi] - x[lo]))
    if i >= 2:
        return 2, float(line[i - 1] + (line[i - 1] - line[i - 2]) * (x[i] - x[i - 1]) / (x[i - 1] - x[i - 2]))
    if i == 1:
        return 1, float(line[0])
    return None


def lower_spikes(values: np.ndarray) -> np.ndarray:
    """Lower each measured cell to the least measured cell beyond it on any axis (NaN cells stay NaN).

    A running minimum from the far end of each axis of ``values[u, batch,
    length]`` in turn, NaN skipped: afterwards no measured cell exceeds a
    measured cell with a larger u (smaller share), batch or length.
    """
    out = np.array(values, dtype=float)
    missing = np.isnan(out)
    for axis in range(out.ndim):
        running = np.flip(np.fmin.accumulate(np.flip(out, axis=axis), axis=axis), axis=axis)
        out = np.where(missing, np.nan, running)
    return out


def make_monotone(values: np.ndarray) -> np.ndarray:
    """Running maximum along every axis: non-decreasing in u (= 1 / share), batch and length."""
    out = np.array(values, dtype=float)
    for axis in range(out.ndim):
        out = np.maximum.accumulate(out, axis=axis)
    return out


def extend_far(axes: Sequence[np.ndarray], values: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Append one grid point per axis at ``FAR`` × its last, continuing the last segment's line.

    Each axis's slope (last two points; zero for a one-point axis) is made
    non-decreasing along the other axes before use, so the extended grid
    stays monotone and so does every line continued from its last segment.
    """
    axes = [np.asarray(a, dtype=float) for a in axes]
    out = np.array(values, dtype=float)
    for axis in range(out.ndim):
        x = axes[axis]
        last = np.take(out, [-1], axis=axis)
        if len(x) > 1:
            slope = (last - np.take(out, [-2], axis=axis)) / (x[-1] - x[-2])
        else:
            slope = np.zeros_like(last)
        for other in range(out.ndim):
            if other != axis:
                slope = np.maximum.accumulate(slope, axis=other)
        far = x[-1] * FAR
        out = np.concatenate([out, last + (far - x[-1]) * slope], axis=axis)
        axes[axis] = np.append(x, far)
    return axes, out


class LatencyGrid:
    """Seconds of one job kind at any (share, batch, length): a measured grid, filled, clamped, extended.

    Invariant (built once in ``__init__``, see the module's docstring): the
    answer is positive and finite for every share > 0, batch and length,
    exact at every measured cell left as measured, non-decreasing in batch
    and length and non-increasing in share. ``seconds[share, batch,
    length]`` is the cleaned, filled, monotone grid on the measured axes;
    ``filled`` flags the cells that were not measured, ``adjusted`` the
    measured ones that steps 1 and 3 changed.
    """

    __slots__ = ("shares", "batches", "lengths", "seconds", "filled", "adjusted", "_u", "_b", "_l", "_v", "_sb", "_sl")

    def __init__(
        self, shares: Sequence[float], batches: Sequence[float], lengths: Sequence[float], seconds: np.ndarray
    ) -> None:
        """``seconds[share, batch, length]`` over strictly increasing axes; NaN marks a cell not measured."""
        self.shares, self.batches = _axis("share", shares), _axis("batch", batches)
        self.lengths = _axis("length", lengths)
        if self.shares[-1] > 1.0:
            raise ValueError(f"shares are fractions of a device, at most 1; got {self.shares[-1]}")
        raw = np.asarray(seconds, dtype=float)
        if raw.shape != (len(self.shares), len(self.batches), len(self.lengths)):
            raise ValueError(f"a grid of shape {raw.shape} does not match its axes "
                             f"({len(self.shares)} shares, {len(self.batches)} batches, {len(self.lengths)} lengths)")
        if np.any(raw[~np.isnan(raw)] <= 0):
            raise ValueError("latencies must be positive (NaN marks a cell not measured)")
        by_u = raw[::-1]  # share descending: u = 1 / share ascending, latency grows along every axis
        filled, missing = fill_missing(self.batches, self.lengths, lower_spikes(by_u))
        monotone = make_monotone(filled)
        self.seconds = monotone[::-1].copy()
        self.filled = missing[::-1].copy()
        self.adjusted = ~self.filled & (self.seconds != raw)
        u = [1.0 / s for s in reversed(self.shares)]
        axes, extended = extend_far([u, self.batches, self.lengths], monotone)
        self._u, self._b, self._l = (axis.tolist() for axis in axes)  # plain floats: the query reads no numpy
        self._v = extended.ravel().tolist()
        self._sl = len(self._l)  # flat strides of [u, batch, length]
        self._sb = len(self._b) * self._sl

    def __call__(self, share: float, batch: float, length: float) -> float:
        """Seconds of a job of ``batch`` sequences of ``length`` tokens with ``share`` of the device."""
        if not share > 0.0:
            raise ValueError(f"a job's share of the device must be positive, got {share}")
        i, ti = _locate(self._u, 1.0 / share)
        j, tj = _locate(self._b, batch)
        k, tk = _locate(self._l, length)
        v, sb, sl = self._v, self._sb, self._sl
        p = i * sb + j * sl + k  # corner [i, j, k]; the cell's other corners are +1 along each axis
        q = p + sb
        a = v[p] + (v[p + 1] - v[p]) * tk
        b = v[p + sl] + (v[p + sl + 1] - v[p + sl]) * tk
        c = v[q] + (v[q + 1] - v[q]) * tk
        d = v[q + sl] + (v[q + sl + 1] - v[q + sl]) * tk
        ab = a + (b - a) * tj
        return ab + (c + (d - c) * tj - ab) * ti


def _locate(xs: list[float], x: float) -> tuple[int, float]:
    """The cell ``i`` of ``xs`` that holds ``x`` and the weight of its upper end, clamped to the axis."""
    if x <= xs[0]:
        return 0, 0.0
    if x >= xs[-1]:
        return len(xs) - 2, 1.0
    i = bisect_right(xs, x) - 1
    return i, (x - xs[i]) / (xs[i + 1] - xs[i])


def _axis(name: str, values: Sequence[float]) -> list[float]:
    """A grid axis: non-empty, positive, strictly increasing."""
    axis = [float(v) for v in values]
    if not axis or axis[0] <= 0 or any(b <= a for a, b in zip(axis, axis[1:])):
        raise ValueError(f"the {name} axis must be positive and strictly increasing, got {list(values)}")
    return axis
