"""The OpenAI-compatible requests and responses: completions, chat, models, errors."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from muxd.protocol.base import Request as _Request
from muxd.protocol.base import Response as _Response

M = TypeVar("M", bound=BaseModel)
MAX_N = 16  # choices per request; each is a request to the unit
NO_ALTERNATIVES = (
    "{name} > 0 asks for the top alternative tokens, which muxd does not report; "
    "use 0 (or logprobs=true in chat) for the sampled tokens' logprobs"
)


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
