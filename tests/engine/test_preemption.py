"""A pool too small for every running sequence preempts, recomputes, and loses nothing."""

from muxd.core.sequence import SamplingParams
from muxd.engine.llm_engine import LLMEngine
from muxd.models.loader import load_model

from .conftest import assert_pool_whole

PROMPTS = [list(range(3, 3 + n)) for n in (5, 9, 14, 3, 11, 7)]
PARAMS = SamplingParams(max_tokens=20, ignore_eos=True)


def run(models, kv_cache_bytes):
    engine = LLMEngine(models, kv_cache_bytes=kv_cache_bytes, page_tokens=4)
    ids = [(m, engine.add_request(m, p, PARAMS)) for p in PROMPTS for m in models]
    outputs = {}
    while engine.has_unfinished:
        outputs.update({o.request_id: o for o in engine.step() if o.finished})
    assert_pool_whole(engine)
    return [outputs[i].output_ids for _, i in ids], engine.scheduler.num_preemptions, engine.pool.total


def test_small_pool_gives_the_same_greedy_output_as_a_large_one(tiny_model_dirs, device):
    models = {"a": load_model(tiny_model_dirs["llama"], device=device), "b": load_model(tiny_model_dirs["qwen3"], device=device)}
    large, large_preemptions, _ = run(models, 16 << 20)
    small, small_preemptions, small_pages = run(models, 64 << 10)
    assert large_preemptions == 0
    assert small_preemptions > 0, f"a pool of {small_pages} pages should force preemption"
    assert small == large
    assert all(len(o) == PARAMS.max_tokens for o in small)
