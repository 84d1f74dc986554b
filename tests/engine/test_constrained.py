"""Constrained decoding in the engine: a grammar masks its own rows of a batch and no other."""

from __future__ import annotations

import json

import llguidance
import pytest
from tokenizers import Tokenizer

from muxd.core.sequence import SamplingParams
from muxd.engine.llm_engine import LLMEngine
from muxd.models.loader import load_model

from .conftest import assert_pool_whole

SCHEMA = {
    "type": "object",
    "properties": {
        "word": {"type": "string", "maxLength": 10},
        "n": {"type": "integer", "minimum": -5, "maximum": 500},
        "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["word", "n", "flags"],
    "additionalProperties": False,
}
GRAMMAR = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, overrides={"whitespace_flexible": False})
PROMPTS = [list(range(5, 5 + n)) for n in (4, 9, 6, 12)]
FREE = [SamplingParams(max_tokens=12, ignore_eos=True), SamplingParams(max_tokens=12, temperature=0.9, seed=5, ignore_eos=True)]


def constrained(seed: int | None) -> SamplingParams:
    return SamplingParams(max_tokens=200, temperature=0.0 if seed is None else 1.0, seed=seed, grammar=GRAMMAR)


def assert_follows_schema(text: str) -> None:
    value = json.loads(text)
    assert set(value) == {"word", "n", "flags"}
    assert len(value["word"]) <= 10 and -5 <= value["n"] <= 500 and isinstance(value["n"], int)
    assert len(value["flags"]) <= 3 and all(isinstance(f, bool) for f in value["flags"])


def run(engine: LLMEngine, requests: list[tuple[list[int], SamplingParams]], check_pool: bool = True) -> list:
    ids = [engine.add_request("m", p, params) for p, params in requests]
    final = {out.request_id: out for out in engine.run_until_done()}
    if check_pool:
        assert_pool_whole(engine)  # this also empties the prefix cache
    return [final[i] for i in ids]


@pytest.mark.parametrize("quantization", ["none", "q8"])  # q8: the C decode step with its fused head and argmax
def test_free_sequences_get_the_same_tokens_beside_constrained_ones(tiny_model_dirs, quantization):
    path = tiny_model_dirs["llama"]
    model = load_model(path, quantization=quantization)
    decode = Tokenizer.from_file(str(path / "tokenizer.json")).decode
    free = [(p, FREE[i % 2]) for i, p in enumerate(PROMPTS)]
    with LLMEngine({"m": model}, page_tokens=4) as engine:
        alone = run(engine, free)
        mixed = run(engine, [*free, *((p, constrained(s)) for p, s in zip(PROMPTS, (None, 1, 2, 3)))])
    assert [o.output_ids for o in mixed[: len(free)]] == [o.output_ids for o in alone]
    for out in mixed[len(free) :]:
        assert out.finish_reason == "stop"
        assert_follows_schema(decode(out.output_ids))


def test_constrained_output_survives_preemption(tiny_model_dirs):
    """The matcher follows the sequence's tokens, which preemption keeps: same output, small pool or large."""
    model = load_model(tiny_model_dirs["qwen3"])
    requests = [(p, constrained(seed)) for p in PROMPTS for seed in (None, 7)]
    with LLMEngine({"m": model}, kv_cache_bytes=16 << 20, page_tokens=4) as engine:
        large = [o.output_ids for o in run(engine, requests)]
    with LLMEngine({"m": model}, kv_cache_bytes=96 << 10, page_tokens=4) as engine:
        small = [o.output_ids for o in run(engine, requests)]
        assert engine.scheduler.num_preemptions > 0
    assert small == large


def test_a_grammar_is_compiled_once_per_model(tiny_model_dirs):
    model = load_model(tiny_model_dirs["llama"])
    with LLMEngine({"m": model}) as engine:
        first = engine.grammars["m"].prepare(GRAMMAR)
        run(engine, [(PROMPTS[0], constrained(None)), (PROMPTS[1], constrained(3))])
        assert engine.grammars["m"].prepare(GRAMMAR) is first


def test_a_constrained_request_from_the_prefix_cache_gives_the_same_output(tiny_model_dirs):
    """Prefix caching shares K/V only; the matcher starts from the output, so a cached prompt changes nothing."""
    model = load_model(tiny_model_dirs["llama"])
    prompt = list(range(5, 5 + 37))  # several full 4-token blocks to reuse
    with LLMEngine({"m": model}, page_tokens=4) as engine:
        (first,) = run(engine, [(prompt, constrained(None))], check_pool=False)
        (second,) = run(engine, [(prompt, constrained(None))])
        assert engine.kv.hit_tokens["m"] > 0
    assert second.output_ids == first.output_ids and first.finish_reason == "stop"
