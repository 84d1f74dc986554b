"""The client's exceptions: one per kind of answer, all ``muxd.errors.MuxdError``.

Named as the openai SDK names them, so code written against one reads the
other. Each carries the daemon's ``message``, ``status``, ``code`` and ``param``.
"""

from __future__ import annotations

from typing import Any

from muxd.errors import DaemonNotRunningError, MuxdError

__all__ = [
    "APIError", "BadRequestError", "PermissionDeniedError", "NotFoundError", "RateLimitError",
    "UnavailableError", "InternalServerError", "ConnectionLostError", "DaemonNotRunningError", "error_from",
]  # fmt: skip


class APIError(MuxdError):
    """The daemon answered with an error (or sent one mid-stream)."""

    def __init__(self, message: str, status: int, code: str | None = None, param: str | None = None,
                 retry_after_s: float | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.http_status = status
        self.code = code or "error"
        self.param = param
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return f"{self.http_status} {self.code}: {self.message}"


class BadRequestError(APIError):
    """400: an invalid parameter (``param`` names it) or a prompt too long for the context."""


class PermissionDeniedError(APIError):
    """403: this uid may not use the daemon."""


class NotFoundError(APIError):
    """404: an unknown model (the message lists the served ones) or path."""


class RateLimitError(APIError):
    """429: the model's queue is full; retry after ``retry_after_s``."""


class UnavailableError(APIError):
    """503: the model's unit is starting or restarting (or died under the request)."""


class InternalServerError(APIError):
    """500: a bug in the daemon; its log has the traceback."""


class ConnectionLostError(MuxdError):
    """The daemon closed the connection before the response ended (it stopped or crashed)."""

    code = "connection_lost"


_BY_STATUS = {400: BadRequestError, 403: PermissionDeniedError, 404: NotFoundError, 429: RateLimitError,
              503: UnavailableError}  # fmt: skip
_STATUS_BY_CODE = {"invalid_request": 400, "context_length_exceeded": 400, "model_not_found": 404,
                   "queue_full": 429, "unit_unavailable": 503}  # fmt: skip


def error_from(status: int | None, body: Any, retry_after: str | None = None) -> APIError:
    """The exception for an error response (``status``) or an error event mid-stream (``status`` None)."""
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict):
        detail = {"message": str(body)[:500] or "no error message"}
    code = detail.get("code")
    if status is None:
        status = _STATUS_BY_CODE.get(str(code), 500)
    cls = _BY_STATUS.get(status, InternalServerError if status >= 500 else APIError)
    retry = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
    return cls(str(detail.get("message")), status, code, detail.get("param"), retry)
