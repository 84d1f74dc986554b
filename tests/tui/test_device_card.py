"""The device cards' lines: whatever NVML or psutil cannot say, and however many cores, at any width."""

from __future__ import annotations

import pytest

from muxd.protocol import CpuStats, GpuStats
from tui.device_card import MAX_CORE_LINES, core_lines, cpu_lines, gpu_lines


@pytest.mark.parametrize("width", [20, 60, 200])
def test_a_gpu_nvml_cannot_read_shows_dashes(width):
    lines = [line.plain for line in gpu_lines(GpuStats(index=3), width)]
    assert lines[0] == "GPU 3" and "power - " in lines[3] and "- / - MHz" in lines[4]
    assert all(len(line) <= max(width, 40) for line in lines)


def test_no_cpu_readings_say_so():
    assert "no readings" in cpu_lines(None, 40)[0].plain
    assert len(cpu_lines(CpuStats(), 40)) == 2  # the model's line and RAM, no cores


def test_a_bar_per_core_in_as_many_columns_as_fit():
    lines = core_lines([10.0, 50.0, 90.0, 100.0], 64)
    assert len(lines) == 1 and all(len(line) <= 64 for line in lines)
    assert len(core_lines([10.0] * 4, 20)) == 4


def test_many_cores_fold_into_one_character_each():
    lines = core_lines([float(i % 100) for i in range(192)], 60)
    assert len(lines) <= MAX_CORE_LINES
    assert len(lines) == 1 and lines[0].plain.count("▁") >= 1 and len(lines[0].plain) == 6 + 192
