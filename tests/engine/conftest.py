from __future__ import annotations

import torch



def hf_greedy(path, prompt: list[int], n: int) -> list[int]:
    """transformers' own greedy tokens (fp32), the reference for parity."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(prompt):].tolist()


def assert_pool_whole(engine) -> None:
    """Nothing is held once every request ended; dropping the prefix cache frees every page."""
    engine.pool.check_integrity()
    assert all(engine.pool.held(m) == 0 for m in engine.pool.models)
    assert engine.pool.num_free + engine.pool.num_cached == engine.pool.total
    engine.kv.clear_cache()
    assert engine.pool.num_free == engine.pool.total
