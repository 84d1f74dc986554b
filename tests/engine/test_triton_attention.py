"""The Triton decode attention and K/V write against the torch path, on a CPU under ``TRITON_INTERPRET=1``.

Each case builds a pool the way a unit does (``KVCache``: pages as wide as
the widest model's rows, one KV head per page), fills it with random K/V
through block tables ``[B, M, L, Hkv]`` of scattered pages, and compares
``triton_attention.decode_attention`` with ``attention.paged_attention``.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the kernels run in Python
triton = pytest.importorskip("triton")

from muxd.engine.attention import AttentionMetadata, paged_attention  # noqa: E402
from muxd.engine.kv_cache import KVCache, KVLayout  # noqa: E402
from muxd.engine.triton_attention import decode_attention, num_splits, write_kv  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_pool(page_tokens: int, head_dim: int, widest: int, pages: int, dtype: torch.dtype, seed: int):
    """A pool whose rows are ``widest`` wide, viewed at ``head_dim``, every page filled with noise."""
    layout = KVLayout.for_models(page_tokens, [(widest, dtype), (head_dim, dtype)])
    cache = KVCache(layout, pages, DEVICE)
    k, v = cache.view(dtype, head_dim)
    gen = torch.Generator().manual_seed(seed)
    k[:-1] = torch.randn(k[:-1].shape, generator=gen).to(dtype).to(DEVICE)
    v[:-1] = torch.randn(v[:-1].shape, generator=gen).to(dtype).to(DEVICE)
    return k, v, cache.null_page


def block_tables(lengths: list[int], layers: int, kv_heads: int, page_tokens: int, null: int, seed: int):
    """``[B, M, L, Hkv]``: every (block, layer, head) of each sequence a distinct page, shuffled, padded with ``null``."""
    blocks = [-(-n // page_tokens) for n in lengths]
    M = max(blocks)
    need = sum(blocks) * layers * kv_heads
    assert need <= null, "the pool is too small for the case"
    pages = torch.randperm(null, generator=torch.Generator().manual_seed(seed))[:need].tolist()
    tables = torch.full((len(lengths), M, layers, kv_heads), null, dtype=torch.int64)
    for b, nb in enumerate(blocks):
        for m in range(nb):
            for layer in range(layers):
                for h in range(kv_heads):
                    tables[b, m, layer, h] = pages.pop()
    return tables.to(DEVICE)


def reference(q, k, v, tables, layer, lengths, page_tokens, scale, window):
    meta = AttentionMetadata.build([n - 1 for n in lengths], lengths, tables, page_tokens)
    return paged_attention(q, k, v, meta, layer, scale, window).view(q.shape)


CASES = [  # page_tokens, Hq, Hkv, head_dim, widest row, lengths, window
    pytest.param(16, 4, 4, 32, 32, [5, 16, 33], None, id="mha"),
    pytest.param(16, 9, 3, 64, 64, [1, 40, 17], None, id="gqa-3-smollm2-heads"),
    pytest.param(8, 8, 2, 32, 64, [30, 9], None, id="gqa-4-narrow-rows-in-a-wide-pool"),
    pytest.param(16, 8, 1, 16, 32, [200, 3], None, id="mqa-long-context-splits"),
    pytest.param(16, 4, 2, 32, 32, [70, 12, 33], 20, id="sliding-window"),
    pytest.param(8, 4, 2, 32, 32, [8, 16], 8, id="window-at-a-page-edge"),
]


@pytest.mark.parametrize(("page_tokens", "hq", "hkv", "d", "widest", "lengths", "window"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_attention_matches_the_torch_path(page_tokens, hq, hkv, d, widest, lengths, window, dtype):
    layers, layer = 3, 1
    blocks = sum(-(-n // page_tokens) for n in lengths)
    k, v, null = make_pool(page_tokens, d, widest, blocks * layers * hkv + 8, dtype, seed=hq + d)
    tables = block_tables(lengths, layers, hkv, page_tokens, null, seed=len(lengths))
    q = torch.randn(len(lengths), hq, d, generator=torch.Generator().manual_seed(3)).to(dtype).to(DEVICE)
    scale = d**-0.5
    want = reference(q, k, v, tables, layer, lengths, page_tokens, scale, window)
    got = decode_attention(q, k, v, tables, layer, torch.tensor(lengths, device=DEVICE), scale, window)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("window", [None, 20], ids=["full", "window"])
def test_a_short_context_in_a_wide_padded_table_spreads_over_the_splits(window):
    """A decode graph's tables are as wide as the longest context it may see (8 splits here), padded
    with the null page: each sequence's own pages are cut into the splits, some of which stay empty."""
    page_tokens, hq, hkv, d, layers, layer, width = 16, 4, 2, 32, 2, 0, 64
    lengths = [40, 3, 130]
    blocks = sum(-(-n // page_tokens) for n in lengths)
    k, v, null = make_pool(page_tokens, d, d, blocks * layers * hkv + 8, torch.float32, seed=5)
    tables = block_tables(lengths, layers, hkv, page_tokens, null, seed=6)
    padded = torch.full((len(lengths), width, layers, hkv), null, dtype=torch.int64, device=DEVICE)
    padded[:, : tables.shape[1]] = tables
    q = torch.randn(len(lengths), hq, d, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    assert num_splits(width) == 8
    want = reference(q, k, v, tables, layer, lengths, page_tokens, d**-0.5, window)
    got = decode_attention(q, k, v, padded, layer, torch.tensor(lengths, device=DEVICE), d**-0.5, window)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_split_count_depends_on_the_table_width_alone():
    assert [num_splits(m) for m in (1, 8, 9, 16, 64, 10_000)] == [1, 1, 2, 2, 8, 8]


def test_write_kv_stores_each_tokens_rows_at_its_slot_and_nothing_else():
    page_tokens, hkv, d = 8, 2, 32
    k_cache, v_cache, null = make_pool(page_tokens, d, 64, 16, torch.float32, seed=1)
    before_k, before_v = k_cache.clone(), v_cache.clone()
    k = torch.randn(4, hkv, d).to(DEVICE)
    v = torch.randn(4, hkv, d).to(DEVICE)
    slots = torch.tensor([[0 * 8 + 3, 5 * 8 + 7], [2 * 8 + 0, 9 * 8 + 1], [14 * 8 + 6, 1 * 8 + 2], [-1, -1]],
                         device=DEVICE)  # the last: a padding row, written nowhere
    write_kv(k, v, k_cache, v_cache, slots)
    for n in range(3):
        for h in range(hkv):
            page, offset = divmod(int(slots[n, h]), page_tokens)
            torch.testing.assert_close(k_cache[page, offset], k[n, h])
            torch.testing.assert_close(v_cache[page, offset], v[n, h])
            before_k[page, offset], before_v[page, offset] = k[n, h], v[n, h]
    torch.testing.assert_close(k_cache, before_k)  # no other row moved
    torch.testing.assert_close(v_cache, before_v)


@pytest.mark.parametrize("family", ["llama", "mistral-window", "qwen3"])
def test_greedy_tokens_through_the_triton_kernels_equal_transformers(family, tiny_model_dirs, monkeypatch):
    """The whole decode path with the Triton write and attention (the GPU's), two models in one pool."""
    from muxd.core.sequence import SamplingParams
    from muxd.engine.attention import DECODE_ATTENTION_ENV, triton_failed
    from muxd.engine.llm_engine import LLMEngine
    from muxd.models.loader import load_model

    from .conftest import hf_greedy

    monkeypatch.setenv(DECODE_ATTENTION_ENV, "triton")
    other = "qwen3" if family != "qwen3" else "llama"
    models = {"m": load_model(tiny_model_dirs[family], device=DEVICE),
              "other": load_model(tiny_model_dirs[other], "bfloat16", DEVICE)}
    engine = LLMEngine(models, kv_cache_bytes=8 << 20, page_tokens=8)
    prompts = [[5, 17, 99, 3, 42, 8], list(range(30, 70))]
    greedy = SamplingParams(max_tokens=10, ignore_eos=True)
    ids = [engine.add_request("m", p, greedy) for p in prompts] + [engine.add_request("other", prompts[0], greedy)]
    outputs = {}
    while engine.has_unfinished:
        outputs.update({o.request_id: o for o in engine.step() if o.finished})
    assert not triton_failed()  # it never fell back to the torch path
    for rid, prompt in zip(ids, prompts):
        assert outputs[rid].output_ids == hf_greedy(tiny_model_dirs[family], prompt, 10)


def test_decode_buckets_are_powers_of_two_up_to_the_batch_limit():
    from muxd.engine.decode_graph import bucket_for, buckets

    assert buckets(1) == (1,)
    assert buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    assert [bucket_for(n, buckets(48)) for n in (1, 3, 16, 17, 48, 49)] == [1, 4, 16, 32, 48, None]


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_decode_steps_through_the_graph_buffers_equal_transformers(family, tiny_model_dirs, monkeypatch):
    """``decode_graphs="eager"``: the captured path's fixed buffers, bucket padding and null-page
    padding rows (without a GPU to capture), greedy tokens equal transformers', the pool whole."""
    from muxd.core.sequence import SamplingParams
    from muxd.engine.attention import DECODE_ATTENTION_ENV
    from muxd.engine.llm_engine import LLMEngine
    from muxd.models.loader import load_model

    from .conftest import assert_pool_whole, hf_greedy

    monkeypatch.setenv(DECODE_ATTENTION_ENV, "triton")
    models = {"m": load_model(tiny_model_dirs[family], device=DEVICE)}
    engine = LLMEngine(models, kv_cache_bytes=4 << 20, page_tokens=8, decode_graphs="eager")
    runner = engine.runners["m"]
    assert runner.graphs is not None and not runner.graphs.capture
    prompts = [[5, 17, 99, 3, 42, 8], list(range(30, 50)), [7]]  # 3 rows: bucket 4, one padding row
    greedy = SamplingParams(max_tokens=8, ignore_eos=True)
    outputs = engine.generate("m", prompts, greedy)
    for out, prompt in zip(outputs, prompts):
        assert out.output_ids == hf_greedy(tiny_model_dirs[family], prompt, 8)
    null = engine.kv_cache.null_page
    assert not runner.kv[0][null].any() and not runner.kv[1][null].any()  # padding rows wrote nothing
    assert_pool_whole(engine)
