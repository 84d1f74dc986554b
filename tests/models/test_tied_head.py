"""A tied lm_head is the embedding table itself, held once, whatever the quantization."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from muxd.engine.model import PackedLinear, TiedLinear, pack_linears
from muxd.models.loader import LoadedModel, load_model
from muxd.models.quantize import quant_state_tensors, unique_bytes

KINDS = ["none", "int8", "nf4"]  # "q8" has a quantized head of its own (tests/engine/test_q8.py)


def weight_tensors(loaded: LoadedModel) -> list[torch.Tensor]:
    model = loaded.model
    return [*model.parameters(), *model.buffers(), *quant_state_tensors(model)]


@pytest.mark.parametrize("kind", KINDS)
def test_a_tied_head_shares_the_embedding_tensor_and_is_counted_once(tiny_model_dirs, kind) -> None:
    loaded = load_model(tiny_model_dirs["llama3"], "float32", quantization=kind)
    assert loaded.spec.tie_word_embeddings
    embed, head = loaded.model.embed_tokens.weight, loaded.model.lm_head
    assert isinstance(head, TiedLinear) and head.weight is embed
    assert head.weight.data_ptr() == embed.data_ptr()
    # No second copy of the table, packed or not, anywhere in the model.
    assert [t for t in weight_tensors(loaded) if t.shape == embed.shape] == [embed]
    table = embed.numel() * embed.element_size()
    assert loaded.weight_bytes == unique_bytes([t for t in weight_tensors(loaded) if t is not embed]) + table
    assert loaded.step_read_bytes == loaded.weight_bytes  # a step reads the table as its head


def test_a_tied_packed_model_weighs_what_the_unpacked_one_does(tiny_model_dirs) -> None:
    packed = load_model(tiny_model_dirs["llama3"], "float32")
    plain = load_model(tiny_model_dirs["llama3"], "float32", pack=False)
    assert any(isinstance(m, PackedLinear) for m in packed.model.modules())
    assert packed.weight_bytes == plain.weight_bytes


@pytest.mark.parametrize("kind", KINDS)
def test_an_untied_model_keeps_its_own_head(tiny_model_dirs, kind) -> None:
    loaded = load_model(tiny_model_dirs["llama"], "float32", quantization=kind)
    assert not loaded.spec.tie_word_embeddings
    embed, head = loaded.model.embed_tokens.weight, loaded.model.lm_head
    assert isinstance(head, PackedLinear)
    assert head.packed_weight.shape == embed.shape and head.packed_weight is not embed
    table = embed.numel() * embed.element_size()
    assert loaded.step_read_bytes == loaded.weight_bytes - table  # the table is only indexed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_tied_linear_computes_what_f_linear_does(dtype) -> None:
    from muxd.engine import cpu_isa

    if dtype == torch.bfloat16 and not cpu_isa.bf16_supported():
        pytest.skip("oneDNN has no bf16 path on this CPU: the loader's plan runs bf16 models in fp32")
    torch.manual_seed(0)
    embedding, head = nn.Embedding(96, 32), nn.Linear(32, 96, bias=False)
    head.weight = embedding.weight
    model = nn.ModuleDict({"embed": embedding, "head": head, "other": nn.Linear(32, 32)}).to(dtype)
    pack_linears(model)
    assert isinstance(model["head"], TiedLinear) and model["head"].weight is model["embed"].weight
    assert isinstance(model["other"], PackedLinear)  # a linear of its own is still packed
    with torch.inference_mode():
        for rows in (1, 3, 17):
            x = torch.randn(rows, 32, dtype=dtype)
            torch.testing.assert_close(model["head"](x), F.linear(x, model["embed"].weight))
