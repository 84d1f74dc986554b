"""Grammars for structured output and forced tool calls, built and checked in the front end.

A request's ``response_format`` (``json_object``, ``json_schema``) or its
``tool_choice`` (``required`` or a named function) becomes an llguidance
grammar, which travels to the unit as ``SamplingParams.grammar`` and
constrains every sampled token there (``engine/grammar.py``). The grammar
is validated here with the same library, before the request is admitted,
so a bad schema is a 400 naming the problem, never a stream that fails
half-way. llguidance is torch-free, so the front end can do this.

Forced tool calls take the format the model's chat template teaches
(``server/tool_calls.py`` parses it back): ``HERMES``, Qwen's
``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` blocks, or
``JSON``, Llama 3.1's whole reply ``{"name": ..., "parameters": {...}}``
(one call; its templates have no parallel calls).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import llguidance

from muxd.errors import InvalidRequestError
from muxd.protocol import NamedToolChoice, ResponseFormat, Tool

# Compact JSON, no free whitespace: a model cannot run away in spaces.
JSON_OPTIONS = {"whitespace_flexible": False}
# Tool calls keep the spacing the chat templates show the model.
TOOL_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
HERMES, JSON = "hermes", "json"  # tool-call formats


def tool_format(chat_template: str) -> str:
    """The tool-call format a chat template teaches: Hermes blocks where it shows ``<tool_call>``
    (Qwen2/Qwen3, Hermes), else Llama 3.1's bare JSON object."""
    return HERMES if TOOL_CALL_OPEN in chat_template else JSON


def response_grammar(fmt: ResponseFormat | None) -> str | None:
    """The grammar of a ``response_format``; None for free text."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return _json_grammar('{"type": "object"}', "response_format")
    assert fmt.json_schema is not None  # ResponseFormat's validator
    return _json_grammar(json.dumps(fmt.json_schema.schema_, sort_keys=False), "response_format.json_schema.schema")


def tool_grammar(
    tools: list[Tool], choice: str | NamedToolChoice | None, parallel: bool | None, fmt: str = HERMES
) -> str | None:
    """The grammar that forces tool calls (``required`` or a named function); None when the model chooses."""
    if choice in (None, "auto", "none"):
        return None
    if isinstance(choice, NamedToolChoice):
        tools = [t for t in tools if t.function.name == choice.function.name]
    args = "arguments" if fmt == HERMES else "parameters"
    calls = {"anyOf": [_call_schema(t, args) for t in tools], "x-guidance": TOOL_JSON_OPTIONS}
    if fmt != HERMES:
        return _validated(llguidance.LLMatcher.grammar_from_lark(f"start: %json {json.dumps(calls)}\n"), "tools")
    more = ' ("\\n" call)*' if parallel is not False and not isinstance(choice, NamedToolChoice) else ""
    lark = (
        f"start: call{more}\n"
        f'call: "{TOOL_CALL_OPEN}\\n" body "\\n{TOOL_CALL_CLOSE}"\n'
        f"body: %json {json.dumps(calls)}\n"
    )
    return _validated(llguidance.LLMatcher.grammar_from_lark(lark), "tools")


def check_tool_choice(tools: list[Tool] | None, choice: str | NamedToolChoice | None) -> None:
    """400 for a ``tool_choice`` that names no given tool, or that asks for calls without tools."""
    names = [t.function.name for t in tools or []]
    if len(set(names)) != len(names):
        raise InvalidRequestError("tools have duplicate function names; give each function a unique name", param="tools")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        given = ", ".join(names) or "none"
        raise InvalidRequestError(
            f"tool_choice names function {choice.function.name!r}, which is not in tools (given: {given})",
            param="tool_choice",
        )
    if choice == "required" and not names:
        raise InvalidRequestError('tool_choice "required" needs at least one tool in tools', param="tool_choice")


def _call_schema(tool: Tool, args: str) -> dict[str, Any]:
    params = tool.function.parameters or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": tool.function.name}, args: params},
        "required": ["name", args],
        "additionalProperties": False,
    }


def _json_grammar(schema_text: str, param: str) -> str:
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_text, overrides=JSON_OPTIONS)
    except ValueError as e:
        raise InvalidRequestError(f"{param} is not a JSON Schema object: {e}", param=param) from None
    return _validated(grammar, param)


@lru_cache(maxsize=256)
def _check(grammar: str) -> str:
    return llguidance.LLMatcher.validate_grammar(grammar)


def _validated(grammar: str, param: str) -> str:
    error = _check(grammar)
    if error:
        raise InvalidRequestError(f"{param} cannot be enforced: {error}", param=param.split(".")[0])
    return grammar
