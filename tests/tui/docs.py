"""Stats and Event documents for the dashboard's tests, built from the protocol models.

``cpu_run`` and ``gpu_run`` give a few minutes of a daemon's stream (one
document every 2.5 s of its clock) with figures that move, so that the
sparklines have a history; both are deterministic.
"""

from __future__ import annotations

import math

from muxd.protocol import (
    ComputeShare, CpuStats, DeviceStats, Event, GpuStats, Latency, ModelStats, ModelStatus, Percentiles,
    ProcessStats, Slo, Stats, Status, UnitStats, UnitStatus,
)  # fmt: skip

T0 = 1_760_000_000.0  # the recorded daemon's clock at its first document (unix seconds)
STEP_S = 2.5
SOCKET = "/run/user/1000/muxd/muxd.sock"
MODELS = {  # name: (rate, generated tokens/s at peak, SLO TTFT target or None)
    "smollm2": (4.0, 180.0, 250.0),
    "tiny-llama": (1.0, 420.0, 100.0),
    "tiny-qwen3": (0.25, 60.0, None),
}


def wave(i: int, period: int, phase: float = 0.0) -> float:
    """0..1, smooth, ``period`` documents long."""
    return 0.5 + 0.5 * math.sin(2 * math.pi * i / period + phase)


def model_stats(name: str, unit: str, i: int) -> ModelStats:
    rate, peak, ttft_target = MODELS[name]
    load = wave(i, 40, phase=len(name))
    out = peak * (0.2 + 0.8 * load)
    ttft_p99 = 40 + 220 * load
    slo = Slo(goal=0.99)
    if ttft_target is not None:
        attainment = min(1.0, 1.02 - 0.08 * load * (ttft_target < 200))
        slo = Slo(ttft_ms=ttft_target, tpot_ms=50.0, goal=0.99, attainment=attainment, judged=40 + i,
                  attainment_total=0.985, judged_total=900 + 20 * i)  # fmt: skip
    window = Latency(requests=30 + i % 7, ttft_ms=Percentiles(p50=ttft_p99 / 3, p99=ttft_p99),
                     tpot_ms=Percentiles(p50=4.8 + load, p99=9.5 + 3 * load),
                     e2e_ms=Percentiles(p50=310.0 + 90 * load, p99=720.0 + 200 * load))  # fmt: skip
    total = Latency(requests=900 + 20 * i, ttft_ms=Percentiles(p50=61.0, p99=244.0), tpot_ms=Percentiles(p50=5.1, p99=11.8),
                    e2e_ms=Percentiles(p50=402.0, p99=951.0))  # fmt: skip
    queued = round(6 * load) if name == "smollm2" else 0
    return ModelStats(
        unit=unit, rate=rate, running=round(8 * load), queued=queued, queue_age_s=0.8 * queued if queued else None,
        in_flight=round(8 * load) + queued, done=900 + 20 * i, errors=2, rejected=1 if name == "smollm2" else 0,
        prompt_tokens=120_000 + 900 * i, generated_tokens=60_000 + 400 * i, tokens_in_per_s=2.1 * out,
        tokens_out_per_s=out, share=ComputeShare(prefill=0.25 * load, decode=0.12 + 0.2 * load),
        pages_held=round(40 * load) + 4, pages_quota=96, pages_cached=3, prefix_hit_tokens=5_000, prefix_query_tokens=20_000,
        latency=window, latency_total=total, slo=slo,
    )  # fmt: skip


def cpu_device(unit: str, i: int, pid: int) -> DeviceStats:
    busy = 0.3 + 0.6 * wave(i, 40)
    cpu = CpuStats(model="AMD EPYC 9R14 96-Core Processor", cores_pct=[round(100 * busy, 1), round(70 * busy, 1)],
                   memory_used_bytes=3_400_000_000, memory_total_bytes=8_200_000_000,
                   processes=[ProcessStats(pid=pid, unit=unit, rss_bytes=1_300_000_000, cpu_pct=round(170 * busy, 1))])  # fmt: skip
    return DeviceStats(unit=unit, kind="cpu", utilization=busy, memory_used_bytes=1_300_000_000,
                       memory_total_bytes=8_200_000_000, cpu=cpu)  # fmt: skip


def gpu_device(unit: str, i: int, index: int) -> DeviceStats:
    busy = 0.3 + 0.6 * wave(i, 40, phase=index)
    gpu = GpuStats(index=index, name="NVIDIA H100 80GB HBM3", uuid=f"GPU-0000{index}", utilization_pct=round(100 * busy),
                   memory_utilization_pct=round(60 * busy), memory_used_bytes=41_000_000_000 + 10**9 * index,
                   memory_total_bytes=85_520_809_984, power_w=round(120 + 450 * busy, 1), energy_j=8.1e6 + 900 * i,
                   temperature_c=41 + round(12 * busy), sm_clock_mhz=1980, memory_clock_mhz=2619)  # fmt: skip
    return DeviceStats(unit=unit, kind="gpu", utilization=busy, memory_used_bytes=38_000_000_000,
                       memory_total_bytes=85_520_809_984, gpu=gpu, tokens_per_joule=round(1.2 + busy, 2))  # fmt: skip


def stats_at(i: int, gpu: bool = False) -> Stats:
    if gpu:
        placement = {"smollm2": "cuda0", "tiny-llama": "cuda1", "tiny-qwen3": "cuda1"}
        devices = {"cuda:0": gpu_device("cuda0", i, 0), "cuda:1": gpu_device("cuda1", i, 1)}
    else:
        placement = dict.fromkeys(MODELS, "cpu0")
        devices = {"cpu": cpu_device("cpu0", i, 4242)}
    models = {name: model_stats(name, placement[name], i) for name in MODELS}
    units = {}
    for unit in sorted(set(placement.values())):
        mine = [m for m in models.values() if m.unit == unit]
        units[unit] = UnitStats(state="ready", device="cuda" if gpu else "cpu", pid=4242, models=[n for n in models if models[n].unit == unit],
                                pages_total=512, pages_free=300, steps=10_000 + 40 * i, preemptions=3,
                                busy=sum(m.share.total for m in mine))  # fmt: skip
    return Stats(time=T0 + STEP_S * i, uptime_s=600 + STEP_S * i, last_event_id=len(EVENTS), models=models,
                 units=units, devices=devices)  # fmt: skip


def run(n: int = 120, gpu: bool = False) -> list[Stats]:
    return [stats_at(i, gpu) for i in range(n)]


EVENTS = [
    Event(id=1, time=T0 - 600, kind="unit_starting", unit="cpu0", message="starting on cpu (pid 4242)"),
    Event(id=2, time=T0 - 590, kind="model_loaded", unit="cpu0", model="smollm2", message="loaded in 3.1 s, plan q8/avx512-vnni"),
    Event(id=3, time=T0 - 589, kind="model_loaded", unit="cpu0", model="tiny-llama", message="loaded in 0.2 s, plan fp32"),
    Event(id=4, time=T0 - 588, kind="model_loaded", unit="cpu0", model="tiny-qwen3", message="loaded in 0.2 s, plan fp32"),
    Event(id=5, time=T0 - 587, kind="unit_ready", unit="cpu0", message="ready: 3 models, 512 pages"),
    Event(id=6, time=T0 - 120, kind="preemption", unit="cpu0", model="tiny-llama", message="preempted 1 request (pages)"),
    Event(id=7, time=T0 - 60, kind="quota_move", unit="cpu0", model="smollm2", message="quota 64 -> 96 pages"),
]  # fmt: skip


def events(gpu: bool = False) -> list[Event]:
    """``EVENTS``, of a GPU daemon's unit ``cuda0`` where ``gpu``."""
    if not gpu:
        return list(EVENTS)
    return [e.model_copy(update={"unit": "cuda0", "message": e.message.replace("on cpu", "on cuda:0")}) for e in EVENTS]


def status(gpu: bool = False) -> Status:
    device = "cuda" if gpu else "cpu"
    plans = {"smollm2": "q8/avx512-vnni", "tiny-llama": "fp32", "tiny-qwen3": "fp32"} if not gpu else dict.fromkeys(MODELS, "bf16")
    last = stats_at(0, gpu)
    models = [ModelStatus(name=n, unit=m.unit, state="ready", path=f"/models/{n}", dtype="bfloat16" if gpu else "float32",
                          device=device, max_model_len=2048, weight_bytes=143_000_000, rate=m.rate, plan=plans[n])
              for n, m in last.models.items()]  # fmt: skip
    units = [UnitStatus(name=u, device=device, state="ready", pid=4242, policy="adbs", models=s.models)
             for u, s in last.units.items()]  # fmt: skip
    return Status(version="0.1.0", pid=4242, socket=SOCKET, uptime_s=600.0, placement="muxserve", policy="adbs",
                  units=units, models=models)  # fmt: skip
