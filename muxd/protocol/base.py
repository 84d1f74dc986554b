"""The two kinds of model every message of the API derives from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Request(BaseModel):
    """A request body: strict types (no coercion), unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")


class Response(BaseModel):
    """A response body: extra fields kept, so an older client reads a newer daemon."""

    model_config = ConfigDict(extra="allow")
