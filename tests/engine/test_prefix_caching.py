"""Prefix caching reuses computed K/V without changing a single greedy token."""

import pytest

from muxd.core.sequence import SamplingParams
from muxd.engine.llm_engine import LLMEngine
from muxd.models.loader import load_model

from .conftest import assert_pool_whole

SYSTEM = [(7 * i) % 90 + 3 for i in range(29)]  # a long shared prefix: 7 full blocks of 4 and one token
GREEDY = SamplingParams(max_tokens=8, ignore_eos=True)


def serve(model, prefix_caching: bool):
    """Two requests sharing the system prompt, then a second turn of the first conversation."""
    engine = LLMEngine({"m": model}, kv_cache_bytes=2 << 20, page_tokens=4, prefix_caching=prefix_caching)
    first = engine.generate("m", [SYSTEM + [5, 6, 7]], GREEDY)[0].output_ids
    second = engine.generate("m", [SYSTEM + [8, 9]], GREEDY)[0].output_ids
    hits_before_turn = engine.kv.hit_tokens["m"]
    turn = engine.generate("m", [SYSTEM + [5, 6, 7] + first + [10, 11]], GREEDY)[0].output_ids
    assert_pool_whole(engine)
    return [first, second, turn], hits_before_turn, engine.kv.hit_tokens["m"]


@pytest.mark.parametrize("family", ["llama", "mistral-window", "qwen3"])
def test_greedy_tokens_are_the_same_with_prefix_caching_on_and_off(family, tiny_model_dirs, device):
    model = load_model(tiny_model_dirs[family], device=device)
    on, hits_second, hits_all = serve(model, True)
    off, no_hits, _ = serve(model, False)
    assert on == off
    assert hits_second == 28  # the second request skipped the system prompt's seven full blocks
    # The next turn reused the first conversation's nine full computed blocks
    # (32 prompt + 8 answer tokens, the last answer token never computed).
    assert hits_all - hits_second == 36
    assert no_hits == 0


def test_requests_prefilled_together_keep_duplicate_blocks_private(tiny_model_dirs, device):
    """One job computes the same prefix for all four: the first registers it, the rest free theirs."""
    model = load_model(tiny_model_dirs["llama"], device=device)
    prompts = [SYSTEM + [i] for i in range(4)]
    outs = {}
    for on in (True, False):
        engine = LLMEngine({"m": model}, kv_cache_bytes=2 << 20, page_tokens=4, prefix_caching=on)
        outs[on] = [o.output_ids for o in engine.generate("m", prompts, GREEDY)]
        snap = engine.snapshot("u")
        assert snap.kv_pages_free == snap.kv_pages_total and snap.models["m"].pages_held == 0
        assert_pool_whole(engine)
    assert outs[True] == outs[False]
