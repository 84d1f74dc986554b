"""The HTTP API's request and response models (OpenAI-compatible, plus muxd's own).

Requests are validated here once, at the edge, in strict mode: a string
where a number belongs is a 400 naming the field, never a silent coercion.
Unknown fields are ignored, as OpenAI-compatible servers do, but the OpenAI
fields muxd cannot honour (``echo``, penalties, top logprobs) are rejected
with a message saying so rather than ignored. ``response_format`` and
``tools`` are checked here for shape; their schemas are checked by the
front end's grammar builder (``server/structured.py``).

Responses are typed for the client library (``muxd.client`` parses into
them) and for ``/openapi.json``; they accept extra fields, so an older
client reads a newer daemon. The daemon builds its hot-path responses as
plain dicts of the same shape (tests check the two agree).

No torch, no muxd imports: the client loads this module.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

M = TypeVar("M", bound=BaseModel)
MAX_N = 16  # choices per request; each is a request to the unit
NO_ALTERNATIVES = (
    "{name} > 0 asks for the top alternative tokens, which muxd does not report; "
    "use 0 (or logprobs=true in chat) for the sampled tokens' logprobs"
)


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Request):
    include_usage: bool = False


class JsonSchemaFormat(_Request):
    """``response_format.json_schema``: a named JSON Schema the output must validate against."""

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None  # muxd always enforces the schema (constrained decoding), strict or not


class ResponseFormat(_Request):
    """``{"type": "text"}``, ``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {...}}``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @field_validator("json_schema")
    @classmethod
    def _schema_given(cls, value: JsonSchemaFormat | None, info: ValidationInfo) -> JsonSchemaFormat | None:
        if value is not None and value.schema_ is None:
            raise ValueError("json_schema.schema is required (the JSON Schema the output must match)")
        return value

    @model_validator(mode="after")
    def _schema_for_json_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('response_format of type "json_schema" needs a "json_schema" object with a "schema"')
        return self


class _SamplingFields(_Request):
    """Fields shared by both generation endpoints."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1, description="muxd extension: 0 or -1 disables it")
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(default=False, description="muxd extension: generate max_tokens whatever the EOS")
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    keep_alive: float | str | None = Field(
        default=None,
        description="muxd extension, as Ollama's: how long the model stays loaded after this request "
        '(seconds or "5m"; -1 forever, 0 unload when idle)',
    )
    response_format: ResponseFormat | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and any(not s for s in value):
            raise ValueError("stop strings must not be empty")
        return value

    @field_validator("presence_penalty", "frequency_penalty", "logit_bias")
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        if value:
            raise ValueError(f"{info.field_name} is not supported by muxd; leave it unset")
        return value

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingFields):
    """``POST /v1/completions``: one prompt, as text or token ids."""

    prompt: str | list[int] | list[str]
    logprobs: int | None = Field(default=None, ge=0, description="0: the sampled tokens' logprobs (no alternatives)")
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[int] | list[str]) -> str | list[int] | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt must not be empty")
            if all(isinstance(v, str) for v in value):
                if len(value) != 1:
                    raise ValueError("send one prompt per request (a list of several prompts is not supported)")
        elif not value:
            raise ValueError("prompt must not be empty")
        return value

    @field_validator("echo", "suffix")
    @classmethod
    def _unsupported_completion(cls, value: Any, info: ValidationInfo) -> Any:
        if value:
            raise ValueError(f"{info.field_name} is not supported by muxd; leave it unset")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_alternatives(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value:
            raise ValueError(NO_ALTERNATIVES.format(name=info.field_name))
        return value


class TextPart(_Request):
    type: Literal["text"]
    text: str


class FunctionCall(_Request):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Request):
    """A call the assistant made, as it comes back in the conversation."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(_Request):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema; none: the function takes no arguments
    strict: bool | None = None  # muxd always enforces the parameters' schema on forced calls


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: ToolChoiceFunction


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message: the call it answers

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingFields):
    """``POST /v1/chat/completions``: messages rendered with the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, description="must be 0: alternatives are not reported")
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _no_alternatives(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value:
            raise ValueError(NO_ALTERNATIVES.format(name=info.field_name))
        return value

    @property
    def output_limit(self) -> int | None:
        """``max_completion_tokens`` (the newer name) wins over ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# -- responses ---------------------------------------------------------------
class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Model(_Response):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "muxd"
    unit: str | None = None
    max_model_len: int | None = None  # known once it has been loaded
    state: str | None = None  # unloaded, loading, loaded or unloading
    size_bytes: int | None = None  # its files on disk
    pinned: bool = False


class ModelLoadRequest(_Request):
    """Body of ``POST /muxd/v1/models/{name}/load`` (optional)."""

    keep_alive: float | str | None = None


class ModelList(_Response):
    object: str = "list"
    data: list[Model]


class CompletionLogprobs(_Response):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int] = []


class CompletionChoice(_Response):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(_Response):
    """A ``/v1/completions`` response, or one chunk of its stream (``object`` tells which)."""

    id: str
    object: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None

    @property
    def text(self) -> str:
        """The first choice's text: the common case of ``n == 1``."""
        return self.choices[0].text if self.choices else ""


class TokenLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[dict[str, Any]] = []


class ChoiceLogprobs(_Response):
    content: list[TokenLogprob] | None = None


class ResponseFunctionCall(_Response):
    name: str | None = None
    arguments: str | None = None  # JSON text


class ResponseToolCall(_Response):
    id: str | None = None
    type: str | None = "function"
    function: ResponseFunctionCall
    index: int | None = None  # in stream deltas


class AssistantMessage(_Response):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ResponseToolCall] | None = None


class ChatChoice(_Response):
    index: int
    message: AssistantMessage
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(_Response):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None

    @property
    def text(self) -> str:
        return (self.choices[0].message.content or "") if self.choices else ""

    @property
    def tool_calls(self) -> list[ResponseToolCall]:
        """The first choice's tool calls (empty when it answered in text)."""
        return (self.choices[0].message.tool_calls or []) if self.choices else []

    def parsed(self, model: type[M]) -> M:
        """The first choice's JSON content as ``model`` (asked for with ``response_format=model``)."""
        return model.model_validate_json(self.text)


class Delta(_Response):
    role: str | None = None
    content: str | None = None
    tool_calls: list[ResponseToolCall] | None = None


class ChatChunkChoice(_Response):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None

    @property
    def text(self) -> str:
        """The first choice's new text (empty for role-only, final and usage chunks)."""
        return (self.choices[0].delta.content or "") if self.choices else ""


class ErrorDetail(_Response):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(_Response):
    error: ErrorDetail


# -- muxd's own endpoints ----------------------------------------------------
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
