"""NVIDIA's management library (NVML) through one wrapper, as nvitop's ``libnvml`` does.

NVML is initialised on first use, once; where it cannot be (no driver, no
GPU, no library) the wrapper says why and every snapshot is empty, never an
exception. Each reading is one NVML call, and a call that raises
``NVMLError`` (a field this GPU or driver does not support) leaves that one
field None ("N/A") and the rest of the snapshot intact. A dashboard or the
daemon takes one ``snapshot()`` per tick, whoever reads it.

The package is ``nvidia-ml-py`` (imported as ``pynvml``), not the
deprecated ``pynvml`` distribution. No torch here: the front end imports it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from muxd.protocol import GpuStats


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one instant: its figures (``protocol.GpuStats``, None where
    NVML could not say) and the GPU memory of the processes asked about."""

    stats: GpuStats
    process_memory_bytes: dict[int, int] = field(default_factory=dict)  # pid -> bytes


class Nvml:
    """One NVML session for the process. ``module`` is ``pynvml`` (a fake in tests)."""

    def __init__(self, module: ModuleType | Any | None = None) -> None:
        self._module = module
        self._lock = threading.Lock()
        self._ready: bool | None = None  # None: not tried yet
        self.error: str | None = None  # why NVML is unavailable

    @property
    def available(self) -> bool:
        return self._init()

    def snapshot(self, pids: Iterable[int] = ()) -> list[GpuReading]:
        """Every GPU's readings now, with the GPU memory of ``pids`` (muxd's
        unit processes) where they use any; [] where NVML is unavailable."""
        if not self._init():
            return []
        nv, wanted = self._module, set(pids)
        count = self._call(nv.nvmlDeviceGetCount) or 0
        readings = []
        for index in range(count):
            handle = self._call(nv.nvmlDeviceGetHandleByIndex, index)
            readings.append(GpuReading(GpuStats(index=index)) if handle is None else self._read(index, handle, wanted))
        return readings

    def memory(self, index: int) -> tuple[int | None, int | None]:
        """(total, free) bytes of GPU ``index``'s memory; (None, None) where NVML cannot say."""
        if not self._init():
            return None, None
        handle = self._call(self._module.nvmlDeviceGetHandleByIndex, index)
        info = None if handle is None else self._call(self._module.nvmlDeviceGetMemoryInfo, handle)
        return (None, None) if info is None else (int(info.total), int(info.free))

    def driver_version(self) -> str | None:
        """The NVIDIA driver's version; None where NVML cannot say."""
        if not self._init():
            return None
        return _text(self._call(self._module.nvmlSystemGetDriverVersion))

    def close(self) -> None:
        with self._lock:
            if self._ready:
                self._call(self._module.nvmlShutdown)
            self._ready = None

    def _init(self) -> bool:
        with self._lock:
            if self._ready is None:
                try:
                    if self._module is None:
                        import pynvml

                        self._module = pynvml
                    self._module.nvmlInit()
                    self._ready = True
                except Exception as e:  # NVMLError (no driver, no GPU) or no library at all
                    self._ready, self.error = False, f"NVML unavailable: {e}"
            return self._ready

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or None where NVML raises (the field is N/A)."""
        try:
            return fn(*args)
        except self._module.NVMLError:
            return None

    def _read(self, index: int, handle: Any, pids: set[int]) -> GpuReading:
        nv, call = self._module, self._call
        rates, memory = call(nv.nvmlDeviceGetUtilizationRates, handle), call(nv.nvmlDeviceGetMemoryInfo, handle)
        power_mw, energy_mj = call(nv.nvmlDeviceGetPowerUsage, handle), call(nv.nvmlDeviceGetTotalEnergyConsumption, handle)
        processes = call(nv.nvmlDeviceGetComputeRunningProcesses, handle) or []
        stats = GpuStats(
            index=index,
            name=_text(call(nv.nvmlDeviceGetName, handle)),
            uuid=_text(call(nv.nvmlDeviceGetUUID, handle)),
            utilization_pct=None if rates is None else float(rates.gpu),
            memory_utilization_pct=None if rates is None else float(rates.memory),
            memory_used_bytes=None if memory is None else int(memory.used),
            memory_total_bytes=None if memory is None else int(memory.total),
            power_w=None if power_mw is None else power_mw / 1e3,
            energy_j=None if energy_mj is None else energy_mj / 1e3,
            temperature_c=_number(call(nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU)),
            sm_clock_mhz=call(nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_SM),
            memory_clock_mhz=call(nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_MEM),
        )
        used = {p.pid: int(p.usedGpuMemory) for p in processes if p.pid in pids and p.usedGpuMemory is not None}
        return GpuReading(stats, used)


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
