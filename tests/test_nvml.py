"""The NVML wrapper: readings from a fake ``pynvml``, N/A for a field that raises, no GPU means no readings and no error."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from muxd.nvml import Nvml
from muxd.protocol import GpuStats


class FakeNvml:
    """The part of ``pynvml`` the wrapper calls, for two GPUs; ``failing``
    names functions that raise NVMLError (a field a GPU does not support)."""

    NVML_TEMPERATURE_GPU, NVML_CLOCK_SM, NVML_CLOCK_MEM = 0, 1, 2

    class NVMLError(Exception):
        pass

    def __init__(self, failing: tuple[str, ...] = (), init_error: Exception | None = None) -> None:
        self.failing, self.init_error, self.calls, self.shut_down = failing, init_error, 0, False

    def _fail(self, name: str) -> None:
        self.calls += 1
        if name in self.failing:
            raise self.NVMLError(f"{name}: Not Supported")

    def nvmlInit(self):
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self):
        self.shut_down = True

    def nvmlSystemGetDriverVersion(self):
        self._fail("driver")
        return b"580.159.04"

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"gpu{i}"

    def nvmlDeviceGetName(self, h):
        self._fail("name")
        return b"NVIDIA H100 80GB HBM3" if h == "gpu0" else "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h}"

    def nvmlDeviceGetUtilizationRates(self, h):
        self._fail("utilization")
        return SimpleNamespace(gpu=87, memory=41)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=30 << 30, total=80 << 30)

    def nvmlDeviceGetPowerUsage(self, h):
        self._fail("power")
        return 412_500  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        return 9_000_000  # mJ

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 61

    def nvmlDeviceGetClockInfo(self, h, clock):
        return {self.NVML_CLOCK_SM: 1980, self.NVML_CLOCK_MEM: 2619}[clock]

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=101, usedGpuMemory=5 << 30), SimpleNamespace(pid=999, usedGpuMemory=1 << 30)]


def test_a_snapshot_reads_every_gpu_in_si_units() -> None:
    (first, second) = Nvml(FakeNvml()).snapshot(pids=[101])
    assert first.stats == GpuStats(
        index=0, name="NVIDIA H100 80GB HBM3", uuid="GPU-gpu0", utilization_pct=87.0, memory_utilization_pct=41.0,
        memory_used_bytes=30 << 30, memory_total_bytes=80 << 30, power_w=412.5, energy_j=9000.0, temperature_c=61.0,
        sm_clock_mhz=1980, memory_clock_mhz=2619,
    )  # fmt: skip
    assert first.process_memory_bytes == {101: 5 << 30}  # only the pids asked about
    assert second.stats.index == 1 and second.stats.name == "NVIDIA H100 80GB HBM3"  # str or bytes, as drivers differ


def test_a_field_the_gpu_does_not_support_is_none_and_the_rest_is_read() -> None:
    reading = Nvml(FakeNvml(failing=("power", "utilization"))).snapshot()[0].stats
    assert reading.power_w is None and reading.utilization_pct is None and reading.memory_utilization_pct is None
    assert reading.memory_used_bytes == 30 << 30 and reading.temperature_c == 61.0


def test_a_failed_init_means_no_readings_and_a_reason_not_an_exception() -> None:
    fake = FakeNvml(init_error=FakeNvml.NVMLError("NVML Shared Library Not Found"))
    nvml = Nvml(fake)
    assert not nvml.available and nvml.snapshot() == [] and nvml.snapshot() == []
    assert "NVML Shared Library Not Found" in nvml.error and fake.calls == 0


def test_the_driver_version_or_none_where_nvml_cannot_say() -> None:
    assert Nvml(FakeNvml()).driver_version() == "580.159.04"
    assert Nvml(FakeNvml(failing=("driver",))).driver_version() is None
    assert Nvml(FakeNvml(init_error=FakeNvml.NVMLError("no driver"))).driver_version() is None


def test_init_happens_once_and_close_shuts_nvml_down() -> None:
    fake = FakeNvml()
    nvml = Nvml(fake)
    nvml.snapshot(), nvml.snapshot()
    nvml.close()
    assert fake.shut_down


def test_the_real_library_on_this_machine_gives_readings_or_a_reason() -> None:
    nvml = Nvml()
    readings = nvml.snapshot()
    if nvml.available:
        assert all(r.stats.memory_total_bytes is None or r.stats.memory_total_bytes > 0 for r in readings)
    else:
        assert readings == [] and nvml.error.startswith("NVML unavailable")
    nvml.close()


@pytest.mark.parametrize("module", ["torch", "transformers"])
def test_the_wrapper_loads_no_torch(module) -> None:
    from tests.test_cli_imports import loaded_modules_after

    assert module not in loaded_modules_after("import muxd.nvml; muxd.nvml.Nvml().snapshot()")
