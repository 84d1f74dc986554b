"""The front end's tokenizer gives exactly transformers' ids, with no transformers in the front end."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from muxd.server.tokenizer import ChatTemplateError, Tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi! é 日本 🙂"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "  spaces\n\nand lines  "}],
]  # fmt: skip
TEXTS = ["Hello world", "  leading spaces", "The capital of France is Paris.", "é 日本 🙂", "<|im_start|>user"]


def ids_of(encoded) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def check_parity(path) -> None:
    ours, theirs = Tokenizer.from_dir(path), AutoTokenizer.from_pretrained(path)
    for messages in CONVERSATIONS:
        expected = ids_of(theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        assert ours.apply_chat_template(messages) == expected
        assert ours.render_chat(messages) == theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    for text in TEXTS:
        ids = theirs(text)["input_ids"]
        assert ours.encode(text) == ids
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("family", ["llama", "qwen3", "mistral"])
def test_tiny_models_match_transformers(tiny_model_dirs, family):
    check_parity(tiny_model_dirs[family])


@pytest.mark.slow
def test_smollm2_matches_transformers(smollm2_dir):
    check_parity(smollm2_dir)


def test_a_template_that_raises_is_a_chat_template_error(tiny_model_dirs):
    tok = Tokenizer.from_dir(tiny_model_dirs["llama"])
    tok.chat_template = "{{ raise_exception('only user messages, please') }}"
    with pytest.raises(ChatTemplateError, match="only user messages"):
        tok.apply_chat_template([{"role": "system", "content": "x"}])


def test_a_model_without_a_template_says_to_use_completions(tiny_model_dirs):
    tok = Tokenizer.from_dir(tiny_model_dirs["llama"])
    tok.chat_template = None
    with pytest.raises(ChatTemplateError, match="/v1/completions"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])
