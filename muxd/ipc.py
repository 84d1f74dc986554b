"""Messages between the front end and a unit process (token ids only).

Plain picklable dataclasses sent over a ``multiprocessing`` pipe: the front
end sends ``AddRequest`` / ``AbortRequest`` / ``StatsRequest`` /
``Shutdown``; the unit answers ``Ready`` once its models are loaded, then
batches of ``TokenEvent`` (one list per engine step, so a pipe round trip
is paid per step, not per token) and ``StatsSnapshot``. No torch here: the
front end imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from muxd.protocol import ComputeShares


# -- front end -> unit -------------------------------------------------------
@dataclass
class AddRequest:
    request_id: str
    model: str
    prompt_ids: list[int]
    params: dict[str, Any]  # keyword arguments of core.sequence.SamplingParams


@dataclass
class AbortRequest:
    request_id: str


@dataclass
class StatsRequest:
    pass


@dataclass
class Shutdown:
    pass


@dataclass
class LoadModel:
    """Load one of the unit's on-demand models (its ``ModelConfig`` is in the unit's config)."""

    model: str


@dataclass
class UnloadModel:
    """Unload a model once its requests have drained (the front end sends it no new ones)."""

    model: str


# -- unit -> front end -------------------------------------------------------
@dataclass
class ModelInfo:
    name: str
    max_position: int
    eos_token_ids: tuple[int, ...]
    weight_bytes: int
    dtype: str
    device: str
    plan: str = ""  # engine.kernel_plan.KernelPlan.label, e.g. "q8/avx2"
    plan_notes: tuple[str, ...] = ()  # its reasons
    source_dir: str = ""  # the Hugging Face directory it was loaded from (a GGUF file's converted copy)
    load_s: float = 0.0  # seconds its load took


@dataclass
class Ready:
    unit: str
    models: list[ModelInfo]
    kv_pages: int
    kv_bytes: int
    compute: ComputeShares | None = None  # how the unit's compute shares run


@dataclass
class StartFailed:
    """The unit could not load its models; the process exits after sending it."""

    unit: str
    error: str


@dataclass
class ModelLoaded:
    """A ``LoadModel`` finished: the model serves from the unit's next step."""

    info: ModelInfo


@dataclass
class ModelLoadFailed:
    model: str
    error: str


@dataclass
class ModelUnloaded:
    """An ``UnloadModel`` finished: its requests drained, its weights and pages freed."""

    model: str


@dataclass
class TokenEvent:
    """New tokens of one request since its last event; ``finished`` ends the stream."""

    request_id: str
    token_ids: list[int]
    logprobs: list[float]
    finished: bool = False
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    error: str | None = None  # set when the unit rejected or failed the request


@dataclass
class ModelStats:
    running: int
    waiting: int
    finished: int
    pages_held: int
    pages_quota: int
    prompt_tokens: int
    generated_tokens: int
    pages_cached: int = 0  # idle prefix-cache pages (evictable), not counted in pages_held
    prefix_hit_tokens: int = 0  # prompt tokens reused from the prefix cache
    prefix_query_tokens: int = 0  # prompt tokens looked up in it
    prefill_share_s: float = 0.0  # Σ job share × job seconds of its prefill jobs
    decode_share_s: float = 0.0
    oldest_waiting_s: float | None = None  # age of its longest-waiting queued request


@dataclass
class UnitEvent:
    """A scheduler event (``sched.base.SchedEvent``): preemption, quota move."""

    kind: str
    model: str
    message: str


@dataclass
class StatsSnapshot:
    unit: str
    time: float
    kv_pages_total: int
    kv_pages_free: int  # free plus cached: cached prefix blocks are evicted on demand
    models: dict[str, ModelStats] = field(default_factory=dict)
    busy_s: float = 0.0  # compute-seconds the executor held jobs (Executor.occupied_s)
    steps: int = 0
    preemptions: int = 0
    kv_pages_cached: int = 0
    events: list[UnitEvent] = field(default_factory=list)  # since the previous snapshot
