"""Tool calls out of a model's text, in the format its chat template teaches.

Two formats (``server/structured.py``'s ``HERMES`` and ``JSON``): the
Hermes ``<tool_call>`` blocks of Qwen's templates, and Llama 3.1's bare
JSON object (``{"name": ..., "parameters": {...}}`` as the whole reply).

``ToolCallParser`` takes one choice's text as it streams and splits it into
content (what the user should see) and complete tool calls
(``{"name": ..., "arguments": {...}}`` between ``<tool_call>`` and
``</tool_call>``), holding back text that may still become a block's
opening tag, so that a stream never shows half a tag as content. A block
that does not parse as a call, or that the output ends inside, goes back
to the content: nothing the model wrote is dropped.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from muxd.server.structured import HERMES, TOOL_CALL_CLOSE, TOOL_CALL_OPEN

PYTHON_TAG = "<|python_tag|>"  # Llama 3.1 may open a call with it


@dataclass
class ParsedCall:
    id: str
    name: str
    arguments: str  # JSON text, as the API carries it

    def to_dict(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


@dataclass
class ToolCallParser:
    """Incremental: ``feed`` text, get ``(content, calls)`` ready so far; ``finish`` flushes the rest."""

    tool_names: set[str]
    calls: list[ParsedCall] = field(default_factory=list)
    _buffer: str = ""  # text not yet released: a possible tag start, or an open block

    def feed(self, text: str) -> tuple[str, list[ParsedCall]]:
        self._buffer += text
        content, new = "", []
        while True:
            start = self._buffer.find(TOOL_CALL_OPEN)
            if start < 0:
                keep = _partial_tag(self._buffer)
                content += self._buffer[: len(self._buffer) - keep]
                self._buffer = self._buffer[len(self._buffer) - keep :]
                return content, new
            end = self._buffer.find(TOOL_CALL_CLOSE, start)
            if end < 0:
                content += self._buffer[:start]
                self._buffer = self._buffer[start:]
                return content, new
            block = self._buffer[start : end + len(TOOL_CALL_CLOSE)]
            content += self._buffer[:start]
            self._buffer = self._buffer[end + len(TOOL_CALL_CLOSE) :]
            call = self._parse(block[len(TOOL_CALL_OPEN) : -len(TOOL_CALL_CLOSE)])
            if call is None:
                content += block
            else:
                self.calls.append(call)
                new.append(call)

    def finish(self) -> str:
        """The text still held back (an unclosed block or a tag's start), as content."""
        rest, self._buffer = self._buffer, ""
        return rest

    def _parse(self, body: str) -> ParsedCall | None:
        return parse_call(body, self.tool_names)


@dataclass
class JsonToolCallParser:
    """Llama 3.1's format: a reply that is one JSON call object. A reply that starts like one
    is held back to its end, then given as the call, or as content if it is not one."""

    tool_names: set[str]
    calls: list[ParsedCall] = field(default_factory=list)
    _buffer: str = ""
    _holding: bool | None = None  # None: too early to tell

    def feed(self, text: str) -> tuple[str, list[ParsedCall]]:
        self._buffer += text
        if self._holding is None:
            head = self._buffer.lstrip()
            body = head.removeprefix(PYTHON_TAG).lstrip()
            if body and not (PYTHON_TAG.startswith(head) and head != PYTHON_TAG):  # else: too early to tell
                self._holding = body.startswith("{")
        if self._holding is False:
            out, self._buffer = self._buffer, ""
            return out, []
        return "", []

    def finish(self) -> str:
        rest, self._buffer = self._buffer, ""
        call = parse_call(rest.strip().removeprefix(PYTHON_TAG), self.tool_names) if self._holding else None
        if call is None:
            return rest
        self.calls.append(call)
        return ""


def tool_call_parser(tool_format: str, tool_names: set[str]) -> ToolCallParser | JsonToolCallParser:
    return ToolCallParser(tool_names) if tool_format == HERMES else JsonToolCallParser(tool_names)


def parse_call(body: str, tool_names: set[str]) -> ParsedCall | None:
    """``{"name": ..., "arguments" (or "parameters"): {...}}`` naming one of ``tool_names``, else None."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in tool_names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)  # text: sent as JSON text already
    return ParsedCall(f"call_{uuid.uuid4().hex[:24]}", obj["name"], text)


def split_tool_calls(text: str, tool_names: set[str], tool_format: str = HERMES) -> tuple[str, list[ParsedCall]]:
    """A whole output's content (calls removed, stripped) and its calls."""
    parser = tool_call_parser(tool_format, tool_names)
    content, calls = parser.feed(text)
    content += parser.finish()
    calls = parser.calls
    return (content.strip() if calls else content), calls


def _partial_tag(text: str) -> int:
    """How many trailing characters of ``text`` are a proper prefix of the opening tag."""
    for n in range(min(len(text), len(TOOL_CALL_OPEN) - 1), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-n:]):
            return n
    return 0
