"""The C decode attention (RoPE, KV write, attention in one call) against the torch path it replaces."""

from __future__ import annotations

import pytest
import torch

from muxd.core.sequence import SamplingParams
from muxd.engine import attention
from muxd.engine.cpu_kernels import load_kernels
from muxd.engine.llm_engine import LLMEngine
from muxd.models.loader import load_model

# The last prompt outgrows attention.c's 128 keys a part: its heads are split and merged.
PROMPTS = [[5, 9, 13, 2, 7, 11, 3, 8, 1, 4, 12], [3, 1, 4, 1, 5], list(range(20, 60)), [(7 * i) % 900 + 5 for i in range(300)]]


@pytest.fixture(scope="module", autouse=True)
def kernels():
    if load_kernels() is None:
        pytest.skip("no C compiler here: decode attention takes its torch path")


def decode(path, dtype: str, monkeypatch: pytest.MonkeyPatch, quantization: str = "none", patches=()):
    """The loaded model, greedy tokens and their logprobs of three sequences
    decoding together (and a sliding window for mistral-window: the prompts
    outgrow its 8 tokens), with ``patches`` ((object, name, value) triples) applied."""
    with monkeypatch.context() as patch:
        for target, name, value in patches:
            patch.setattr(target, name, value)
        loaded = load_model(path, dtype, quantization=quantization)
        engine = LLMEngine({"m": loaded}, kv_cache_bytes=8 << 20)
        params = SamplingParams(max_tokens=12, ignore_eos=True, logprobs=True)
        outs = engine.generate("m", PROMPTS, params)
    return loaded, [o.output_ids for o in outs], torch.tensor([o.logprobs for o in outs])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_family_decodes_as_on_the_torch_path(tiny_model_dirs, dtype, cpu_isa_name, monkeypatch) -> None:
    for family, path in tiny_model_dirs.items():
        _, ids_c, logprobs_c = decode(path, dtype, monkeypatch)
        _, ids_torch, logprobs_torch = decode(path, dtype, monkeypatch, patches=[(attention, "load_kernels", lambda: None)])
        assert ids_c == ids_torch, family
        tol = 1e-4 if dtype == "float32" else 2e-2
        torch.testing.assert_close(logprobs_c, logprobs_torch, rtol=tol, atol=tol, msg=family)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_and_the_fused_residual_add_compute_the_torch_values(dtype, cpu_isa_name, monkeypatch) -> None:
    from muxd.engine import model

    torch.manual_seed(0)
    norm = model.RMSNorm(576, 1e-5).to(dtype)
    norm.weight.data = torch.randn(576).to(dtype)
    x, residual = torch.randn(3, 576).to(dtype) * 4, torch.randn(3, 576).to(dtype)
    fast, (fast_sum, fast_norm) = norm(x), norm.add_and_norm(x, residual)
    monkeypatch.setattr(model, "load_kernels", lambda: None)
    slow, (slow_sum, slow_norm) = norm(x), norm.add_and_norm(x, residual)
    assert torch.equal(fast_sum, slow_sum)  # one rounding of one add
    # Only the mean of squares is summed in another order: fp32 agrees to
    # rounding, bf16 to one unit in the last place.
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1 / 128, "atol": 1 / 128}
    torch.testing.assert_close(fast, slow, **tol)
    torch.testing.assert_close(fast_norm, slow_norm, **tol)


def per_op():
    """The patch that keeps a q8 model's decode steps on the per-op path."""
    from muxd.engine import model

    return [(model.Transformer, "_decode_in_c", lambda *args, **kwargs: (False, None))]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_q8_decode_step_in_one_c_call_computes_what_the_per_op_path_does(tiny_model_dirs, dtype, cpu_isa_name, monkeypatch) -> None:
    for family, path in tiny_model_dirs.items():
        loaded, ids_c, logprobs_c = decode(path, dtype, monkeypatch, "q8")
        # Qwen3's q/k norms are not in decode_step.c: its model keeps the per-op path.
        assert (loaded.model._c_model(loaded.dtype) is None) == loaded.spec.qk_norm, family
        assert loaded.spec.qk_norm or loaded.model._c_model(loaded.dtype).lm_head, family  # the final norm and lm_head in the same call
        _, ids_ops, logprobs_ops = decode(path, dtype, monkeypatch, "q8", per_op())
        assert ids_c == ids_ops, family
        tol = 1e-4 if dtype == "float32" else 2e-2
        torch.testing.assert_close(logprobs_c, logprobs_ops, rtol=tol, atol=tol, msg=family)


def test_the_one_call_decode_step_splits_over_threads_without_changing_results(tiny_model_dirs, monkeypatch) -> None:
    """Two threads split every linear's rows and the batch's attention heads."""
    results = []
    for threads in (1, 2):
        with monkeypatch.context() as patch:
            patch.setattr(torch, "get_num_threads", lambda t=threads: t)
            results.append(decode(tiny_model_dirs["llama"], "float32", monkeypatch, "q8")[1])
    assert results[0] == results[1]


def test_every_build_this_cpu_runs_decodes_the_tokens_of_the_best(tiny_model_dirs, cpu_isa_name, monkeypatch) -> None:
    """Each instruction set's kernels (forced with MUXD_CPU_ISA) against the
    best build's, in a q8 model's one-call decode step and the per-op path.
    (The prefill GEMM's dtype follows the CPU's bf16 support; fixed here.)"""
    from muxd.engine import cpu_isa, q8

    monkeypatch.setattr(q8, "gemm_dtype", lambda: torch.float32)
    for family in ("llama", "qwen2", "qwen3"):
        loaded, ids, logprobs = decode(tiny_model_dirs[family], "float32", monkeypatch, "q8")
        assert loaded.model.layers[0].mlp.down_proj.kernel.muxd_isa().decode() == cpu_isa_name
        with monkeypatch.context() as patch:
            patch.setenv(cpu_isa.ENV, cpu_isa.best().name)
            _, best_ids, best_logprobs = decode(tiny_model_dirs[family], "float32", monkeypatch, "q8")
        assert ids == best_ids, family
        # Sums in another order (16, 8 or 1 lanes) can move an activation
        # across an int8 rounding boundary: agreement to a few hundredths.
        torch.testing.assert_close(logprobs, best_logprobs, rtol=0.05, atol=0.05, msg=family)
