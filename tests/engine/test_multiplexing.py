"""Several models in one unit, jobs running side by side: outputs as if each model were alone."""

import pytest

from muxd.core.sequence import SamplingParams
from muxd.engine.llm_engine import LLMEngine
from muxd.models.loader import load_model

from .conftest import assert_pool_whole

FAMILIES = ["llama", "qwen2", "qwen3", "mistral"]
PROMPTS = [[5, 17, 99, 3], [7, 8], list(range(30, 55)), [11, 12, 13, 14, 15, 16]]
PARAMS = SamplingParams(max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def models(tiny_model_dirs, device):
    return {f: load_model(tiny_model_dirs[f], device=device) for f in FAMILIES}


def solo(model, name):
    engine = LLMEngine({name: model}, kv_cache_bytes=4 << 20, policy="temporal", cores=1)
    return [o.output_ids for o in engine.generate(name, PROMPTS, PARAMS)]


@pytest.mark.parametrize("policy", ["adbs", "spatial", "temporal"])
def test_greedy_output_equals_serving_each_model_alone(models, policy):
    engine = LLMEngine(
        models, kv_cache_bytes=4 << 20, page_tokens=4, policy=policy, cores=2,
        rates={"llama": 4.0, "qwen2": 2.0, "qwen3": 1.0, "mistral": 0.5},
    )
    ids = {(f, i): engine.add_request(f, p, PARAMS) for i, p in enumerate(PROMPTS) for f in FAMILIES}
    final = {o.request_id: o.output_ids for o in engine.run_until_done()}
    for f in FAMILIES:
        assert [final[ids[(f, i)]] for i in range(len(PROMPTS))] == solo(models[f], f), f
    assert_pool_whole(engine)


def test_adbs_runs_jobs_of_different_models_at_the_same_time(models):
    engine = LLMEngine(models, kv_cache_bytes=4 << 20, policy="adbs", cores=2)
    for f in FAMILIES:
        engine.add_request(f, PROMPTS[0], PARAMS)
    engine.run_until_done()
    assert engine.stats.peak_jobs == 2


def test_closing_an_engine_stops_its_worker_threads_and_further_steps(models):
    """``close`` joins the executor's workers (on CUDA they must not outlive torch's state at exit)."""
    with LLMEngine({"llama": models["llama"]}, kv_cache_bytes=4 << 20, cores=2) as engine:
        engine.generate("llama", PROMPTS[:1], PARAMS)
        workers = list(engine.executor._threads)
        assert all(t.is_alive() for t in workers)
    assert not any(t.is_alive() for t in workers)
    engine.close()  # idempotent
    engine.add_request("llama", PROMPTS[0], PARAMS)
    with pytest.raises(RuntimeError, match="shut down"):
        engine.step()
