"""muxd's greedy tokens equal transformers' generate, token for token (fp32)."""

import pytest

from muxd.core.sequence import SamplingParams
from muxd.engine.llm_engine import LLMEngine
from muxd.models.loader import load_model

from .conftest import assert_pool_whole, hf_greedy

PROMPTS = [[5, 17, 99, 3, 42, 8], [7], list(range(30, 70)), [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]]
NEW_TOKENS = 12
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)


@pytest.mark.parametrize("family", ["llama", "llama3", "mistral", "mistral-window", "qwen2", "qwen3"])
def test_greedy_tokens_match_transformers_while_another_model_shares_the_pool(family, tiny_model_dirs, device):
    other = "qwen3" if family != "qwen3" else "llama"
    models = {"m": load_model(tiny_model_dirs[family], device=device), "other": load_model(tiny_model_dirs[other], device=device)}
    engine = LLMEngine(models, kv_cache_bytes=8 << 20, page_tokens=8)
    ids = {}
    for i, prompt in enumerate(PROMPTS):  # interleaved: both models' sequences are live together
        ids[i] = engine.add_request("m", prompt, GREEDY)
        engine.add_request("other", prompt[::-1], GREEDY)
    outputs = {}
    while engine.has_unfinished:
        outputs.update({o.request_id: o for o in engine.step() if o.finished})
    for i, prompt in enumerate(PROMPTS):
        assert outputs[ids[i]].output_ids == hf_greedy(tiny_model_dirs[family], prompt, NEW_TOKENS), f"prompt {i}"
    assert_pool_whole(engine)


def test_models_of_different_dtypes_reuse_each_others_pages(tiny_model_dirs, device):
    """Pages freed by an fp32 model hold bytes that read as NaN in bf16; reuse must not see them."""
    models = {
        "f32": load_model(tiny_model_dirs["llama"], "float32", device),
        "bf16": load_model(tiny_model_dirs["qwen3"], "bfloat16", device),
        "f16": load_model(tiny_model_dirs["qwen2"], "float16", device),
    }

    def alone(name):
        engine = LLMEngine({name: models[name]}, kv_cache_bytes=64 << 10, page_tokens=4)
        return engine.generate(name, [PROMPTS[2]], GREEDY)[0].output_ids

    shared = LLMEngine(models, kv_cache_bytes=64 << 10, page_tokens=4)
    for _ in range(2):  # each model in turn takes pages the others just freed
        for name in models:
            assert shared.generate(name, [PROMPTS[2]], GREEDY)[0].output_ids == alone(name), name
    assert_pool_whole(shared)

