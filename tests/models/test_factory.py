"""The tiny checkpoint factory: real, loadable, varied and reproducible models of every family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from muxd.models.factory import FAMILIES, IM_END, build_tiny_checkpoint

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_same_seed_gives_bit_identical_files(tmp_path: Path) -> None:
    a = build_tiny_checkpoint("qwen3", tmp_path / "a", seed=3)
    b = build_tiny_checkpoint("qwen3", tmp_path / "b", seed=3)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_different_seeds_give_different_weights(tmp_path: Path) -> None:
    a = weights(build_tiny_checkpoint("llama", tmp_path / "a", seed=0))
    b = weights(build_tiny_checkpoint("llama", tmp_path / "b", seed=1))
    assert not torch.equal(a["model.embed_tokens.weight"], b["model.embed_tokens.weight"])


def test_families_of_equal_shape_get_different_weights(tiny_model_dirs: dict[str, Path]) -> None:
    llama, mistral = weights(tiny_model_dirs["llama"]), weights(tiny_model_dirs["mistral"])
    assert llama.keys() == mistral.keys()
    assert not torch.equal(llama["model.embed_tokens.weight"], mistral["model.embed_tokens.weight"])


def test_building_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build_tiny_checkpoint("llama", tmp_path / "m")
    assert torch.equal(torch.rand(4), expected)


def test_overrides_change_the_shape(tmp_path: Path) -> None:
    path = build_tiny_checkpoint("llama", tmp_path / "big", hidden_size=256, num_hidden_layers=3)
    config = AutoConfig.from_pretrained(path)
    assert (config.hidden_size, config.num_hidden_layers) == (256, 3)


def test_unknown_family_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="choose one of"):
        build_tiny_checkpoint("gpt2", tmp_path / "m")


def test_family_features_are_in_the_config(tiny_model_dirs: dict[str, Path]) -> None:
    llama3 = AutoConfig.from_pretrained(tiny_model_dirs["llama3"])
    assert llama3.rope_parameters["rope_type"] == "llama3"
    assert llama3.tie_word_embeddings
    qwen3 = AutoConfig.from_pretrained(tiny_model_dirs["qwen3"])
    assert qwen3.head_dim != qwen3.hidden_size // qwen3.num_attention_heads
    assert "model.layers.0.self_attn.q_norm.weight" in weights(tiny_model_dirs["qwen3"])
    assert "model.layers.0.self_attn.q_proj.bias" in weights(tiny_model_dirs["qwen2"])
    assert not AutoConfig.from_pretrained(tiny_model_dirs["llama"]).tie_word_embeddings


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_and_generates_varied_tokens(tiny_model_dirs: dict[str, Path], family: str) -> None:
    path = tiny_model_dirs[family]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=24, min_new_tokens=24, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert len(new) == 24
    assert len(set(new)) >= 8, f"{family} greedily repeats itself: {new}"


def test_chat_template_is_chatml_and_eos_ends_a_turn(tiny_model_dirs: dict[str, Path]) -> None:
    path = tiny_model_dirs["llama"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    assert tokenizer.eos_token_id == im_end
    assert AutoModelForCausalLM.from_pretrained(path).generation_config.eos_token_id == im_end
    assert len(tokenizer.encode("<|im_start|>")) == 1


def test_tokenizer_round_trips_any_text(tiny_model_dirs: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs["qwen2"])
    text = "héllo wörld, 日本語 and émoji 🙂 in\ttabs"
    assert tokenizer.decode(tokenizer.encode(text)) == text
