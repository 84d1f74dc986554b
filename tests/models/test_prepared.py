"""Prepared weights (``models.prepared``): a second load reads the fused, quantized
tensors the first one saved, and serves exactly what an unprepared load serves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from muxd.core.sequence import SamplingParams
from muxd.engine.llm_engine import LLMEngine
from muxd.models import prepared
from muxd.models.loader import LoadedModel, load_model

PROMPTS = [[5, 9, 13, 2, 7, 11], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]]


@pytest.fixture(autouse=True)
def any_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny checkpoints are far below the size worth a file."""
    monkeypatch.setattr(prepared, "MIN_BYTES", 0)


def greedy(loaded: LoadedModel) -> list[list[int]]:
    engine = LLMEngine({"m": loaded}, kv_cache_bytes=8 << 20)
    return [o.output_ids for o in engine.generate("m", PROMPTS, SamplingParams(max_tokens=8, ignore_eos=True))]


def files(root: Path) -> list[Path]:
    return sorted(root.glob("*.safetensors"))


@pytest.mark.parametrize("quantization", ["none", "q8"])
@pytest.mark.parametrize("family", ["llama3", "qwen2"])  # a tied head; q/k/v biases
def test_a_prepared_load_serves_what_the_checkpoint_does(tiny_model_dirs, tmp_path, family, quantization) -> None:
    path = tiny_model_dirs[family]
    plain = load_model(path, "float32", quantization=quantization, use_prepared=False)
    first = load_model(path, "float32", quantization=quantization, prepared_dir=tmp_path)
    second = load_model(path, "float32", quantization=quantization, prepared_dir=tmp_path)
    assert (plain.prepared, first.prepared, second.prepared) == (False, False, True)
    assert len(files(tmp_path)) == 1
    assert second.plan == plain.plan and second.weight_bytes == plain.weight_bytes
    state, ref = second.model.state_dict(), plain.model.state_dict()
    assert state.keys() == ref.keys()
    for name, tensor in ref.items():
        if tensor.layout == torch.strided:  # oneDNN's packed weights are opaque
            assert torch.equal(state[name], tensor), name
    assert greedy(second) == greedy(plain)


def test_each_plan_has_its_own_file(tiny_model_dirs, tmp_path) -> None:
    path = tiny_model_dirs["llama"]
    load_model(path, "float32", prepared_dir=tmp_path)
    assert not load_model(path, "float32", quantization="q8", prepared_dir=tmp_path).prepared
    assert len(files(tmp_path)) == 2
    assert load_model(path, "float32", prepared_dir=tmp_path).prepared
    assert load_model(path, "float32", quantization="q8", prepared_dir=tmp_path).prepared


def test_a_changed_checkpoint_is_prepared_again(tiny_model_dirs, tmp_path) -> None:
    path = tmp_path / "model"
    path.mkdir()
    for f in tiny_model_dirs["llama"].iterdir():
        (path / f.name).write_bytes(f.read_bytes())
    cache = tmp_path / "prepared"
    load_model(path, "float32", quantization="q8", prepared_dir=cache)
    weights = next(path.glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    again = load_model(path, "float32", quantization="q8", prepared_dir=cache)
    assert not again.prepared
    assert len(files(cache)) == 1  # replaced, not joined
    assert load_model(path, "float32", quantization="q8", prepared_dir=cache).prepared


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other_tensors"])
def test_a_damaged_file_falls_back_to_the_checkpoint_and_is_rewritten(tiny_model_dirs, tmp_path, damage) -> None:
    path = tiny_model_dirs["qwen2"]
    plain = load_model(path, "float32", quantization="q8", use_prepared=False)
    load_model(path, "float32", quantization="q8", prepared_dir=tmp_path)
    (file,) = files(tmp_path)
    data = file.read_bytes()
    if damage == "truncated":
        file.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        file.write_bytes(os.urandom(len(data)))
    else:  # a valid file with the right key but another model's tensors
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(file, "pt") as f:
            metadata = f.metadata()
        save_file({"embed_tokens.weight": torch.zeros(3, 4)}, file, metadata=metadata)
    fallback = load_model(path, "float32", quantization="q8", prepared_dir=tmp_path)
    assert not fallback.prepared
    assert greedy(fallback) == greedy(plain)
    assert files(tmp_path) == [file] and not list(tmp_path.glob(".*partial"))
    assert load_model(path, "float32", quantization="q8", prepared_dir=tmp_path).prepared


def test_a_cache_that_cannot_be_written_costs_only_the_speed(tiny_model_dirs, tmp_path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    loaded = load_model(tiny_model_dirs["llama"], "float32", quantization="q8", prepared_dir=blocked)
    assert not loaded.prepared and greedy(loaded)


def test_auto_quantization_reads_the_file_of_the_plan_it_measures(tiny_model_dirs, tmp_path) -> None:
    path = tiny_model_dirs["llama"]
    first = load_model(path, "float32", quantization="auto", prepared_dir=tmp_path)
    second = load_model(path, "float32", quantization="auto", prepared_dir=tmp_path)
    assert second.prepared and second.plan == first.plan
    plain = load_model(path, "float32", quantization=first.plan.quantization, use_prepared=False)
    assert greedy(second) == greedy(plain)


def test_small_checkpoints_get_no_file(tiny_model_dirs, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(prepared, "MIN_BYTES", 32 << 20)
    assert not load_model(tiny_model_dirs["llama"], "float32", prepared_dir=tmp_path).prepared
    assert files(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["none", "q8"])
def test_smollm2_prepared_answers_as_its_checkpoint_does(smollm2_dir, tmp_path, monkeypatch, quantization) -> None:
    from muxd.models.tokenizer import load_tokenizer

    monkeypatch.setattr(prepared, "MIN_BYTES", 32 << 20)  # the real size threshold: SmolLM2 is above it
    tok = load_tokenizer(smollm2_dir)
    questions = ["What is the capital of France?", "Write one sentence about the sea."]
    ids = [tok.apply_chat_template([{"role": "user", "content": q}]) for q in questions]
    outputs = []
    for use_prepared in (False, True, True):  # the checkpoint; the load that writes the file; the one that reads it
        loaded = load_model(smollm2_dir, "float32", quantization=quantization, prepared_dir=tmp_path,
                            use_prepared=use_prepared)  # fmt: skip
        engine = LLMEngine({"m": loaded}, kv_cache_bytes=32 << 20)
        params = SamplingParams(max_tokens=16, ignore_eos=True)
        outputs.append((loaded.prepared, [o.output_ids for o in engine.generate("m", ids, params)]))
    assert [p for p, _ in outputs] == [False, False, True]
    assert outputs[0][1] == outputs[1][1] == outputs[2][1]
