"""The devices' cards: a GPU unit gets its GPU's NVML readings, a CPU unit (or a GPU NVML cannot read) the CPU card."""

from __future__ import annotations

import os
from types import SimpleNamespace

from muxd.nvml import Nvml
from muxd.server.devices import Devices, UnitView
from tests.test_nvml import FakeNvml


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_gpu_units_card_carries_its_gpus_readings_and_its_own_gpu_memory() -> None:
    pid = os.getpid()
    fake = FakeNvml()
    fake.nvmlDeviceGetComputeRunningProcesses = lambda h: [SimpleNamespace(pid=pid, usedGpuMemory=7 << 30)]
    cards, _ = Devices(Nvml(fake)).read([UnitView("gpu1", "cuda:1", pid, 0.5)])
    card = cards["cuda:1"]
    assert card.kind == "gpu" and card.utilization == 0.5 and card.cpu is None
    assert card.memory_used_bytes == 7 << 30 and card.memory_total_bytes == 80 << 30
    assert card.gpu.index == 1 and card.gpu.utilization_pct == 87.0 and card.gpu.power_w == 412.5


def test_power_comes_from_the_energy_counter_over_the_window() -> None:
    clock, fake = Clock(), FakeNvml()
    energy = {"j": 9000.0}
    fake.nvmlDeviceGetTotalEnergyConsumption = lambda h: energy["j"] * 1e3  # millijoules
    devices = Devices(Nvml(fake), clock=clock)
    devices.read([UnitView("gpu0", "cuda:0", None, None)])
    clock.now, energy["j"] = 102.0, 9600.0
    _, watts = devices.read([UnitView("gpu0", "cuda:0", None, None)])
    assert watts[0] == 300.0


def test_without_nvml_a_gpu_unit_gets_the_cpu_card_with_its_process() -> None:
    fake = FakeNvml(init_error=FakeNvml.NVMLError("NVML Shared Library Not Found"))
    cards, watts = Devices(Nvml(fake)).read([UnitView("gpu0", "cuda:0", os.getpid(), None)])
    card = cards["cuda:0"]
    assert card.kind == "cpu" and card.gpu is None and watts == {}
    assert card.memory_used_bytes > 0 and card.cpu.processes[0].unit == "gpu0"


def test_the_cpu_card_has_every_core_the_ram_and_the_unit_processes_cpu_share() -> None:
    clock = Clock()
    devices = Devices(Nvml(FakeNvml()), clock=clock)
    view = [UnitView("cpu0", "cpu", os.getpid(), 0.25)]
    devices.read(view)
    sum(i * i for i in range(300_000))  # some CPU time of this process
    clock.now += 1.0
    cards, _ = devices.read(view)
    card = cards["cpu"]
    assert card.kind == "cpu" and card.utilization == 0.25
    assert len(card.cpu.cores_pct) == os.cpu_count() and all(0 <= c <= 100 for c in card.cpu.cores_pct)
    assert 0 < card.cpu.memory_used_bytes < card.cpu.memory_total_bytes == card.memory_total_bytes
    (proc,) = card.cpu.processes
    assert proc.pid == os.getpid() and proc.rss_bytes > 0 and proc.cpu_pct > 0


def test_two_units_on_one_device_get_a_card_each() -> None:
    cards, _ = Devices(Nvml(FakeNvml())).read([UnitView("a", "cpu", None, None), UnitView("b", "cpu", None, None)])
    assert set(cards) == {"cpu", "cpu (b)"} and cards["cpu (b)"].unit == "b"
