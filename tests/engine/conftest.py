from __future__ import annotations

import torch

from tests import pool_checks


def hf_greedy(path, prompt: list[int], n: int) -> list[int]:
    """transformers' own greedy tokens (fp32), the reference for parity."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(prompt):].tolist()


def assert_pool_whole(engine) -> None:
    """See ``tests.pool_checks.assert_pool_whole``: the engine's pool after every request ended."""
    pool_checks.assert_pool_whole(engine.kv)
