"""Quantized models: bitsandbytes int8 / NF4 / FP4 block linears, served by the engine."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from muxd.core.sequence import SamplingParams
from muxd.engine.llm_engine import LLMEngine
from muxd.engine.model import TiedLinear
from muxd.errors import ModelLoadError
from muxd.models.loader import LoadedModel, load_model
from muxd.models.quantize import BLOCK_LINEARS, quant_state_tensors, unique_bytes
from muxd.models.tokenizer import load_tokenizer

QUESTION = "What is the capital of France?"
KV_BYTES = 32 << 20


@pytest.fixture(scope="module")
def smollm2(smollm2_dir) -> dict[str, LoadedModel]:
    """SmolLM2-135M loaded once per module: full precision, int8 and nf4 (fp32 compute)."""
    return {kind: load_model(smollm2_dir, "float32", quantization=kind) for kind in ("none", "int8", "nf4")}


@pytest.fixture(scope="module")
def chat(smollm2_dir):
    tok = load_tokenizer(smollm2_dir)
    return tok, tok.apply_chat_template([{"role": "user", "content": QUESTION}])


def answer(models: dict[str, LoadedModel], name: str, chat, max_tokens: int = 12):
    tok, prompt = chat
    engine = LLMEngine(models, kv_cache_bytes=KV_BYTES, decoders={n: tok.decode for n in models})
    (out,) = engine.generate(name, [prompt], SamplingParams(max_tokens=max_tokens))
    return out


def block_linear_bytes(loaded: LoadedModel) -> int:
    """Bytes of the transformer blocks' linears: weights, biases, scales and absmax."""
    layers = [m for name, m in loaded.model.named_modules() if name.rsplit(".", 1)[-1] in BLOCK_LINEARS]
    tensors = [t for m in layers for t in (*m.parameters(), *m.buffers())]
    return unique_bytes(tensors + [t for m in layers for t in quant_state_tensors(m)])


def test_int8_gives_the_fp32_greedy_tokens(smollm2, chat) -> None:
    fp32 = answer({"m": smollm2["none"]}, "m", chat, max_tokens=8)
    int8 = answer({"m": smollm2["int8"]}, "m", chat, max_tokens=8)
    assert int8.output_ids == fp32.output_ids
    assert "Paris" in int8.text


def test_nf4_still_names_paris(smollm2, chat) -> None:
    assert "Paris" in answer({"m": smollm2["nf4"]}, "m", chat).text


@pytest.mark.parametrize(("kind", "fraction"), [("int8", 1 / 4), ("nf4", 1 / 8)])
def test_quantized_linears_take_their_fraction_of_fp32(smollm2, kind, fraction) -> None:
    ratio = block_linear_bytes(smollm2[kind]) / block_linear_bytes(smollm2["none"])
    assert ratio == pytest.approx(fraction, rel=0.10)


@pytest.mark.parametrize(("kind", "most"), [("int8", 0.45), ("nf4", 0.35)])
def test_quantized_smollm2_holds_its_tied_embedding_once(smollm2, kind, most) -> None:
    """The tied head is the embedding table, not a packed copy beside it (113 MB in fp32)."""
    ratio = smollm2[kind].weight_bytes / smollm2["none"].weight_bytes
    assert ratio <= most
    for loaded in (smollm2["none"], smollm2[kind]):
        assert loaded.model.lm_head.weight is loaded.model.embed_tokens.weight


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_weight_bytes_count_quantized_linears_with_their_scales(smollm2, kind) -> None:
    fp32, quant = smollm2["none"], smollm2[kind]
    assert quant_state_tensors(quant.model)  # the scales exist and are counted below
    rest = fp32.weight_bytes - block_linear_bytes(fp32)  # embeddings, norms, lm_head: unchanged
    assert quant.weight_bytes == rest + block_linear_bytes(quant)
    assert quant.step_read_bytes == quant.weight_bytes - (fp32.weight_bytes - fp32.step_read_bytes)


def test_only_block_linears_are_quantized_and_the_tied_lm_head_is_the_embedding(smollm2) -> None:
    import bitsandbytes as bnb

    model = smollm2["int8"].model
    block = model.layers[0]
    for layer in (block.self_attn.qkv_proj, block.self_attn.o_proj, block.mlp.gate_up_proj, block.mlp.down_proj):
        assert isinstance(layer, bnb.nn.Linear8bitLt) and layer.weight.dtype == torch.int8
    assert isinstance(model.lm_head, TiedLinear) and model.lm_head.weight is model.embed_tokens.weight
    assert model.embed_tokens.weight.dtype == torch.float32
    assert isinstance(smollm2["nf4"].model.layers[0].mlp.down_proj, bnb.nn.Linear4bit)


def test_quantized_and_full_precision_copies_serve_side_by_side(smollm2, chat) -> None:
    tok, prompt = chat
    models = {"smollm2": smollm2["none"], "smollm2-int8": smollm2["int8"]}
    engine = LLMEngine(models, kv_cache_bytes=KV_BYTES, decoders={n: tok.decode for n in models})
    for name in models:
        engine.add_request(name, prompt, SamplingParams(max_tokens=12))
    outputs = engine.run_until_done()
    assert sorted(o.model for o in outputs) == ["smollm2", "smollm2-int8"]
    assert all("Paris" in o.text for o in outputs)


def test_int8_matmuls_log_no_warnings(smollm2, chat, caplog: pytest.LogCaptureFixture) -> None:
    answer({"m": smollm2["int8"]}, "m", chat, max_tokens=2)
    assert not [r for r in caplog.records if r.name.startswith("bitsandbytes") and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["int8", "nf4", "fp4"])
def test_every_family_quantizes_and_generates(tiny_model_dirs, kind, dtype, device) -> None:
    for family, path in tiny_model_dirs.items():
        loaded = load_model(path, dtype, device, quantization=kind)
        engine = LLMEngine({family: loaded}, kv_cache_bytes=8 << 20)
        (out,) = engine.generate(family, [[1, 2, 3, 4, 5]], SamplingParams(max_tokens=4, ignore_eos=True))
        assert len(out.output_ids) == 4, family


def test_unknown_quantization_names_the_choices(tiny_model_dirs) -> None:
    with pytest.raises(ValueError, match="int8, nf4, fp4"):
        load_model(tiny_model_dirs["llama"], quantization="int4")


def test_missing_bitsandbytes_says_how_to_install_it(tiny_model_dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes ``import bitsandbytes`` fail
    with pytest.raises(ModelLoadError, match="pip install bitsandbytes"):
        load_model(tiny_model_dirs["llama"], quantization="int8")


@pytest.mark.slow
def test_bitsandbytes_is_imported_only_for_quantized_models_and_quietly(tiny_model_dirs) -> None:
    probe = (
        "import sys\n"
        "from muxd.models.loader import load_model\n"
        f"load_model({str(tiny_model_dirs['llama'])!r})\n"
        "assert 'bitsandbytes' not in sys.modules, 'imported for a full-precision model'\n"
        f"load_model({str(tiny_model_dirs['llama'])!r}, quantization='nf4')\n"
        "assert 'bitsandbytes' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
