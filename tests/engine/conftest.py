from __future__ import annotations

import pytest
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


def runnable_isas() -> list[str]:
    """Every build of the CPU kernels this host can execute (engine/cpu_isa.py)."""
    from muxd.engine import cpu_isa

    return [isa.name for isa in cpu_isa.runnable()]


@pytest.fixture(params=runnable_isas())
def cpu_isa_name(request, monkeypatch) -> str:
    """Runs the test once per kernel build this host executes, forced with MUXD_CPU_ISA."""
    from muxd.engine import cpu_isa

    monkeypatch.setenv(cpu_isa.ENV, request.param)
    return request.param
