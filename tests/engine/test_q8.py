"""The q8 CPU linear: its C kernel against the same arithmetic in torch, and models served with it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from muxd.core.sequence import SamplingParams
from muxd.engine import cpu_isa, cpu_kernels, q8
from muxd.engine.llm_engine import LLMEngine
from muxd.engine.cpu_kernels import load_kernels
from muxd.engine.q8 import Q8Linear, dequantize, quantize_weight, reference_linear
from muxd.errors import ModelLoadError
from muxd.models.loader import load_model
from muxd.models.tokenizer import load_tokenizer
from muxd.sched.base import SchedulerConfig


@pytest.fixture
def kernel(cpu_isa_name):
    """The kernel library of each build this CPU runs (MUXD_CPU_ISA set for the test)."""
    lib = load_kernels()
    if lib is None:
        pytest.skip("no C compiler here: q8 runs its torch fallback (tested below)")
    assert lib.muxd_isa().decode() == cpu_isa_name
    return lib


def make_linear(k: int, n: int, bias: bool, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


# K not a multiple of 64 exercises the padding; N not a multiple of 4 the tail rows;
# M of 1-9 the activation-row tiles (4 at a time).
SHAPES = [(576, 960, False), (100, 37, True), (64, 4, False), (130, 9, True)]


@pytest.mark.parametrize(("k", "n", "bias"), SHAPES)
@pytest.mark.parametrize("m", [1, 2, 5, 9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_computes_the_reference_arithmetic(kernel, k, n, bias, m, dtype) -> None:
    layer = Q8Linear(make_linear(k, n, bias))
    x = torch.randn(m, k).to(dtype)
    y = layer(x)
    assert y.dtype == dtype and y.shape == (m, n)
    want = reference_linear(x, layer.weight_q, layer.weight_scale, layer.bias_f32)
    # Integer dot products are exact on both sides; what differs is fp32
    # summation order (and, in bf16, the output's rounding).
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(y.float(), want, rtol=tol, atol=tol * want.abs().max().item())


@pytest.mark.parametrize("m", [1, 6])
def test_every_build_computes_what_the_best_build_does(kernel, m) -> None:
    best = load_kernels(cpu_isa.best().name)
    layer = Q8Linear(make_linear(576, 130, True))
    x = torch.randn(m, 576)
    got = layer(x)
    layer.kernel = best
    torch.testing.assert_close(got, layer(x), rtol=1e-5, atol=1e-5)


def test_kernel_is_deterministic_across_thread_counts(kernel) -> None:
    layer = Q8Linear(make_linear(576, 1536, False))
    x = torch.randn(3, 576)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(layer(x))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


def test_q8_is_close_to_the_full_precision_linear() -> None:
    linear = make_linear(576, 960, True)
    x = torch.randn(4, 576)
    want = linear(x)
    got = Q8Linear(linear)(x)
    assert ((got - want).norm() / want.norm()).item() < 0.02


def test_weights_are_int8_padded_to_whole_chunks_with_an_fp16_scale_per_group_of_32() -> None:
    weight = torch.randn(5, 100)
    weight[2, 40] = 50.0  # an outlier coarsens its own group only
    weight_q, scale = quantize_weight(weight)
    assert weight_q.dtype == torch.int8 and weight_q.shape == (5, 128)
    assert scale.dtype == torch.float16 and scale.shape == (5, 4)
    assert weight_q.abs().max().item() <= 127
    assert not weight_q[:, 100:].any()
    back = dequantize(weight_q, scale, 100)
    err = (back - weight).abs()
    assert err[2, 32:64].max() <= scale[2, 1].float() / 2 * 1.01
    assert err[2, :32].max() <= scale[2, 0].float() / 2 * 1.01 < 0.05


def test_the_torch_fallback_gives_the_kernels_results(kernel) -> None:
    layer = Q8Linear(make_linear(130, 9, True))
    x = torch.randn(3, 130)
    fast = layer(x)
    layer.kernel = None  # as on a machine without a C compiler
    torch.testing.assert_close(layer(x), fast, rtol=1e-5, atol=1e-5)


def test_a_cast_layer_still_computes_the_same(kernel) -> None:
    """``.float()`` turns the fp16 scales to fp32, which the kernel does not read:
    the layer notices and takes the torch path."""
    layer = Q8Linear(make_linear(130, 9, True))
    x = torch.randn(3, 130)
    before = layer(x)
    layer.float()
    assert layer.weight_scale.dtype == torch.float32
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)


def test_no_compiler_means_the_fallback_not_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(cpu_kernels, "_compiler", lambda: None)
    load_kernels.cache_clear()
    try:
        assert load_kernels() is None
        layer = Q8Linear(make_linear(64, 8, False))
        assert layer.kernel is None and layer(torch.randn(2, 64)).shape == (2, 8)
    finally:
        load_kernels.cache_clear()


def test_every_family_loads_and_generates_with_q8(tiny_model_dirs) -> None:
    for family, path in tiny_model_dirs.items():
        loaded = load_model(path, "bfloat16", quantization="q8")
        linears = [m for m in loaded.model.modules() if isinstance(m, nn.Linear)]
        assert not linears, family  # every linear, lm_head included, is a Q8Linear
        assert isinstance(loaded.model.lm_head, Q8Linear)
        engine = LLMEngine({family: loaded}, kv_cache_bytes=8 << 20)
        (out,) = engine.generate(family, [[1, 2, 3, 4, 5, 6, 7]], SamplingParams(max_tokens=4, ignore_eos=True))
        assert len(out.output_ids) == 4, family


@pytest.mark.parametrize("use_kernel", [True, False])
def test_no_rows_in_no_rows_out(use_kernel) -> None:
    layer = Q8Linear(make_linear(64, 8, False))
    if not use_kernel:
        layer.kernel = None
    assert layer(torch.empty(0, 64)).shape == (0, 8)
    assert layer(torch.empty(2, 0, 64, dtype=torch.bfloat16)).shape == (2, 0, 8)


def test_a_prompt_prefilled_in_chunks_decodes_as_one_prefilled_at_once(tiny_model_dirs) -> None:
    """Chunks that sample nothing hand lm_head zero rows."""
    outputs = []
    for chunk in (8, 16):  # both under GEMM_ROWS: the same per-row arithmetic
        loaded = load_model(tiny_model_dirs["llama"], "float32", quantization="q8")
        config = SchedulerConfig(max_prefill_tokens=chunk)
        engine = LLMEngine({"m": loaded}, kv_cache_bytes=8 << 20, scheduler_config=config)
        (out,) = engine.generate("m", [list(range(3, 40))], SamplingParams(max_tokens=4, ignore_eos=True))
        outputs.append(out.output_ids)
    assert outputs[0] == outputs[1]


def test_q8_greedy_tokens_equal_the_torch_fallbacks(kernel, tiny_model_dirs) -> None:
    """The served model with the C kernel decodes as the same model on the reference arithmetic."""
    path = tiny_model_dirs["qwen2"]  # biases on q/k/v
    outputs = []
    for use_kernel in (True, False):
        loaded = load_model(path, "float32", quantization="q8")
        if not use_kernel:
            for module in loaded.model.modules():
                if isinstance(module, Q8Linear):
                    module.kernel = None
        engine = LLMEngine({"m": loaded}, kv_cache_bytes=8 << 20)
        prompts = [[5, 9, 13, 2, 7, 11], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]]
        outputs.append([o.output_ids for o in engine.generate("m", prompts, SamplingParams(max_tokens=8, ignore_eos=True))])
    assert outputs[0] == outputs[1]


def test_q8_weights_take_a_quarter_of_fp32(tiny_model_dirs) -> None:
    fp32 = load_model(tiny_model_dirs["llama"], "float32")
    quant = load_model(tiny_model_dirs["llama"], "float32", quantization="q8")

    def linear_bytes(model) -> int:
        return sum(
            t.numel() * t.element_size()
            for m in model.modules()
            if isinstance(m, (Q8Linear, nn.Linear)) or type(m).__name__ == "PackedLinear"
            for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))
        )

    assert linear_bytes(quant.model) < 0.3 * linear_bytes(fp32.model)
    assert quant.step_read_bytes < fp32.step_read_bytes


def test_q8_on_a_gpu_device_is_refused_by_name(tiny_model_dirs) -> None:
    with pytest.raises(ModelLoadError, match="q8 is a CPU kernel"):
        load_model(tiny_model_dirs["llama"], "float32", device="cuda", quantization="q8")


def test_unknown_quantization_lists_q8(tiny_model_dirs) -> None:
    with pytest.raises(ValueError, match="q8, int8, nf4, fp4"):
        load_model(tiny_model_dirs["llama"], quantization="int4")


@pytest.mark.slow
def test_smollm2_q8_with_fp32_activations_names_the_capitals(smollm2_dir) -> None:
    """The demo's setting. (bf16 activations are not enough: SmolLM2's first
    answer token to the France question is a near-tie there.)"""
    tok = load_tokenizer(smollm2_dir)
    questions = {"France": "Paris", "Germany": "Berlin"}
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"What is the capital of {c}?"}]) for c in questions]
    loaded = load_model(smollm2_dir, "float32", quantization="q8")
    engine = LLMEngine({"m": loaded}, kv_cache_bytes=16 << 20, decoders={"m": tok.decode})
    outs = engine.generate("m", prompts, SamplingParams(max_tokens=10))
    assert [capital in out.text for out, capital in zip(outs, questions.values())] == [True, True]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_many_rows_go_through_a_gemm_on_the_dequantized_weight(kernel, dtype) -> None:
    """In bf16 where this CPU has oneDNN's bf16 path, else in fp32."""
    layer = Q8Linear(make_linear(130, 9, True))
    x = torch.randn(q8.GEMM_ROWS + 3, 130).to(dtype)
    gemm = q8.gemm_dtype()
    assert gemm == (torch.bfloat16 if cpu_isa.bf16_supported() else torch.float32)
    dequantized = dequantize(layer.weight_q, layer.weight_scale, 130).to(gemm)
    want = torch.nn.functional.linear(x.to(gemm), dequantized, layer.bias_f32.to(gemm)).to(dtype)
    got = layer(x)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want)
    # and, up to the activations' rounding, what the GEMV kernel computes row by row
    per_row = torch.cat([layer(x[i : i + 1]) for i in range(x.shape[0])])
    assert ((got.float() - per_row.float()).norm() / per_row.float().norm()).item() < 0.02


@pytest.mark.parametrize("m", [1, 5, q8.GEMM_ROWS - 1])
def test_a_prefills_rows_are_computed_from_finer_activations_than_int8(kernel, m) -> None:
    """Two int8 passes (x, then its rounding error): about 15 bits of x, finer than
    one int8 pass and than bf16, against the dequantized weight in fp32."""
    layer = Q8Linear(make_linear(576, 300, True))
    x = torch.randn(m, 576)
    exact = torch.nn.functional.linear(x, dequantize(layer.weight_q, layer.weight_scale, 576), layer.bias_f32)
    err = {
        "prefill": (layer.prefill(x) - exact).norm(),
        "int8": (layer(x) - exact).norm(),
        "bf16": (torch.nn.functional.linear(x.bfloat16().float(), dequantize(layer.weight_q, layer.weight_scale, 576), layer.bias_f32) - exact).norm(),
    }
    assert err["prefill"] < err["int8"] / 50 and err["prefill"] < err["bf16"] / 5, err
    want = reference_linear(x, layer.weight_q, layer.weight_scale, layer.bias_f32, fine=True)  # the torch fallback's
    torch.testing.assert_close(layer.prefill(x), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
