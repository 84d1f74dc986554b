"""The HTTP API's request and response models (OpenAI-compatible, plus muxd's own).

``protocol.openai`` holds the OpenAI-compatible requests and responses,
``protocol.status`` muxd's own endpoints (health, status, stats, events);
everything is importable from ``muxd.protocol``.

Requests are validated once, at the edge, in strict mode: a string where a
number belongs is a 400 naming the field, never a silent coercion. Unknown
fields are ignored, as OpenAI-compatible servers do, but the OpenAI fields
muxd cannot honour (``echo``, penalties, top logprobs) are rejected with a
message saying so rather than ignored. ``response_format`` and ``tools`` are
checked here for shape; their schemas are checked by the front end's
grammar builder (``server/structured.py``).

Responses are typed for the client library (``muxd.client`` parses into
them) and for ``/openapi.json``; they accept extra fields, so an older
client reads a newer daemon. The daemon builds its hot-path responses as
plain dicts of the same shape (tests check the two agree).

No torch, no muxd imports but these: the client loads this package.
"""

from muxd.protocol.openai import *  # noqa: F403
from muxd.protocol.status import *  # noqa: F403
