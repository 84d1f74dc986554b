"""muxd's own endpoints: health, status (units, models, compute shares), stats and events."""

from __future__ import annotations

from typing import Literal

from muxd.protocol.base import Response as _Response


class Health(_Response):
    status: str  # "ok", "starting", "degraded" or "stopping"
    units: dict[str, str] = {}
    restarts: dict[str, int] = {}


class PoolStatus(_Response):
    pages_total: int
    pages_free: int | None = None
    page_tokens: int
    bytes: int


class ComputeShares(_Response):
    """How a unit's compute slots become shares: CPU ``threads``, or on a GPU ``green-contexts`` (each slot
    a disjoint SM group; a job runs on its slots' SMs) or ``streams`` (plain streams, every job on every SM)."""

    kind: str  # threads, green-contexts or streams
    slots: int
    sms_total: int | None = None  # the GPU's SMs
    sms_by_slot: list[int] | None = None  # green contexts: each slot's SMs
    disjoint: bool = False  # green contexts: no SM dealt to two slots (fewer groups than slots: neighbours share)
    note: str | None = None  # streams: why not green contexts


class UnitStatus(_Response):
    name: str
    device: str
    state: str  # starting, ready, restarting, failed, stopping, stopped
    pid: int | None = None
    spare_pid: int | None = None  # the warm spare that replaces the unit's process if it dies
    policy: str
    restarts: int = 0
    models: list[str]
    pool: PoolStatus | None = None
    last_error: str | None = None
    memory_budget_bytes: int | None = None  # what its weights and KV pool may take (None: no limit)
    memory_used_bytes: int | None = None  # KV pool plus the weights it holds or is loading
    compute: ComputeShares | None = None  # how its compute shares run (None: not ready)


class ModelStatus(_Response):
    name: str
    unit: str
    state: str
    path: str
    dtype: str
    quantization: str = "none"
    device: str
    max_model_len: int | None = None
    weight_bytes: int | None = None
    rate: float = 0.0
    plan: str | None = None  # how its forward runs here, e.g. "q8/avx2" (weights / CPU kernels' instruction set)
    plan_notes: list[str] = []  # where the plan differs from the config, why
    load_state: str = "loaded"  # unloaded, loading, loaded or unloading (state is its unit's)
    size_bytes: int | None = None  # its files on disk
    weight_bytes_estimated: bool = False  # weight_bytes is the estimate from its files (never loaded)
    keep_alive_s: float = -1.0  # -1: never unloaded when idle
    expires_in_s: float | None = None  # until keep-alive unloads it (None: not counting down)
    pinned: bool = False
    priority: int = 0
    last_error: str | None = None  # why its last load failed


class Status(_Response):
    version: str
    pid: int
    socket: str
    uptime_s: float
    placement: str
    policy: str
    units: list[UnitStatus]
    models: list[ModelStatus]


class Percentiles(_Response):
    p50: float | None = None
    p99: float | None = None


class Latency(_Response):
    """Latency percentiles of the requests that finished in a span (``core.percentile``)."""

    requests: int = 0  # finished requests the percentiles cover
    ttft_ms: Percentiles = Percentiles()  # request admitted -> first token
    tpot_ms: Percentiles = Percentiles()  # (latency - TTFT) / (tokens - 1)
    e2e_ms: Percentiles = Percentiles()  # request admitted -> last token


class Slo(_Response):
    """A model's SLO targets and attainment (``core.slo``: one rule for the daemon and the benches).

    A request meets the SLO when it finished without error and each set
    target holds; errors and 429s are misses, client aborts are not judged.
    """

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    goal: float = 0.99  # the attainment the model should reach (the config's slo_goal)
    attainment: float | None = None  # over the latency window; None when no target is set or nothing was judged
    judged: int = 0  # requests judged in the window
    attainment_total: float | None = None  # since the daemon started
    judged_total: int = 0


class ComputeShare(_Response):
    """Fractions of a unit's compute over the rate window: Σ(job share × job seconds) / window."""

    prefill: float = 0.0
    decode: float = 0.0

    @property
    def total(self) -> float:
        return self.prefill + self.decode


class ModelStats(_Response):
    unit: str
    state: str = "ready"  # its unit's state
    load_state: str | None = None  # unloaded, loading, loaded or unloading
    rate: float = 0.0  # the configured expected requests/s (placement's popularity)
    running: int
    queued: int  # waiting for their prefill, in the unit and before it
    queue_age_s: float | None = None  # how long the oldest queued request has waited
    in_flight: int
    done: int
    errors: int
    rejected: int
    prompt_tokens: int
    generated_tokens: int
    tokens_in_per_s: float = 0.0  # prompt tokens processed per second over the rate window
    tokens_out_per_s: float = 0.0  # tokens generated per second over the rate window
    share: ComputeShare = ComputeShare()
    tokens_per_joule: float | None = None  # generated tokens per joule of its GPU's energy, by compute share
    pages_held: int | None = None
    pages_quota: int | None = None
    pages_cached: int | None = None  # idle prefix-cache blocks' pages, evictable
    prefix_hit_tokens: int | None = None  # prompt tokens served from the prefix cache
    prefix_query_tokens: int | None = None  # prompt tokens looked up in it
    latency: Latency = Latency()  # over the latency window
    latency_total: Latency = Latency()  # since start (the last 65,536 requests)
    slo: Slo = Slo()


class UnitStats(_Response):
    state: str
    device: str = "cpu"
    pid: int | None = None
    restarts: int = 0
    models: list[str] = []
    pages_total: int | None = None
    pages_free: int | None = None  # free plus cached (cached prefix blocks are evicted on demand)
    pages_cached: int | None = None
    steps: int | None = None
    preemptions: int | None = None
    busy_s: float | None = None  # compute-seconds since the unit (re)started: ∫ Σ running jobs' shares dt
    busy: float | None = None  # busy share over the rate window; the models' shares add up to it


class GpuStats(_Response):
    """NVML's readings of a GPU (``muxd.nvml``); None where NVML cannot say."""

    index: int
    name: str | None = None
    uuid: str | None = None
    utilization_pct: float | None = None
    memory_utilization_pct: float | None = None
    memory_used_bytes: int | None = None  # by every process on the GPU
    memory_total_bytes: int | None = None
    power_w: float | None = None
    energy_j: float | None = None  # since the driver loaded
    temperature_c: float | None = None
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None


class ProcessStats(_Response):
    """One unit process on the host (psutil)."""

    pid: int
    unit: str
    rss_bytes: int | None = None
    cpu_pct: float | None = None  # of one core: 200 is two cores busy


class CpuStats(_Response):
    """The host's CPU card, where a unit runs on the CPU (psutil)."""

    model: str | None = None
    cores_pct: list[float] = []  # per logical core, since the previous tick
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    processes: list[ProcessStats] = []


class DeviceStats(_Response):
    unit: str
    kind: Literal["cpu", "gpu"] = "cpu"
    utilization: float | None = None  # the unit's busy share over the rate window (UnitStats.busy)
    memory_used_bytes: int | None = None  # the unit process's: its GPU memory (NVML) on a GPU, else its RSS
    memory_total_bytes: int | None = None  # the machine's RAM on a CPU, the GPU's memory on a GPU
    gpu: GpuStats | None = None  # on a GPU with NVML
    cpu: CpuStats | None = None  # on the CPU
    tokens_per_joule: float | None = None  # where NVML knows the GPU's energy


EventKind = Literal[
    "unit_starting", "unit_ready", "unit_restarting", "unit_crashed", "unit_failed", "unit_stopped",
    "model_loaded", "preemption", "quota_move",
    "model_loading", "model_load_failed", "model_unloading", "model_unloaded",
]


class Event(_Response):
    """Something that happened in the daemon, from its ring of recent events."""

    id: int  # increasing from 1; the stream's ``Last-Event-ID``
    time: float  # unix seconds
    kind: EventKind
    unit: str | None = None
    model: str | None = None
    message: str


class Stats(_Response):
    time: float  # unix seconds of the tick that computed it
    uptime_s: float = 0.0
    rate_window_s: float = 10.0  # tokens/s, compute shares and busy shares span this
    latency_window_s: float = 60.0  # latency percentiles and SLO attainment span this
    last_event_id: int = 0
    models: dict[str, ModelStats]
    units: dict[str, UnitStats]
    devices: dict[str, DeviceStats]
