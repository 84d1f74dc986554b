"""The real model: SmolLM2-135M-Instruct, fp32 parity with transformers and a bf16 answer."""

import pytest
import torch

from muxd.core.sequence import SamplingParams
from muxd.engine.llm_engine import LLMEngine
from muxd.models.loader import load_model
from muxd.models.tokenizer import load_tokenizer

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
]
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def prompts(smollm2_dir):
    tok = load_tokenizer(smollm2_dir)
    return tok, [tok.apply_chat_template([{"role": "user", "content": q}]) for q in QUESTIONS]


def test_greedy_tokens_match_transformers_on_real_prompts(smollm2_dir, prompts):
    from transformers import AutoModelForCausalLM

    _, ids = prompts
    engine = LLMEngine({"smol": load_model(smollm2_dir, "float32")}, kv_cache_bytes=64 << 20)
    ours = [o.output_ids for o in engine.generate("smol", ids, SamplingParams(max_tokens=NEW_TOKENS))]
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    for prompt, got in zip(ids, ours):
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False)
        assert got == out[0, len(prompt):].tolist()  # both stop at EOS


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_demo_model_names_paris(smollm2_dir, prompts, dtype):
    tok, ids = prompts
    engine = LLMEngine({"smol": load_model(smollm2_dir, dtype)}, kv_cache_bytes=64 << 20, decoders={"smol": tok.decode})
    (out,) = engine.generate("smol", ids[:1], SamplingParams(max_tokens=12))
    assert "Paris" in out.text
