"""Random-weight models made without a checkpoint: real shapes, and muxd's tokens equal their twin's."""

import pytest
import torch

from muxd.core.sequence import SamplingParams
from muxd.engine.llm_engine import LLMEngine
from muxd.models.factory import ENDOFTEXT, IM_END, build_tokenizer
from muxd.models.loader import from_hf_model, load_model
from muxd.models.spec import ModelSpec
from muxd.models.synthetic import PRESETS, random_config, random_hf_model

PROMPTS = [[5, 17, 99, 3, 42, 8], list(range(30, 50))]
GREEDY = SamplingParams(max_tokens=10, ignore_eos=True)


@pytest.mark.parametrize(
    ("name", "billions"), [("llama-3.2-1b", 1.236), ("qwen2.5-3b", 3.086), ("llama-3.1-8b", 8.030)]
)
def test_presets_have_the_real_models_parameter_counts(name, billions):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: no memory, no init
        model = AutoModelForCausalLM.from_config(random_config(f"random:{name}"))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.001)
    assert ModelSpec.from_hf_config(model.config).vocab_size == PRESETS[name][1]["vocab_size"]


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3"])
def test_muxd_greedy_tokens_equal_its_transformers_twins(family, device):
    hf = random_hf_model(f"random:{family}", torch.float32, device, seed=3)
    loaded = from_hf_model(hf, f"random:{family}", torch.float32, device)
    engine = LLMEngine({"m": loaded}, kv_cache_bytes=4 << 20, page_tokens=8)
    outputs = engine.generate("m", PROMPTS, GREEDY)
    for prompt, out in zip(PROMPTS, outputs):
        ids = torch.tensor([prompt], device=device)
        ref = hf.generate(ids, max_new_tokens=10, min_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert out.output_ids == ref[0, len(prompt):].tolist()


def test_load_model_makes_a_random_model_by_name(device):
    from muxd.engine import cpu_isa

    loaded = load_model("random:llama", "bfloat16", device)
    # the kernel plan: fp32 on a CPU where oneDNN has no bf16 path
    bf16 = torch.device(device).type != "cpu" or cpu_isa.bf16_supported()
    assert loaded.dtype == (torch.bfloat16 if bf16 else torch.float32) and loaded.device.type == torch.device(device).type
    assert loaded.spec.eos_token_ids == (build_tokenizer().convert_tokens_to_ids(IM_END),)
    assert random_config("random:llama").pad_token_id == build_tokenizer().convert_tokens_to_ids(ENDOFTEXT)


def test_an_unknown_random_model_names_the_choices():
    with pytest.raises(ValueError, match="random:llama-3.1-8b"):
        random_config("random:gpt-5")
