import ctypes

import pytest
import torch

from muxd.core.sequence import SamplingParams
from muxd.engine.cpu_kernels import load_kernels
from muxd.engine.llm_engine import LLMEngine
from muxd.engine.sampler import sample
from muxd.models.loader import load_model


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_greedy_picks_the_argmax_and_reports_its_logprob():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    tokens, logprobs = sample(logits, [SamplingParams(), SamplingParams()], gens(2))
    assert tokens.tolist() == [1, 0]
    assert torch.allclose(logprobs, torch.log_softmax(logits, -1)[[0, 1], [1, 0]])


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(1))
    params = [SamplingParams(temperature=1.5, top_k=1)] * 4 + [SamplingParams(temperature=1.5, top_p=1e-6)] * 4
    tokens, _ = sample(logits, params, gens(8))
    assert tokens.tolist() == logits.argmax(-1).tolist()


def test_top_k_never_samples_outside_the_k_best():
    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(2))
    best5 = set(logits[0].topk(5).indices.tolist())
    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        token, _ = sample(logits, [SamplingParams(temperature=5.0, top_k=5)], [g])
        assert token.item() in best5


def test_sampling_follows_the_softmax_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    g = torch.Generator().manual_seed(4)
    counts = torch.zeros(3)
    for _ in range(3000):
        token, _ = sample(logits, [SamplingParams(temperature=1.0)], [g])
        counts[token] += 1
    assert torch.allclose(counts / counts.sum(), torch.tensor([0.7, 0.2, 0.1]), atol=0.04)


def test_a_seeded_request_gets_the_same_tokens_whatever_it_is_batched_with(tiny_model_dirs, device):
    model = load_model(tiny_model_dirs["llama"], device=device)
    seeded = SamplingParams(max_tokens=10, temperature=1.0, seed=1234, ignore_eos=True)

    def run(batch_mates):
        engine = LLMEngine({"m": model}, kv_cache_bytes=4 << 20)
        rid = engine.add_request("m", [5, 6, 7], seeded)
        for i in range(batch_mates):
            engine.add_request("m", [9, i + 1], SamplingParams(max_tokens=10, temperature=1.0))
        return {o.request_id: o.output_ids for o in engine.run_until_done()}[rid]

    assert run(0) == run(3)


def test_logprobs_of_greedy_tokens_match_a_full_forward(tiny_model_dirs, device):
    model = load_model(tiny_model_dirs["qwen2"], device=device)
    engine = LLMEngine({"m": model}, kv_cache_bytes=4 << 20)
    (out,) = engine.generate("m", [[4, 8, 15, 16, 23, 42]], SamplingParams(max_tokens=5, ignore_eos=True))
    assert len(out.logprobs) == 5 and all(lp <= 0 for lp in out.logprobs)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["qwen2"])
    ids = torch.tensor([[4, 8, 15, 16, 23, 42] + out.output_ids])
    ref = torch.log_softmax(hf(ids).logits[0, 5:-1].float(), -1)
    expected = ref[torch.arange(5), torch.tensor(out.output_ids)]
    assert torch.allclose(torch.tensor(out.logprobs), expected, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 49152), (5, 1000), (3, 17)])
def test_greedy_tokens_and_logprobs_match_torch(shape, cpu_isa_name) -> None:
    """The C pass (argmax and log-normaliser in one) gives torch's values."""
    torch.manual_seed(0)
    logits = torch.randn(*shape) * 5
    tokens, logprobs = sample(logits, [SamplingParams()] * shape[0], [torch.Generator()] * shape[0])
    assert torch.equal(tokens, logits.argmax(-1))
    expected = torch.log_softmax(logits, -1).gather(1, tokens[:, None]).squeeze(1)
    torch.testing.assert_close(logprobs, expected, rtol=1e-5, atol=1e-5)


def test_greedy_ties_nans_and_infinities_pick_what_torch_argmax_picks(cpu_isa_name) -> None:
    logits = torch.zeros(4, 40)
    logits[0, 7] = logits[0, 9] = 1.0  # a tie: the first
    logits[1, 7] = logits[1, 9] = float("nan")  # NaN wins, the first of them
    logits[2] = float("-inf")
    logits[3, 5] = float("inf")
    tokens, logprobs = sample(logits, [SamplingParams()] * 4, [torch.Generator()] * 4)
    assert tokens.tolist() == logits.argmax(-1).tolist() == [7, 7, 0, 5]
    expected = torch.log_softmax(logits, -1).gather(1, tokens[:, None]).squeeze(1)
    torch.testing.assert_close(logprobs, expected, equal_nan=True)


class _Part(ctypes.Structure):  # kernels.h's argmax_lse_t
    _fields_ = [("best", ctypes.c_long), ("top", ctypes.c_float), ("sum", ctypes.c_float), ("nan", ctypes.c_int)]


@pytest.mark.parametrize("cuts", [[0, 9], [0, 8, 20], [0, 1, 2, 39]])
def test_a_row_split_into_parts_merges_to_what_one_pass_finds(cuts, cpu_isa_name) -> None:
    """decode_step.c has each thread sum its own share of a row's logits;
    merging the shares gives the whole row's argmax (ties, NaN, infinities
    included) and log-normaliser."""
    kernels = load_kernels()
    if kernels is None:
        pytest.skip("no C compiler here")
    part_fn, merge_fn = kernels.argmax_lse_part, kernels.argmax_lse_merge
    part_fn.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.POINTER(_Part)]
    merge_fn.argtypes = [ctypes.POINTER(_Part), ctypes.POINTER(ctypes.c_long), ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    torch.manual_seed(0)
    rows = torch.randn(6, 40) * 3
    rows[1, 8] = rows[1, 30] = 50.0  # a tie across parts: the first
    rows[2, 25] = rows[2, 33] = float("nan")  # NaN wins, the first of them
    rows[2, 3] = 60.0
    rows[3] = float("-inf")
    rows[4, 12] = float("inf")
    rows[5, :20] = float("-inf")  # a part of nothing but -inf
    for row in rows:
        ends = [*cuts[1:], row.numel()]
        parts = (_Part * len(cuts))()
        for i, (lo, hi) in enumerate(zip(cuts, ends)):
            part_fn(row[lo:hi].data_ptr(), hi - lo, ctypes.byref(parts[i]))
        offsets = (ctypes.c_long * len(cuts))(*cuts)
        token, lse = torch.zeros(1, dtype=torch.int64), torch.zeros(1)
        merge_fn(parts, offsets, len(cuts), token.data_ptr(), lse.data_ptr())
        assert token.item() == row.argmax().item()
        torch.testing.assert_close(lse, torch.logsumexp(row, 0, keepdim=True), equal_nan=True)


def _bitmask(allowed: list[list[int]], vocab: int) -> torch.Tensor:
    """llguidance's layout: bit ``j % 32`` of int32 word ``j // 32`` set where token ``j`` is allowed."""
    words = torch.zeros(len(allowed), -(-vocab // 32), dtype=torch.int64)
    for r, tokens in enumerate(allowed):
        for t in tokens:
            words[r, t // 32] |= 1 << (t % 32)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


@pytest.mark.parametrize("vocab", [49152, 1000, 37])
def test_masked_rows_pick_only_allowed_tokens_and_leave_the_other_rows_alone(vocab, cpu_isa_name) -> None:
    torch.manual_seed(1)
    logits = torch.randn(4, vocab) * 5
    allowed = [[3, vocab - 1], [31, 32, 33]]  # rows 1 and 3 constrained; token 31/32 straddle a word
    params = [SamplingParams(), SamplingParams(), SamplingParams(), SamplingParams(temperature=1.0, seed=3)]
    free_tokens, _ = sample(logits.clone(), params, [torch.Generator().manual_seed(3)] * 4)
    raw = torch.log_softmax(logits, -1)
    tokens, logprobs = sample(logits, params, [torch.Generator().manual_seed(3)] * 4, None, ([1, 3], _bitmask(allowed, vocab)))
    assert tokens[1].item() == max(allowed[0], key=lambda t: raw[1, t].item())  # greedy within the mask
    assert tokens[3].item() in allowed[1]  # a random draw stays within it too
    assert tokens[[0, 2]].tolist() == free_tokens[[0, 2]].tolist()
    assert torch.isinf(logits[1]).sum() == vocab - 2 and not torch.isinf(logits[0]).any()
    # logprobs stay those of the model's raw distribution
    torch.testing.assert_close(logprobs, raw.gather(1, tokens[:, None]).squeeze(1), rtol=1e-5, atol=1e-5)


def test_the_c_mask_computes_what_the_torch_mask_does(monkeypatch) -> None:
    import muxd.engine.sampler as sampler_module

    torch.manual_seed(2)
    logits = torch.randn(3, 4099)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (2, -(-4099 // 32)), dtype=torch.int32)
    c_logits, c_tokens = logits.clone(), torch.zeros(3, dtype=torch.int64)
    sampler_module._mask_rows(c_logits, c_tokens, [0, 2], bitmask)
    monkeypatch.setattr(sampler_module, "load_kernels", lambda: None)
    t_logits, t_tokens = logits.clone(), torch.zeros(3, dtype=torch.int64)
    sampler_module._mask_rows(t_logits, t_tokens, [0, 2], bitmask)
    assert torch.equal(c_logits, t_logits) and torch.equal(c_tokens, t_tokens)
