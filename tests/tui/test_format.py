"""The formatting helpers: every figure of the dashboard goes through them."""

from __future__ import annotations

import pytest

from tui.format import (
    DECODE_STYLE, EMPTY_STYLE, PREFILL_STYLE, bar, fmt_bytes, fmt_ms, fmt_of, fmt_pct, fmt_rate, fmt_seconds, fmt_si,
    share_bar, slo_style, sparkline,
)  # fmt: skip


@pytest.mark.parametrize(("n", "text"), [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                         (3 * 2**30, "3 GiB"), (150 * 2**20, "150 MiB"), (2**50, "1024 TiB")])  # fmt: skip
def test_bytes_in_binary_units(n, text):
    assert fmt_bytes(n) == text


@pytest.mark.parametrize(("ms", "text"), [(None, "-"), (0.42, "0.42 ms"), (4.25, "4.2 ms"), (38.4, "38 ms"),
                                          (999.4, "999 ms"), (1000.3, "1.00 s"), (1250, "1.25 s"),
                                          (12_540, "12.5 s"), (185_000, "3m05s")])  # fmt: skip
def test_milliseconds_as_people_read_them(ms, text):
    assert fmt_ms(ms) == text


def test_percent_of_a_fraction():
    assert (fmt_pct(0.456), fmt_pct(0.9951, 1), fmt_pct(None)) == ("46%", "99.5%", "-")


@pytest.mark.parametrize(("rate", "text"), [(0, "0"), (0.25, "0.25"), (12.34, "12.3"), (431.2, "431"),
                                            (1234, "1.2k"), (56_000, "56k"), (None, "-")])  # fmt: skip
def test_rates_fit_a_narrow_column(rate, text):
    assert fmt_rate(rate) == text


@pytest.mark.parametrize(("s", "text"), [(0.43, "0.4 s"), (12.2, "12 s"), (185, "3m05s"), (7380, "2h03m"),
                                         (2 * 86400 + 3600, "2d01h"), (None, "-")])  # fmt: skip
def test_durations(s, text):
    assert fmt_seconds(s) == text


def test_si_prefixes_and_used_of_total():
    assert fmt_si(1_234_567, "J") == "1.23 MJ" and fmt_si(312.4, "W") == "312 W" and fmt_si(None, "W") == "-"
    assert fmt_of(2**30, 8 * 2**30) == "1 GiB / 8 GiB" and fmt_of(2**30, None) == "1 GiB"


def test_slo_colour_against_its_goal():
    assert slo_style(0.995, 0.99) == "green"
    assert slo_style(0.99, 0.99) == "green"
    assert slo_style(0.96, 0.99) == "yellow"
    assert slo_style(0.90, 0.99) == "red"
    assert slo_style(None, 0.99) == "dim"


def test_a_bar_fills_in_eighths_and_keeps_its_width():
    assert bar(0.5, 10).plain == "█████·····"
    assert bar(1 / 16, 2).plain == "▏·"
    assert bar(1.7, 4).plain == "████" and bar(None, 3).plain == "···" and bar(0.5, 0).plain == ""


def test_the_share_bar_puts_prefill_before_decode():
    text = share_bar(0.2, 0.3, 10)
    assert text.plain == "█████·····"
    styles = [(span.start, span.end, span.style) for span in text.spans]
    assert styles == [(0, 2, PREFILL_STYLE), (2, 5, DECODE_STYLE), (5, 10, EMPTY_STYLE)]


def test_the_share_bar_never_overflows():
    assert share_bar(0.9, 0.9, 8).plain == "████████"


def test_a_sparkline_scales_from_low_to_high():
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8).plain == "▁▂▃▄▅▆▇█"
    assert sparkline([0.5, 1.0], 2, low=0.0, high=1.0).plain == "▅█"


def test_a_sparkline_right_aligns_short_series_and_blanks_unknowns():
    assert sparkline([1.0, None, 1.0], 5, high=1.0).plain == "  █ █"


def test_a_long_series_is_averaged_into_the_width():
    assert sparkline([0, 0, 8, 8], 2, high=8).plain == "▁█"
    assert len(sparkline(list(range(150)), 37)) == 37


def test_a_flat_or_empty_sparkline_does_not_divide_by_zero():
    assert sparkline([0, 0], 2).plain == "▁▁" and sparkline([], 3).plain == "   " and sparkline([1], 0).plain == ""
