"""Hermes ``<tool_call>`` blocks out of streamed text: calls out, everything else kept as content."""

from __future__ import annotations

import json

import pytest

from muxd.server.structured import JSON
from muxd.server.tool_calls import ToolCallParser, split_tool_calls, tool_call_parser

NAMES = {"get_weather", "get_time"}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def stream(text: str, piece: int) -> tuple[str, list]:
    parser = ToolCallParser(NAMES)
    content, calls = "", []
    for i in range(0, len(text), piece):
        c, new = parser.feed(text[i : i + piece])
        content, calls = content + c, calls + new
    return content + parser.finish(), calls


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_calls_come_out_whole_whatever_the_pieces_the_text_arrives_in(piece):
    content, calls = stream(f"Let me check.\n{CALL}\n{CALL.replace('weather', 'time')}", piece)
    assert content == "Let me check.\n\n"
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert len({c.id for c in calls}) == 2


def test_a_partial_opening_tag_is_held_back_until_it_is_known():
    parser = ToolCallParser(NAMES)
    assert parser.feed("Hi <tool") == ("Hi ", [])
    assert parser.feed("s are fun") == ("<tools are fun", [])


def test_blocks_that_are_not_calls_stay_content():
    for text in ("<tool_call>not json</tool_call>", '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
                 "<tool_call>{\"name\": \"get_time\""):  # fmt: skip
        content, calls = split_tool_calls(text, NAMES)
        assert calls == [] and content == text


def test_arguments_sent_as_text_are_kept_as_text():
    _, (call,) = split_tool_calls('<tool_call>{"name": "get_time", "arguments": "{\\"zone\\": \\"UTC\\"}"}</tool_call>', NAMES)
    assert json.loads(call.arguments) == {"zone": "UTC"}


LLAMA_CALL = '{"name": "get_time", "parameters": {"zone": "UTC"}}'


@pytest.mark.parametrize("piece", [1, 4, 1000])
@pytest.mark.parametrize("text", [LLAMA_CALL, " " + LLAMA_CALL, "<|python_tag|>" + LLAMA_CALL])
def test_a_llama_json_reply_is_one_call_known_at_its_end(text, piece):
    parser = tool_call_parser(JSON, NAMES)
    pieces = [parser.feed(text[i : i + piece]) for i in range(0, len(text), piece)]
    assert all(p == ("", []) for p in pieces)  # held back: it may still be a call
    assert parser.finish() == "" and [c.name for c in parser.calls] == ["get_time"]
    assert json.loads(parser.calls[0].arguments) == {"zone": "UTC"}


@pytest.mark.parametrize("text", ["Hello there", "<|py is not the tag", '{"name": "unknown", "parameters": {}}'])
def test_a_llama_reply_that_is_not_a_call_is_content(text):
    content, calls = split_tool_calls(text, NAMES, JSON)
    assert calls == [] and content == text
