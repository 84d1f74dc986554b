"""An engine whose set of models changes while it serves (issue #22): add_model, remove_model."""

import pytest
import torch

from muxd.core.sequence import SamplingParams
from muxd.engine.llm_engine import LLMEngine
from muxd.models.loader import load_model

from .conftest import assert_pool_whole

PROMPTS = [[5, 17, 99, 3, 4, 5, 6, 7, 8, 9], [7, 8]]
PARAMS = SamplingParams(max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def models(tiny_model_dirs, device):
    return {f: load_model(tiny_model_dirs[f], device=device) for f in ("llama", "qwen3")}


def alone(model, name):
    engine = LLMEngine({name: model}, kv_cache_bytes=4 << 20, page_tokens=4, cores=1)
    return [o.output_ids for o in engine.generate(name, PROMPTS, PARAMS)]


def heads(model):
    return [(model.spec.head_dim, model.dtype)]


@pytest.mark.parametrize("policy", ["adbs", "spatial", "temporal"])
def test_a_model_added_while_another_decodes_answers_as_it_does_alone(models, policy):
    engine = LLMEngine({"llama": models["llama"]}, kv_cache_bytes=4 << 20, page_tokens=4, policy=policy, cores=2,
                       kv_heads=heads(models["qwen3"]))  # fmt: skip
    first = [engine.add_request("llama", p, PARAMS) for p in PROMPTS]
    engine.step()  # llama is mid-flight when qwen3 arrives: a step boundary
    engine.add_model("qwen3", models["qwen3"])
    second = [engine.add_request("qwen3", p, PARAMS) for p in PROMPTS]
    final = {o.request_id: o.output_ids for o in engine.run_until_done()}
    assert [final[i] for i in first] == alone(models["llama"], "llama")
    assert [final[i] for i in second] == alone(models["qwen3"], "qwen3")
    assert_pool_whole(engine)


def test_an_engine_may_start_with_no_model_and_serve_one_added_later(models):
    engine = LLMEngine({}, kv_cache_bytes=4 << 20, page_tokens=4, cores=1, device="cpu", kv_heads=heads(models["llama"]))
    engine.add_model("llama", models["llama"])
    assert [o.output_ids for o in engine.generate("llama", PROMPTS, PARAMS)] == alone(models["llama"], "llama")


def test_removing_a_model_evicts_its_cached_prefix_blocks_and_only_its_own(models):
    engine = LLMEngine(dict(models), kv_cache_bytes=4 << 20, page_tokens=4, cores=1)
    engine.generate("llama", PROMPTS, PARAMS)
    engine.generate("qwen3", PROMPTS, PARAMS)
    qwen_cached = engine.pool.cached("qwen3")
    assert engine.pool.cached("llama") > 0 and qwen_cached > 0
    engine.remove_model("llama")
    assert "llama" not in engine.pool.models and "llama" not in engine.runners
    assert engine.pool.cached("qwen3") == qwen_cached
    assert engine.pool.num_free + engine.pool.num_cached == engine.pool.total
    assert_pool_whole(engine)


def test_a_model_with_requests_is_not_removed(models):
    engine = LLMEngine(dict(models), kv_cache_bytes=4 << 20, page_tokens=4, cores=1)
    engine.add_request("llama", PROMPTS[0], PARAMS)
    engine.step()
    with pytest.raises(ValueError, match="drain"):
        engine.remove_model("llama")
    engine.run_until_done()
    engine.remove_model("llama")
    with pytest.raises(KeyError, match="not found"):
        engine.add_request("llama", PROMPTS[0], PARAMS)


def test_a_model_wider_than_the_pools_pages_is_refused(models):
    narrow = [(models["llama"].spec.head_dim // 2, torch.float32)]
    engine = LLMEngine({}, kv_cache_bytes=4 << 20, page_tokens=4, cores=1, device="cpu", kv_heads=narrow)
    with pytest.raises(ValueError, match="cannot hold head_dim"):
        engine.add_model("llama", models["llama"])
    assert engine.runners == {} and engine.pool.models == []


def test_load_and_remove_cycles_leave_the_pool_whole(models):
    engine = LLMEngine({"qwen3": models["qwen3"]}, kv_cache_bytes=4 << 20, page_tokens=4, cores=1,
                       kv_heads=heads(models["llama"]))  # fmt: skip
    for _ in range(20):
        engine.add_model("llama", models["llama"])
        engine.generate("llama", PROMPTS[:1], PARAMS)
        engine.remove_model("llama")
    assert engine.pool.models == ["qwen3"]
    assert_pool_whole(engine)
