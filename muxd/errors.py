"""muxd's error tree.

Every error a user can act on is a ``MuxdError``: it carries a message that
says what was wrong and what to do, the HTTP status the front end answers
with, and a stable ``code`` string for clients that branch on the kind of
error rather than on its wording (the OpenAI API's ``error.code``).
"""

from __future__ import annotations

from collections.abc import Iterable


class MuxdError(Exception):
    """Base of every error muxd reports to a user or a client."""

    http_status: int = 500
    code: str = "internal_error"
    param: str | None = None  # the request field at fault, when there is one

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, object]:
        """The OpenAI-style error body: ``{"error": {"message", "type", "code", "param"}}``."""
        return {"error": {"message": self.message, "type": type(self).__name__, "code": self.code, "param": self.param}}


class InvalidRequestError(MuxdError):
    """The request is malformed or asks for something impossible."""

    http_status = 400
    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthError(InvalidRequestError):
    """Prompt plus requested output do not fit the model's context window."""

    code = "context_length_exceeded"


class ModelNotFoundError(MuxdError):
    """A request named a model this daemon does not serve."""

    http_status = 404
    code = "model_not_found"

    def __init__(self, model: str, served: Iterable[str]) -> None:
        names = ", ".join(sorted(served)) or "(none)"
        super().__init__(f"model {model!r} not found; served models: {names}")
        self.model = model


class QueueFullError(MuxdError):
    """The model's waiting queue is at its limit; the client should retry later."""

    http_status = 429
    code = "queue_full"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnitUnavailableError(MuxdError):
    """The unit that holds the model is down or restarting."""

    http_status = 503
    code = "unit_unavailable"

    def __init__(self, message: str, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class MemoryBudgetError(UnitUnavailableError):
    """A model does not fit its unit's memory budget and nothing idle can be unloaded for it."""

    code = "memory_budget"


class ConfigError(MuxdError):
    """The daemon's configuration (TOML, environment or flags) is invalid."""

    code = "config_error"


class DaemonRunningError(MuxdError):
    """Another daemon already serves the socket this one was asked to take."""

    code = "daemon_running"


class DaemonNotRunningError(MuxdError):
    """No daemon answers on the socket a client was pointed at."""

    http_status = 503
    code = "daemon_not_running"


class ModelLoadError(MuxdError):
    """A model directory is missing, malformed or of an unsupported kind."""

    http_status = 500
    code = "model_load_error"
