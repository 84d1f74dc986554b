"""Where a measurement was made: who, on what, when, and how quiet the machine was.

``provenance`` names the device (the CPU's model and instruction set, or the
GPU and its driver), torch, muxd and the commit muxd runs from, for a
profile's JSON. ``OtherCpu`` measures how many cores other processes kept
busy over an interval, so a measurement taken on a busy VM can be repeated
or marked contended.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import muxd
from muxd.engine import cpu_isa
from muxd.nvml import Nvml
from muxd.placement.cost_model import Provenance


def provenance(device: torch.device, **extra: object) -> Provenance:
    """Who measured, on what, when: the device's model, its driver (GPU), torch, muxd and its commit."""
    if device.type == "cpu":
        name, driver = cpu_isa.cpu_model(), None
        extra = {"cpu_isa": cpu_isa.selected().name, "cpu_flags": cpu_isa.describe()["flags"], **extra}
    else:
        name, driver = torch.cuda.get_device_name(device), _nvidia_driver()
        extra = {"cuda": torch.version.cuda, **extra}
    commit, dirty = _git_commit()
    return Provenance(
        device=name, driver=driver, torch=torch.__version__, muxd_version=muxd.__version__,
        date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), commit=commit,
        **({"dirty": dirty} if commit else {}), **extra,
    )  # fmt: skip




class OtherCpu:
    """How many cores other processes kept busy since it was made: the machine's busy time
    (``/proc/stat``) less this process's (``getrusage``), over the wall time. Intervals under
    ``MIN_WINDOW_S`` read 0 (``/proc/stat`` counts in 10 ms ticks); 0 where ``/proc/stat`` is missing."""

    MIN_WINDOW_S = 0.25

    def __init__(self) -> None:
        self._start = self._read()

    def cores(self) -> float:
        end = self._read()
        if self._start is None or end is None or end[2] - self._start[2] < self.MIN_WINDOW_S:
            return 0.0
        busy, own, wall = (e - s for e, s in zip(end, self._start))
        return max(0.0, (busy - own) / wall)

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        own = resource.getrusage(resource.RUSAGE_SELF)
        return busy, own.ru_utime + own.ru_stime, time.perf_counter()


def _git_commit() -> tuple[str | None, bool]:
    """(short commit, whether muxd's files differ from it) of the checkout muxd runs from; (None, False) if none."""
    root = Path(muxd.__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root:
        return None, False
    return git("rev-parse", "--short", "HEAD"), bool(git("status", "--porcelain", "--", "muxd"))


def _nvidia_driver() -> str | None:
    nvml = Nvml()
    try:
        return nvml.driver_version()
    finally:
        nvml.close()
