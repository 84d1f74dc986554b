"""The devices' cards of the stats document, read once per tick.

A unit on a GPU gets its GPU's NVML readings (``muxd.nvml``) and the GPU
memory of its process; a unit on the CPU (or on a GPU NVML cannot read)
gets the host's CPU card from psutil: per-core utilization, RAM, and each
unit process's RSS and CPU share. Utilizations are rates of cumulative CPU
seconds over the last ``CPU_SPAN_S`` (a ``RateWindow``), so a reader at any
rate sees the same figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from muxd.nvml import GpuReading, Nvml
from muxd.protocol import CpuStats, DeviceStats, ProcessStats
from muxd.server.telemetry import RateWindow

log = logging.getLogger("muxd.server")

CPU_SPAN_S = 2.0


@dataclass(frozen=True)
class UnitView:
    """What the device cards need of a unit."""

    name: str
    device: str  # "cpu", "cuda", "cuda:1"
    pid: int | None
    busy: float | None  # its busy share over the rate window


class Devices:
    def __init__(self, nvml: Nvml | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.nvml = nvml or Nvml()  # initialised on the first tick with a unit on a GPU
        self.cpu_window = RateWindow(CPU_SPAN_S, clock)
        self.energy_window = RateWindow(clock=clock)
        self.cpu_model = _cpu_model()
        self._procs: dict[int, psutil.Process] = {}

    def read(self, units: list[UnitView]) -> tuple[dict[str, DeviceStats], dict[int, float]]:
        """The cards keyed by device (``"cpu"``, ``"cuda:0"``; ``"<device> (<unit>)"`` when two
        units share one), and each GPU's power averaged over the rate window from its energy."""
        on_gpu = any(u.device.startswith("cuda") for u in units)
        gpus = self.nvml.snapshot(u.pid for u in units if u.pid) if on_gpu else []
        watts = self.energy_window.read({str(g.stats.index): g.stats.energy_j for g in gpus if g.stats.energy_j is not None})
        cpu = self._cpu_card(units) if any(_gpu_of(u, gpus) is None for u in units) else None
        cards: dict[str, DeviceStats] = {}
        for u in units:
            key = u.device if u.device not in cards else f"{u.device} ({u.name})"
            reading = _gpu_of(u, gpus)
            if reading is None:
                rss = next((p.rss_bytes for p in cpu.processes if p.pid == u.pid), None) if cpu else None
                cards[key] = DeviceStats(unit=u.name, kind="cpu", utilization=u.busy, memory_used_bytes=rss,
                                         memory_total_bytes=cpu.memory_total_bytes if cpu else None, cpu=cpu)  # fmt: skip
            else:
                used = reading.process_memory_bytes.get(u.pid) if u.pid is not None else None
                cards[key] = DeviceStats(unit=u.name, kind="gpu", utilization=u.busy, memory_used_bytes=used,
                                         memory_total_bytes=reading.stats.memory_total_bytes, gpu=reading.stats)  # fmt: skip
        return cards, {int(k): v for k, v in watts.items()}

    def _cpu_card(self, units: list[UnitView]) -> CpuStats:
        counters: dict[str, float] = {}
        try:
            for i, t in enumerate(psutil.cpu_times(percpu=True)):
                counters[f"core{i}"] = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
            memory = psutil.virtual_memory()
            used, total = memory.total - memory.available, memory.total
        except (OSError, psutil.Error) as e:
            log.debug("psutil cannot read the CPU: %s", e)
            used = total = None
        processes = []
        for u in units:
            proc = self._process(u.pid)
            if proc is None:
                continue
            try:
                with proc.oneshot():
                    times, rss = proc.cpu_times(), proc.memory_info().rss
            except psutil.Error:
                self._procs.pop(proc.pid, None)
                continue
            counters[f"pid{proc.pid}"] = times.user + times.system
            processes.append(ProcessStats(pid=proc.pid, unit=u.name, rss_bytes=rss))
        rates = self.cpu_window.read(counters, start=None)
        cores = [round(100 * min(1.0, rates.get(f"core{i}", 0.0)), 1) for i in range(sum(k.startswith("core") for k in counters))]
        for p in processes:
            share = rates.get(f"pid{p.pid}")
            p.cpu_pct = None if share is None else round(100 * share, 1)
        return CpuStats(model=self.cpu_model, cores_pct=cores, memory_used_bytes=used, memory_total_bytes=total,
                        processes=processes)  # fmt: skip

    def _process(self, pid: int | None) -> psutil.Process | None:
        if pid is None:
            return None
        proc = self._procs.get(pid)
        if proc is None:
            try:
                proc = self._procs[pid] = psutil.Process(pid)
            except psutil.Error:
                return None
        return proc


def _gpu_of(unit: UnitView, gpus: list[GpuReading]) -> GpuReading | None:
    if not unit.device.startswith("cuda"):
        return None
    index = int(unit.device.partition(":")[2] or 0)
    return next((g for g in gpus if g.stats.index == index), None)


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return None
